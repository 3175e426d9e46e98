"""transformers' Qwen3-VL modeling code, imported without what vlagent never runs.

`from transformers import Qwen3VLForConditionalGeneration` is most of a cold start's CPU time (5-6 s
on a GPU host). Part of it is scikit-learn (~1.2 s with SciPy under it): transformers' assisted
decoding imports `sklearn.metrics.roc_curve` at import time when sklearn is installed, and only uses
it for assisted decoding's adaptive confidence threshold, which vlagent never runs. So the import
happens with sklearn hidden: transformers then sees it as not installed for this process (its
availability check is cached: transformers 5.x), exactly as on a machine without it, and that one feature keeps its
fixed threshold. sklearn itself is back right after: `import sklearn` works as before.

SciPy stays visible: transformers' detection losses raise "requires scipy" without it.
"""
from __future__ import annotations

import sys
from contextlib import contextmanager

SKIPPED = ("sklearn",)


@contextmanager
def hidden(*packages: str):
    """While inside, `packages` look uninstalled (importlib.util.find_spec gives None and an import
    fails), unless one is imported already; afterwards they are importable again."""
    hid = [p for p in packages if p not in sys.modules]
    for p in hid:
        sys.modules[p] = None  # the import system's own "not importable" marker
    try:
        yield
    finally:
        for p in hid:
            if p in sys.modules and sys.modules[p] is None:
                del sys.modules[p]


def model_class():
    """Qwen3VLForConditionalGeneration, imported with SKIPPED hidden (see the module doc)."""
    if "transformers.generation.candidate_generator" in sys.modules:  # imported already: nothing to skip
        from transformers import Qwen3VLForConditionalGeneration
        return Qwen3VLForConditionalGeneration
    with hidden(*SKIPPED):
        from transformers import utils

        available = getattr(utils, "is_sklearn_available", None)
        # Hide only where transformers caches the answer (so it never changes its mind later in the
        # process) and has not cached "installed" already (it would then import sklearn regardless).
        if not hasattr(available, "cache_info") or available():
            sys.modules.pop("sklearn", None)
        from transformers import Qwen3VLForConditionalGeneration
    return Qwen3VLForConditionalGeneration
