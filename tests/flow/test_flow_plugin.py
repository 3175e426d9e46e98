"""The pytest plugin (entry point pytest11 `vlagent`): the `vl` fixture runs a sandbox per test, a false
assert fails the test like a pytest assertion, the trace goes into the JUnit XML, --vl-cache is honoured.
Runs pytest in a subprocess on a test file written here (pytester), as a user's CI would."""
from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from importlib.metadata import entry_points

import pytest
import yaml

from flow_support import PRO, ROOT, STEPS, form_task, replies, verdict

pytest_plugins = ["pytester"]

TEST_FILE = '''
import pytest

pytestmark = pytest.mark.vlagent(task="flow.yaml")

def test_passes(vl):
    vl.run_steps()
    vl.assert_that("The Pro plan is selected")

def test_fails(vl):
    vl.left_click("{pro}")
    vl.assert_that("A green Saved is shown")
    raise RuntimeError("never reached")
'''


def plugin_args() -> list[str]:
    registered = any(e.name == "vlagent" for e in entry_points(group="pytest11"))
    return [] if registered else ["-p", "agent.flow.pytest_plugin"]


@pytest.mark.slow
def test_the_vl_fixture_in_a_real_pytest_run(pytester, tmp_path):
    form_task(pytester.path, STEPS, name="flow", success=[])
    replies_ = {**replies(), "The Pro plan is selected": [verdict(True)] * 2,
                "A green Saved is shown": [verdict(False, "the window shows no Saved text")]}
    replies_[PRO] = replies_[PRO] * 2
    (pytester.path / "replies.yaml").write_text(yaml.safe_dump(replies_))
    pytester.makepyfile(test_form=TEST_FILE.replace("{pro}", PRO))
    junit = tmp_path / "junit.xml"
    common = [*plugin_args(), "-p", "no:cacheprovider", "--vl-model", f"script:{pytester.path / 'replies.yaml'}",
              "--vl-traces", str(tmp_path / "runs"), "-o", "junit_family=legacy"]
    r = pytester.runpytest_subprocess(*common, "--junitxml", str(junit), "--vl-cache", "read-write", timeout=300)
    r.assert_outcomes(passed=1, failed=1)
    out = r.stdout.str()
    failure = out.split("_ test_fails _")[1]  # pytest's report of the failing test
    assert ">       vl.assert_that(\"A green Saved is shown\")" in failure
    assert "E       agent.flow.session.FlowAssertionError: 'A green Saved is shown' is false" in failure
    assert "E         model: the window shows no Saved text" in failure
    assert "agent/flow/" not in failure.split("Captured")[0]  # no frames of the plugin's internals

    cases = {c.get("name"): c for c in ET.parse(junit).getroot().iter("testcase")}
    props = {n: {p.get("name"): p.get("value") for p in c.iter("property")} for n, c in cases.items()}
    assert props["test_passes"]["vlagent_status"] == "success"
    assert props["test_fails"]["vlagent_status"] == "failed"
    trace = props["test_fails"]["vlagent_trace"]
    result = json.loads((ROOT / trace / "result.json").read_text()) if not trace.startswith("/") else \
        json.loads(open(f"{trace}/result.json").read())
    assert result["flow"][-1]["reason"] == "the window shows no Saved text"
    assert (pytester.path / "flow.cache.json").exists()  # the passing test wrote the cache

    # CI: --vl-cache read-only replays the passing test's steps without the model, writes nothing.
    stamp = (pytester.path / "flow.cache.json").stat().st_mtime_ns
    r = pytester.runpytest_subprocess(*common, "--vl-cache", "read-only", "-k", "passes", "--junitxml", str(junit),
                                      timeout=300)
    r.assert_outcomes(passed=1)
    case = next(ET.parse(junit).getroot().iter("testcase"))
    props = {p.get("name"): p.get("value") for p in case.iter("property")}
    assert props["vlagent_cache_hits"] == "4" and props["vlagent_model_calls"] == "1"  # the assert only
    assert (pytester.path / "flow.cache.json").stat().st_mtime_ns == stamp


GALCULATOR_TEST = '''
import pytest

pytestmark = pytest.mark.vlagent(task="galculator_flow.yaml")

def test_seven_times_six(vl):
    vl.run_steps()
'''


@pytest.mark.slow
@pytest.mark.skipif(__import__("shutil").which("galculator") is None, reason="galculator not installed")
def test_the_plugin_on_a_debian_app_records_then_replays_from_the_cache(pytester, tmp_path):
    """A user's CI on a real GTK app (galculator): the first pytest run records the cache, the
    read-only re-run takes every step from it with no model call, and the task's check (the display
    reads 42) decides both."""
    flows = ROOT / "tests" / "scripts" / "flows"
    for name in ("galculator_flow.yaml", "galculator_flow.replies.yaml"):
        (pytester.path / name).write_text((flows / name).read_text())
    pytester.makepyfile(test_calc=GALCULATOR_TEST)
    junit = tmp_path / "junit.xml"
    common = [*plugin_args(), "-p", "no:cacheprovider", "--vl-model",
              f"script:{pytester.path / 'galculator_flow.replies.yaml'}", "--vl-traces", str(tmp_path / "runs"),
              "-o", "junit_family=legacy", "--junitxml", str(junit)]
    for mode, hits, calls in [("read-write", "0", "4"), ("read-only", "4", "0")]:
        r = pytester.runpytest_subprocess(*common, "--vl-cache", mode, timeout=300)
        r.assert_outcomes(passed=1)
        case = next(ET.parse(junit).getroot().iter("testcase"))
        props = {p.get("name"): p.get("value") for p in case.iter("property")}
        assert props["vlagent_status"] == "success", props
        assert (props["vlagent_cache_hits"], props["vlagent_model_calls"]) == (hits, calls), (mode, props)
