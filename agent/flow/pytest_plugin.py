"""pytest plugin (entry point `pytest11: vlagent`): the `vl` fixture, a flow Session per test.

    import pytest

    @pytest.mark.vlagent(task="../tasks/fill_form_flow.yaml")     # relative to the test file
    def test_register(vl):
        vl.act('Type "Ada Lovelace" into the Name field')
        vl.assert_that('The Name field holds "Ada Lovelace"')

    pytest examples/ --vl-model script:tests/scripts/fill_form_flow.replies.yaml --vl-cache read-only --junitxml j.xml

Each test gets a fresh sandbox with the task's setup, and its own trace folder (--vl-traces, default
runs/pytest/<test>); the folder, status and model calls go into the JUnit XML as properties. A false
assert fails the test as an AssertionError with the statement, the model's reason and the screenshot.
Options: --vl-model (default: the marker's model, else Qwen3-VL-2B), --vl-cache
read-write|read-only|write-only|off (default read-write; also $VLAGENT_FLOW_CACHE), --vl-traces DIR.
Nothing heavy is imported until a test asks for the fixture.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

CACHE_MODES = ("read-write", "read-only", "write-only", "off")


def pytest_addoption(parser):
    group = parser.getgroup("vlagent", "vlagent flows")
    group.addoption("--vl-cache", dest="vl_cache", choices=CACHE_MODES, default=None,
                    help="vlagent action cache mode (default: read-write, or $VLAGENT_FLOW_CACHE)")
    group.addoption("--vl-model", dest="vl_model", default=None,
                    help="vlagent model: Hub id or folder, 'tiny-random' or 'script:FILE' (overrides the marker)")
    group.addoption("--vl-traces", dest="vl_traces", default="runs/pytest", help="folder for the per-test traces")


def pytest_configure(config):
    config.addinivalue_line("markers", "vlagent(task=None, model=None, display=None, setup=None, name=None): "
                                       "the task file (relative to the test file) and model for the vl fixture; "
                                       "without a task, setup steps and the cache's name")


def _safe(nodeid: str) -> str:
    return re.sub(r"[^\w.-]+", "_", nodeid).strip("_")[:120]


@pytest.fixture
def vl(request):
    """A flow Session (agent.flow.Session) in a fresh sandbox, for this test."""
    from agent.flow.session import Session

    marker = request.node.get_closest_marker("vlagent")
    opts = dict(marker.kwargs) if marker else {}
    here = Path(str(request.node.fspath)).parent
    task = opts.pop("task", None)
    if task is not None and not Path(task).is_absolute():
        task = here / task
    model = request.config.getoption("vl_model") or opts.pop("model", None)
    opts.pop("model", None)
    if isinstance(model, str) and model.startswith("script:") and not Path(model[7:]).is_absolute() \
            and not Path(model[7:]).exists() and (here / model[7:]).exists():
        model = "script:" + str(here / model[7:])  # a script next to the test file
    cache = request.config.getoption("vl_cache") or os.environ.get("VLAGENT_FLOW_CACHE") or "read-write"
    traces = Path(request.config.getoption("vl_traces"))
    folder = traces / _safe(request.node.nodeid)
    n = 1
    while folder.exists():
        n += 1
        folder = traces / f"{_safe(request.node.nodeid)}-{n}"
    if task is None:  # no task file: the cache goes next to the test file, named after it
        opts.setdefault("name", re.sub(r"[^\w.-]", "_", Path(str(request.node.fspath)).stem))
        opts.setdefault("base_dir", here)
    session = Session(task, model=model, cache=cache, trace_dir=folder, **opts)
    props = request.node.user_properties  # what record_property fills; JUnit XML writes them
    props.append(("vlagent_trace", str(folder.resolve())))
    with session:
        yield session
    props += [("vlagent_status", session.result.status), ("vlagent_model_calls", session.result.model_calls),
              ("vlagent_cache_hits", sum(f.cache == "hit" for f in session.result.flow))]
    props += [("vlagent_cache_healed", f"{f.phase}[{f.index}] {f.kind} {f.text!r}: {f.reason}")
              for f in session.result.flow if f.cache == "healed"]  # why each cached step was given up
    if session.result.status != "success" and session.failure is None:
        # every step passed but the task's success checks did not (or an app died)
        pytest.fail(f"vlagent: {session.result.status}: {session.result.reason} (trace: {folder})", pytrace=False)
