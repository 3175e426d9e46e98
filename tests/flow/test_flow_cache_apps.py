"""The flow cache on real apps, used as a QA engineer uses it: a pytest file with the `vl` fixture,
run once to write the cache (read-write), then re-run with `--vl-cache read-only` on the very same app.
Real Xvfb, the apps' own accessibility bus, real input (galculator and Chromium from Debian); the
scripted model (`--vl-model script:`) answers the steps that ask it.

Held here: an unchanged app replays every cached action (0 model calls for the act, every time), and a
cached action that is given up says why in result.json, in the JUnit failure text and in the report."""
from __future__ import annotations

import json
import re
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from xml.etree import ElementTree

import pytest

pytestmark = [pytest.mark.timeout(900), pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]
FLOWS = ROOT / "tests" / "scripts" / "flows"
RERUNS = 2


def needs(app: str):
    return pytest.mark.skipif(shutil.which(app) is None, reason=f"{app} not installed (.ci/install installs it)")


def click(x: int, y: int) -> str:
    """A scripted click on screen pixel (x, y) of the 1280x800 screen, in Qwen's 0..1000 coordinates."""
    args = {"action": "left_click", "coordinate": [round(x / 1280 * 1000), round(y / 800 * 1000)]}
    return f'<tool_call>{json.dumps({"name": "computer_use", "arguments": args})}</tool_call>'


DONE = '<tool_call>{"name": "computer_use", "arguments": {"action": "terminate", "status": "success"}}</tool_call>'
TYPE_ADA = '<tool_call>{"name": "computer_use", "arguments": {"action": "type", "text": "Ada"}}</tool_call>'

GALCULATOR_TASK = """\
name: galculator_123
screen: {width: 1280, height: 800}
setup:
  - launch: [env, NO_AT_BRIDGE=0, "XDG_CONFIG_HOME={workdir}/cfg", galculator]
    wait_for_window: ^galculator$
    timeout_s: 60
  - sleep: 1
goal: a pytest session on galculator
timeout_s: 180
allow: {actions: [left_click, wait, terminate]}
"""
GALCULATOR_TEST = '''\
import pytest

pytestmark = pytest.mark.vlagent(task="galculator_123.yaml")
DISPLAY = {"type": "object", "properties": {"display": {"type": "string"}}, "required": ["display"]}


def test_one_two_three(vl):
    vl.act("Click 1, 2 and 3", max_steps=5)
    got = vl.query("What number does the display show?", DISPLAY)
    vl.assert_that(f"The display shows {got['display']}")
'''
# galculator's keys 1, 2, 3 (its window at the top left; boxes from its accessibility tree)
GALCULATOR_REPLIES = {"Click 1, 2 and 3": [click(35, 280), click(100, 280), click(165, 280), DONE],
                      "What number does the display show?": ['{"display": "123"}'] * 2,
                      "The display shows 123": ['{"pass": true, "reason": "the display reads 123"}'] * 2}

CHROMIUM_TASK = """\
name: chromium_ada
screen: {width: 1280, height: 800}
setup:
  - launch: [chromium, --no-sandbox, "--user-data-dir={workdir}/chrome", "--app=file://{taskdir}/order.html",
             --force-renderer-accessibility, "--window-size=760,560", "--window-position=60,40", --no-first-run,
             --disable-gpu, --disable-features=Translate]
    wait_for_window: ^Order
    timeout_s: 60
  - sleep: 1.5
goal: a pytest session on a Chromium form page
timeout_s: 180
allow: {actions: [left_click, type, key, wait, terminate], keys: [tab, enter], max_text_len: 50}
"""
CHROMIUM_TEST = '''\
import pytest

pytestmark = pytest.mark.vlagent(task="chromium_ada.yaml")
NAME = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}


def test_type_ada(vl):
    vl.act('Type "Ada" into the Name field', max_steps=4)
    vl.left_click("the Express shipping option")
    got = vl.query("What does the Name field hold?", NAME)
    vl.assert_that(f"The Name field holds {got['name']}")
'''
CHROMIUM_REPLIES = {'Type "Ada" into the Name field': [click(317, 191), TYPE_ADA, DONE],
                    "the Express shipping option": [click(323, 234)],
                    "What does the Name field hold?": ['{"name": "Ada"}'] * 2,
                    "The Name field holds Ada": ['{"pass": true, "reason": "it reads Ada"}'] * 2}


