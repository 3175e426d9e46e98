"""The modeling code's import without scikit-learn (agent/backends/hf_import.py), in fresh processes
(transformers imports once per process) with a stand-in sklearn on the path."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

CHECK = """
import sys
from agent.backends.hf_import import model_class
{before}
cls = model_class()
from transformers.utils import is_sklearn_available
print(cls.__name__, "sklearn" in sys.modules, is_sklearn_available())
import sklearn.metrics  # importable as before
print(sklearn.metrics.roc_curve())
"""


def run_check(tmp_path: Path, before: str = "") -> list[str]:
    fake = tmp_path / "sklearn"
    fake.mkdir()
    (fake / "__init__.py").write_text("")
    (fake / "metrics.py").write_text("def roc_curve(*args):\n    return 'stand-in'\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(tmp_path)]), "TRANSFORMERS_VERBOSITY": "error"}
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(CHECK.format(before=before))], env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.split("\n")


def test_sklearn_is_skipped_and_importable_after(tmp_path):
    lines = run_check(tmp_path)
    assert lines[0] == "Qwen3VLForConditionalGeneration False False"  # not imported; transformers sees none
    assert lines[1] == "stand-in"


@pytest.mark.parametrize("before", ["import sklearn", "from transformers.utils import is_sklearn_available as f; f()"])
def test_sklearn_seen_before_is_left_alone(tmp_path, before):
    """Imported already, or transformers has already cached "installed": the import goes as usual."""
    lines = run_check(tmp_path, before)
    assert lines[0] == "Qwen3VLForConditionalGeneration True True"
