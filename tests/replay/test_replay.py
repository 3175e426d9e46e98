"""Replay on the real form app in real sandboxes: unchanged, moved layouts, another screen size,
an agent run's trace, a target that is gone, secrets, the policy, and the CLI's exit codes."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from actions.schema import to_json
from agent.errors import VlagentError
from agent.replay.player import replay
from agent.task import load_task
from agent.trace import load_steps

pytestmark = pytest.mark.timeout(240)  # a hang fails the test instead of stalling CI
ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "examples" / "fill_form_demo"
FULL = {"name": "Ada Lovelace", "email": "ada@example.com", "plan": "Pro", "newsletter": True}


def variant(seed: int | None = None, size=(1280, 800), equals=FULL, secrets=None):
    """tasks/fill_form.yaml with the form moved by `seed`, on another screen, stricter checks."""
    task = load_task(ROOT / "tasks" / "fill_form.yaml")
    launch = list(task.setup[0].launch) + ([] if seed is None else ["--layout-seed", str(seed)])
    success = [c.model_copy(update={"file_json": c.file_json.model_copy(update={"equals": equals})})
               if c.kind == "file_json" else c for c in task.success]
    return task.model_copy(update={
        "setup": [task.setup[0].model_copy(update={"launch": launch})],
        "screen": task.screen.model_copy(update={"width": size[0], "height": size[1]}),
        "success": success, "secrets": secrets or {}})


def form_json(trace: Path) -> dict:
    return json.loads((trace / "workdir" / "form.json").read_text())


@pytest.mark.slow
def test_the_demo_replays_unchanged_through_the_cli(tmp_path):
    out = tmp_path / "r"
    done = subprocess.run(["vlagent", "replay", str(DEMO), "--trace", str(out), "--json"],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(done.stdout[done.stdout.index("{"):])
    assert result["status"] == "success"
    steps = load_steps(out)
    assert [s.kind for s in steps] == [s.kind for s in load_steps(DEMO)]
    assert all(s.source == "replay" for s in steps)
    clicks = [s for s in steps if s.kind == "left_click"]
    assert all(s.target["found"]["coordinate"]["score"] >= 0.62 for s in clicks)
    assert form_json(out) == FULL


@pytest.mark.slow
@pytest.mark.parametrize("seed", [3, 11])
def test_moved_window_and_widgets_replay_and_raw_coordinates_do_not(tmp_path, seed):
    task = variant(seed)
    result = replay(DEMO, task, trace_out=tmp_path / "found")
    assert result.status == "success", result.reason
    assert form_json(tmp_path / "found") == FULL
    raw = replay(DEMO, task, trace_out=tmp_path / "raw", locate=False)
    assert raw.status == "failed"


@pytest.mark.slow
def test_another_screen_size_and_the_report_shows_each_click_side_by_side(tmp_path):
    from agent.report.build import build_report

    result = replay(DEMO, variant(5, size=(1024, 768)), trace_out=tmp_path / "r")
    assert result.status == "success", result.reason
    assert form_json(tmp_path / "r") == FULL
    clicks = [s for s in load_steps(tmp_path / "r") if s.kind == "left_click"]
    assert all(s.target["found"]["coordinate"]["retargeted"] for s in clicks)  # another screen: all moved
    assert all((tmp_path / "r" / s.target["recorded_screenshot"]).is_file() for s in clicks)

    build_report([tmp_path / "r"], tmp_path / "report")
    page = next((tmp_path / "report" / "tasks").glob("*.html")).read_text()
    assert page.count('class="replayed"') == len(clicks) and page.count("⇄ retargeted") == len(clicks)
    first = clicks[0].target
    assert f"recorded px {first['pixel'][0]}, {first['pixel'][1]}" in page
    assert f"now px {clicks[0].pixel[0]}, {clicks[0].pixel[1]}" in page
    assert "found by <b>" in page and "0001-recorded.png" in page


@pytest.mark.slow
def test_an_agent_runs_trace_replays_on_a_moved_layout(tmp_path):
    """An agent run keeps each pointer step's target evidence as a recording does; a trace without it
    (older runs) has its evidence derived from each step's screenshot and pixel."""
    run = tmp_path / "run"
    done = subprocess.run(["vlagent", "run", str(ROOT / "tasks" / "fill_form.yaml"), "--model",
                           f"script:{ROOT / 'tests' / 'scripts' / 'fill_form_solution.yaml'}", "--trace", str(run)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    clicks = [s for s in load_steps(run) if s.kind == "left_click"]
    assert clicks and all(s.target["patch"] and "own_text" in s.target for s in clicks)
    partial = {"name": "Ada Lovelace", "email": "ada@example.com"}
    result = replay(run, variant(7, equals=partial), trace_out=tmp_path / "r")
    assert result.status == "success", result.reason
    _rewrite(run, lambda s: s.update(target=None))  # as older runs wrote them
    result = replay(run, variant(7, equals=partial), trace_out=tmp_path / "r2")
    assert result.status == "success", result.reason


def _copy_demo(tmp_path: Path) -> Path:
    trace = tmp_path / "trace"
    shutil.copytree(DEMO, trace)
    return trace


def _rewrite(trace: Path, change) -> None:
    path = trace / "steps.jsonl"
    steps = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    for s in steps:
        change(s)
    path.write_text("".join(json.dumps(s) + "\n" for s in steps))


@pytest.mark.slow
def test_a_target_that_is_gone_fails_naming_the_step_and_keeps_both_screenshots(tmp_path):
    from agent.targets.locate import describe_target
    from PIL import Image

    trace = _copy_demo(tmp_path)
    # Step 7 now points at a spot of the recorded screen that no layout of the form shows.
    odd = Image.new("RGB", (1280, 800), (30, 30, 30))
    for x in range(0, 1280, 7):
        odd.paste((200, 40, 90), (x, 0, x + 3, 800))
    ev = describe_target(odd, (900, 700), ocr=False)

    def point_elsewhere(s):
        if s["step"] == 7:
            s["target"] = ev
    _rewrite(trace, point_elsewhere)
    out = tmp_path / "r"
    result = replay(trace, variant(), trace_out=out)
    assert result.status == "failed"
    assert result.reason.startswith("step 7 (left_click")
    assert "not found" in result.reason
    last = load_steps(out)[-1]
    assert last.error == result.reason
    assert (out / last.screenshot).is_file()  # the screen now
    assert (out / last.target["recorded_screenshot"]).is_file()  # the screen when recorded
    assert not (out / "workdir" / "form.json").exists()  # it stopped before Submit


@pytest.mark.slow
def test_secrets_come_from_the_environment_and_never_reach_the_trace(tmp_path, monkeypatch):
    trace = _copy_demo(tmp_path)

    def as_secret(s):
        if s["action"]["action"] == "type" and "@" in s["action"]["text"]:
            s["action"]["text"] = "{secret:EMAIL}"
    _rewrite(trace, as_secret)
    task = variant(secrets={"EMAIL": "VLAGENT_TEST_EMAIL"})
    monkeypatch.delenv("VLAGENT_TEST_EMAIL", raising=False)
    with pytest.raises(VlagentError, match="set the environment variable VLAGENT_TEST_EMAIL"):
        replay(trace, task, trace_out=tmp_path / "missing")
    monkeypatch.setenv("VLAGENT_TEST_EMAIL", "ada@example.com")
    out = tmp_path / "r"
    result = replay(trace, task, trace_out=out)
    assert result.status == "success", result.reason
    assert form_json(out)["email"] == "ada@example.com"
    log = (out / "steps.jsonl").read_text()
    assert "ada@example.com" not in log and "{secret:EMAIL}" in log


def test_a_missing_secret_is_a_usage_error_on_the_cli(tmp_path):
    trace = _copy_demo(tmp_path)
    _rewrite(trace, lambda s: s["action"].update(text="{secret:PIN}") if s["action"]["action"] == "type" else None)
    done = subprocess.run(["vlagent", "replay", str(trace)], capture_output=True, text=True, timeout=60,
                          env={k: v for k, v in os.environ.items() if k != "VLAGENT_SECRET_PIN"})
    assert done.returncode == 2
    assert "VLAGENT_SECRET_PIN" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.slow
def test_every_step_still_passes_the_tasks_policy(tmp_path):
    trace = tmp_path / "trace"
    trace.mkdir()
    (trace / "steps.jsonl").write_text(json.dumps(
        {"step": 1, "action": {"action": "key", "keys": ["ctrl", "alt", "delete"]}, "source": "human"}) + "\n")
    out = tmp_path / "r"
    result = replay(trace, variant(), trace_out=out)
    assert result.status == "failed"
    assert "policy refuses" in result.reason and "step 1" in result.reason


def test_a_folder_without_steps_is_refused(tmp_path):
    with pytest.raises(VlagentError, match="not a trace folder"):
        replay(tmp_path, variant())


@pytest.mark.slow
def test_the_fallback_model_grounds_a_step_whose_target_is_gone(tmp_path):
    """--fallback model: a (scripted) model answers where the lost target is; the replay goes on."""
    from PIL import Image

    from agent.backends.script import ScriptBackend
    from agent.targets.locate import describe_target

    trace = _copy_demo(tmp_path)
    odd = Image.new("RGB", (1280, 800), (30, 30, 30))
    for x in range(0, 1280, 7):
        odd.paste((200, 40, 90), (x, 0, x + 3, 800))
    ev = describe_target(odd, (900, 700), ocr=False)
    _rewrite(trace, lambda s: s.update(target=ev) if s["step"] == 7 else None)
    submit = '<tool_call>{"name": "computer_use", "arguments": {"action": "left_click", "coordinate": [152, 524]}}</tool_call>'
    model = ScriptBackend([submit])
    out = tmp_path / "r"
    result = replay(trace, variant(), fallback=model, trace_out=out)
    assert result.status == "success", result.reason
    assert model.calls == 1
    last = load_steps(out)[-1]
    assert last.raw == submit and last.target["found"]["coordinate"]["method"] == "model"


@pytest.mark.slow
def test_the_fallback_models_answer_is_checked_by_the_same_evidence(tmp_path):
    """The model points at a button whose own text is not the recorded target's: refused, not clicked."""
    from PIL import Image

    from agent.backends.script import ScriptBackend
    from agent.targets.locate import describe_target

    trace = _copy_demo(tmp_path)
    odd = Image.new("RGB", (1280, 800), (30, 30, 30))
    for x in range(0, 1280, 7):
        odd.paste((200, 40, 90), (x, 0, x + 3, 800))
    ev = {**describe_target(odd, (900, 700), ocr=False), "own_text": "Cancel"}  # a button no layout shows
    _rewrite(trace, lambda s: s.update(target=ev) if s["step"] == 7 else None)
    submit = '<tool_call>{"name": "computer_use", "arguments": {"action": "left_click", "coordinate": [152, 524]}}</tool_call>'
    model = ScriptBackend([submit])
    out = tmp_path / "r"
    result = replay(trace, variant(), fallback=model, trace_out=out)
    assert result.status == "failed" and model.calls == 1
    last = load_steps(out)[-1]
    assert "does not look like the target" in last.error and "own_text" in last.error
    assert not (out / "workdir" / "form.json").exists()  # Submit was not clicked


@pytest.mark.slow
def test_speed_shortens_recorded_waits(tmp_path):
    trace = tmp_path / "trace"
    trace.mkdir()
    (trace / "steps.jsonl").write_text(json.dumps({"step": 1, "action": {"action": "wait", "time": 2.0}}) + "\n")
    out = tmp_path / "r"
    replay(trace, variant(), speed=4.0, trace_out=out)
    assert to_json(load_steps(out)[0].action) == {"action": "wait", "time": 0.5}


@pytest.mark.slow
def test_replay_waits_for_a_target_that_is_not_there_yet(tmp_path):
    """No wait_for_window in the setup: the first click comes before the form is drawn, and
    replay waits (bounded) until its target shows instead of clicking the empty desktop."""
    task = variant(2)
    task = task.model_copy(update={"setup": [task.setup[0].model_copy(update={"wait_for_window": None})]})
    out = tmp_path / "r"
    result = replay(DEMO, task, trace_out=out)
    assert result.status == "success", result.reason
    assert load_steps(out)[0].timings["find_ms"] > 0