def user_folder(tmp_path: Path, task: str, test: str, replies: dict) -> Path:
    import yaml

    folder = tmp_path / "qa"
    folder.mkdir()
    (folder / "order.html").write_text((FLOWS / "order.html").read_text())
    name = task.split("\n", 1)[0].split(": ")[1]
    (folder / f"{name}.yaml").write_text(task)
    (folder / "test_app.py").write_text(test)
    (folder / "replies.yaml").write_text(yaml.safe_dump(replies, sort_keys=False, width=1000))
    return folder


def pytest_run(folder: Path, cache: str, name: str, replies: str = "replies.yaml") -> tuple[int, dict, Path]:
    """Run the user's test file as a user does; (exit code, its result.json, its JUnit file)."""
    junit = folder / f"{name}.xml"
    traces = folder / "traces" / name
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_app.py",
                           f"--vl-model=script:{replies}", f"--vl-cache={cache}", f"--vl-traces={traces}",
                           f"--junitxml={junit}"], cwd=folder, env=env, capture_output=True, text=True, timeout=600)
    results = list(traces.glob("*/result.json"))
    assert results, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.returncode, json.loads(results[0].read_text()), junit


def explain(result: dict) -> list:
    return [result["status"], result["reason"]] + [(f["kind"], f["cache"], f["model_calls"], f["reason"])
                                                    for f in result["flow"]]


def reruns_hit(folder: Path, cached_steps: int) -> None:
    code, cold, _ = pytest_run(folder, "read-write", "cold")
    assert code == 0 and cold["status"] == "success", explain(cold)
    assert [f["cache"] for f in cold["flow"]][:cached_steps] == ["miss"] * cached_steps
    for n in range(RERUNS):
        code, again, junit = pytest_run(folder, "read-only", f"rerun{n}")
        assert [f["cache"] for f in again["flow"]][:cached_steps] == ["hit"] * cached_steps, explain(again)
        assert sum(f["model_calls"] for f in again["flow"][:cached_steps]) == 0, explain(again)
        assert code == 0 and again["status"] == "success", explain(again)


@needs("galculator")
def test_galculator_cached_act_replays_on_the_unchanged_app_every_time(tmp_path):
    """Click 1, 2 and 3: after the first replayed click the screen shows exactly the recorded result
    (display 12, the hover on 2): the cache must not give the action up and ask the model."""
    reruns_hit(user_folder(tmp_path, GALCULATOR_TASK, GALCULATOR_TEST, GALCULATOR_REPLIES), 1)


@needs("chromium")
def test_chromium_cached_type_and_click_replay_on_the_unchanged_page_every_time(tmp_path):
    reruns_hit(user_folder(tmp_path, CHROMIUM_TASK, CHROMIUM_TEST, CHROMIUM_REPLIES), 2)


@needs("galculator")
def test_a_cached_action_given_up_says_why_in_the_result_the_junit_failure_and_the_report(tmp_path):
    """CI with --vl-cache read-only and no model for the act: the cache claims click 2 showed
    something galculator never shows; the step is given up, the model cannot answer, and the test
    fails saying which action was given up, why, and where the two screenshots are."""
    import yaml
    from PIL import Image

    folder = user_folder(tmp_path, GALCULATOR_TASK, GALCULATOR_TEST, GALCULATOR_REPLIES)
    code, cold, _ = pytest_run(folder, "read-write", "cold")
    assert code == 0, explain(cold)
    cache = folder / "galculator_123.cache.json"
    data = json.loads(cache.read_text())
    second = data["steps"][0]["actions"][1]
    Image.new("L", (112, 48), 0).save(folder / "galculator_123.cache" / "black.png")
    second["effect"] = {"changed": True, "screen": data["steps"][0]["actions"][2]["screen"],
                        "after": {**data["steps"][0]["actions"][2]["effect"]["after"], "anchors": [],
                                  "text": {"at": "Zyzzyva"}}}
    after = second["effect"]["after"]
    after["patch"] = {**after["patch"], "png_file": "galculator_123.cache/black.png"}
    after["context"] = {**after["context"], "png_file": "galculator_123.cache/black.png"}
    after.pop("a11y", None)
    cache.write_text(json.dumps(data))
    no_act = {k: v for k, v in GALCULATOR_REPLIES.items() if not k.startswith("Click")}
    (folder / "no_act.yaml").write_text(yaml.safe_dump(no_act, sort_keys=False, width=1000))

    code, result, junit = pytest_run(folder, "read-only", "ci", replies="no_act.yaml")
    assert code == 1 and result["status"] != "success", explain(result)
    act = result["flow"][0]
    assert act["cache"] == "healed", explain(result)
    reason = act["reason"]
    assert "action 2 of 3 (left_click on toggle button '2'): effect missing" in reason, reason
    shots = re.findall(r"screens: (\S+) \(now\), (\S+) \(recorded\)", reason)
    trace = next((folder / "traces" / "ci").iterdir())
    assert shots and all((trace / p).is_file() for p in shots[0]), reason
    failure = ElementTree.parse(junit).getroot().find(".//testcase/failure")
    assert failure is not None and "action 2 of 3" in failure.get("message") + (failure.text or ""), \
        ElementTree.tostring(failure).decode()[:2000]
    out = tmp_path / "report"
    subprocess.run([sys.executable, "-m", "agent.cli", "report", str(trace), "--out", str(out)], check=True,
                   cwd=ROOT, capture_output=True, timeout=300)
    pages = "".join(p.read_text() for p in out.rglob("*.html"))
    assert "action 2 of 3" in pages and "effect missing" in pages


@needs("chromium")
def test_chromium_targets_keep_their_element_and_the_tree_judges_an_effect_the_pixels_doubt(tmp_path):
    """Every target of the Chromium page's cache keeps its accessibility element (the page's tree
    fills in after the first request). A radio button's recorded effect whose pixels no longer match
    (here: its picture blacked out, as a hover or a focus ring elsewhere would disturb it) is judged by
    the tree: the option is checked, so the cached click is done, with no model call. (The changed
    place's element is renamed too, else the finder finds the effect by it before the pixels doubt.)"""
    from PIL import Image

    folder = user_folder(tmp_path, CHROMIUM_TASK, CHROMIUM_TEST, CHROMIUM_REPLIES)
    code, cold, _ = pytest_run(folder, "read-write", "cold")
    assert code == 0, explain(cold)
    cache = folder / "chromium_ada.cache.json"
    data = json.loads(cache.read_text())
    targets = [a["target"] for s in data["steps"] for a in s["actions"] if a.get("target")]
    assert len(targets) == 2 and all(t.get("a11y") for t in targets), [t.get("a11y") for t in targets]
    assert targets[1]["a11y"]["role"] == "radio button", targets[1]["a11y"]
    from agent.targets.model import Evidence

    assert all(Evidence.parse(t).dump() == t for t in targets)  # typed evidence reads it unchanged
    express = data["steps"][1]["actions"][0]
    after = express["effect"]["after"]
    assert after.get("a11y"), after.keys()
    Image.new("L", (112, 48), 0).save(folder / "chromium_ada.cache" / "black.png")
    after["patch"] = {**after["patch"], "png_file": "chromium_ada.cache/black.png"}
    after["context"] = {**after["context"], "png_file": "chromium_ada.cache/black.png"}
    after["anchors"], after["text"] = [], {"at": "Zyzzyva"}
    after["a11y"] = {**after["a11y"], "name": "Zyzzyva", "labels": []}  # nor found by its element
    cache.write_text(json.dumps(data))
    code, again, _ = pytest_run(folder, "read-only", "doubted")
    assert [f["cache"] for f in again["flow"]][:2] == ["hit", "hit"], explain(again)
    assert code == 0 and sum(f["model_calls"] for f in again["flow"][:2]) == 0, explain(again)
