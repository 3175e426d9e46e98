"""`vlagent run` end to end, as a user runs it: the real CLI in a subprocess, a real Xvfb sandbox,
the real form app, real pyautogui input, scripted model replies."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from actions.schema import to_json
from agent.trace import load_result, load_steps

ROOT = Path(__file__).resolve().parents[2]
TASK = ROOT / "tasks" / "fill_form.yaml"
SCRIPTS = ROOT / "tests" / "scripts"


def vlagent(*args, timeout=180, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "agent.cli", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, **kw)


def reply(**arguments) -> str:
    return f'<tool_call>{json.dumps({"name": "computer_use", "arguments": arguments})}</tool_call>'


def script(tmp_path: Path, replies: list[str]) -> str:
    path = tmp_path / "script.yaml"
    path.write_text(yaml.safe_dump(replies), encoding="utf-8")
    return f"script:{path}"


def display_alive(display: str) -> bool:
    return subprocess.run(["xdotool", "getmouselocation"], env={**os.environ, "DISPLAY": display},
                          capture_output=True, timeout=10).returncode == 0


def procs_mentioning(text: str) -> list[str]:
    out = subprocess.run(["pgrep", "-af", text], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if "pgrep" not in line]


@pytest.mark.slow
def test_scripted_solution_fills_the_real_form(tmp_path):
    trace = tmp_path / "trace"
    r = vlagent("run", TASK, "--model", f"script:{SCRIPTS / 'fill_form_solution.yaml'}", "--trace", trace)
    assert r.returncode == 0, r.stderr
    result = load_result(trace)
    assert result.status == "success" and all(c.passed for c in result.checks)
    assert json.loads((trace / "workdir" / "form.json").read_text())["name"] == "Ada Lovelace"
    steps = load_steps(trace)
    assert [s.kind for s in steps] == ["left_click", "type", "left_click", "type", "left_click", "terminate"]
    for s in steps:
        assert s.raw and s.error is None and (trace / s.screenshot).is_file()
        assert {"capture_ms", "model_ms", "step_ms"} <= set(s.timings)
    assert steps[0].pixel == (451, 164)  # [352, 205] of 1280x800
    assert (trace / "task.yaml").is_file() and (trace / result.final_screenshot).is_file()
    assert not display_alive(result.display), "the sandbox display outlived the run"


@pytest.mark.slow
@pytest.mark.skipif(not shutil.which("galculator"), reason="galculator (GTK) is not installed; .ci/install installs it")
def test_typing_with_no_window_to_receive_it_is_refused_and_typing_after_a_click_lands(tmp_path):
    """galculator (a Debian GTK app) sits in the top-left corner; with no window manager keys go to
    the window under the pointer, which starts over the bare desktop. Typing there would be lost
    without a trace: it is refused with what to do, and after a click on the display it lands."""
    task = tmp_path / "calc.yaml"
    task.write_text(yaml.safe_dump({
        "name": "calc", "goal": "Compute 12+30.", "max_steps": 6, "timeout_s": 120,
        "setup": [{"launch": ["env", "XDG_CONFIG_HOME={workdir}/config", "galculator"],
                   "wait_for_window": "^galculator$", "timeout_s": 60}, {"sleep": 1.0}],
        "allow": {"actions": ["left_click", "type", "terminate"]},
        "success": [{"screen_text": "42"}]}))
    trace = tmp_path / "trace"
    replies = [reply(action="type", text="12+30="), reply(action="left_click", coordinate=[125, 71]),
               reply(action="type", text="12+30="), reply(action="terminate", status="success")]
    r = vlagent("run", task, "--model", script(tmp_path, replies), "--trace", trace)
    assert r.returncode == 0, r.stdout + r.stderr
    steps = load_steps(trace)
    assert "reach no window" in steps[0].error and steps[0].action is None
    assert [s.kind for s in steps[1:]] == ["left_click", "type", "terminate"] and steps[2].error is None
    assert load_result(trace).checks[0].passed


@pytest.mark.slow
def test_wrong_script_exits_1_with_a_complete_trace(tmp_path):
    trace = tmp_path / "trace"
    r = vlagent("run", TASK, "--model", f"script:{SCRIPTS / 'fill_form_wrong.yaml'}", "--trace", trace)
    assert r.returncode == 1
    result = load_result(trace)
    assert result.status == "failed" and "file_json" in result.reason
    steps = load_steps(trace)
    assert len(steps) == 6
    assert "not allowed" in steps[2].error and steps[2].action is None  # ctrl+alt+delete never ran
    assert "not closed" in steps[3].error
    assert to_json(steps[5].action) == {"action": "terminate", "status": "success"}  # claimed, not trusted


@pytest.mark.slow
def test_three_rejected_replies_end_as_invalid_output(tmp_path):
    trace = tmp_path / "trace"
    model = script(tmp_path, ["I think I should click.", reply(action="type", text="sudo rm -rf /"),
                              reply(action="left_click", coordinate=[2000, 5]), reply(action="wait", time=1)])
    r = vlagent("run", TASK, "--model", model, "--trace", trace)
    assert r.returncode == 1
    result = load_result(trace)
    assert result.status == "invalid_output" and "3 rejected replies" in result.reason
    assert [s.action for s in load_steps(trace)] == [None, None, None]


@pytest.mark.slow
def test_script_running_out_ends_as_failed(tmp_path):
    trace = tmp_path / "trace"
    r = vlagent("run", TASK, "--model", script(tmp_path, [reply(action="wait", time=0.1)]), "--trace", trace)
    assert r.returncode == 1
    result = load_result(trace)
    assert result.status == "failed" and "ran out of replies" in result.reason


@pytest.mark.parametrize("body, message", [
    ("name: x\ngoal: [unclosed\n", "not valid YAML"),
    ("name: x\n", "a task needs goal: (one instruction) or steps: (a flow)"),
    ("name: x\ngoal: g\nmax_steps: -1\n", "max_steps: Input should be greater than or equal to 1"),
    ("name: x\ngoal: g\nallow: {keys: [ctrl+nokey]}\n", "allow.keys: Value error, unknown key 'nokey'"),
    ("name: x\ngoal: g\nsuccess: [{screen_text: a, command: b}]\n", "success.0: Value error, a check needs exactly one"),
    ("name: x\ngoal: g\nsetup: [{lanch: [a]}]\n", "setup.0.lanch: Extra inputs are not permitted"),
])
@pytest.mark.slow
def test_bad_task_file_exits_2_naming_the_field(tmp_path, body, message):
    task = tmp_path / "bad.yaml"
    task.write_text(body)
    r = vlagent("run", task, "--model", script(tmp_path, []))
    assert r.returncode == 2
    assert message in r.stderr
    assert "Traceback" not in r.stderr


def test_usage_errors_exit_2(tmp_path):
    assert vlagent("run", tmp_path / "missing.yaml").returncode == 2
    r = vlagent("run", TASK, "--model", "script:/nonexistent.yaml")
    assert r.returncode == 2 and "cannot read script" in r.stderr


@pytest.mark.slow
def test_app_that_crashes_at_start_ends_with_error(tmp_path):
    task = tmp_path / "crash.yaml"
    task.write_text(yaml.safe_dump({
        "name": "crash", "goal": "g",
        "setup": [{"launch": ["{python}", "-m", "sandbox.apps.crash"], "wait_for_window": "Never"}],
    }))
    trace = tmp_path / "trace"
    r = vlagent("run", task, "--model", script(tmp_path, [reply(action="wait", time=0.1)]), "--trace", trace)
    assert r.returncode == 1
    result = load_result(trace)
    assert result.status == "error" and "exited with code" in result.reason and "before window" in result.reason


@pytest.mark.slow
def test_ctrl_c_mid_run_leaves_no_display_or_app_behind(tmp_path):
    trace = tmp_path / "trace"
    model = script(tmp_path, [reply(action="left_click", coordinate=[352, 205])] + [reply(action="wait", time=2)] * 10)
    proc = subprocess.Popen([sys.executable, "-m", "agent.cli", "run", str(TASK), "--model", model, "--trace", str(trace)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (trace / "steps.jsonl").is_file() or not (trace / "steps.jsonl").read_text():
        assert time.monotonic() < deadline, "the run never took a step"
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    result = load_result(trace)
    assert result.status == "aborted" and "interrupted" in result.reason
    assert load_steps(trace), "steps taken before Ctrl-C are kept"
    assert not display_alive(result.display)
    assert procs_mentioning(str(trace / "workdir")) == []


@pytest.mark.slow
def test_pointer_pushed_into_a_corner_aborts_the_run(tmp_path, xvfb):
    """A person moving the mouse into a corner stops the run (pyautogui's fail-safe, kept armed);
    this also runs on an existing display (--display), as on a live desktop."""
    trace = tmp_path / "trace"
    # Long waits: the abort must also stop a `wait` in the middle, not only between steps.
    model = script(tmp_path, [reply(action="left_click", coordinate=[0, 0])] + [reply(action="wait", time=30)] * 5)
    proc = subprocess.Popen([sys.executable, "-m", "agent.cli", "run", str(TASK), "--model", model, "--trace", str(trace),
                             "--display", xvfb], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (trace / "steps.jsonl").is_file() or not (trace / "steps.jsonl").read_text():
        assert time.monotonic() < deadline, "the run never took a step"
        time.sleep(0.2)
    first = load_steps(trace)[0]
    assert first.pixel == (2, 2), "a model click on the corner is nudged off the fail-safe pixel"
    subprocess.run(["xdotool", "mousemove", "0", "0"], env={**os.environ, "DISPLAY": xvfb}, check=True)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, err
    result = load_result(trace)
    assert result.status == "aborted" and "corner" in result.reason
    assert display_alive(xvfb), "an existing display is left running"
    assert procs_mentioning(str(trace / "workdir")) == [], "the task's app is torn down"


@pytest.mark.slow
def test_tiny_random_model_goes_through_the_real_qwen3vl_path(tmp_path):
    """The tiny random Qwen3-VL checkpoint, loaded by from_pretrained, prompted in the native format,
    decoding constrained by xgrammar: every step yields a schema-valid action; random weights fail."""
    from actions import ACTION_ADAPTER

    trace = tmp_path / "trace"
    r = vlagent("run", TASK, "--model", "tiny-random", "--max-steps", "3", "--trace", trace, timeout=600)
    assert r.returncode == 1, r.stderr
    result = load_result(trace)
    assert result.status == "failed" and result.model.startswith("transformers:")
    steps = load_steps(trace)
    assert 1 <= len(steps) <= 3
    for s in steps:
        assert s.error is None, s.error
        ACTION_ADAPTER.validate_python(s.action)
        assert "<tool_call>" in s.raw


@pytest.mark.slow
def test_relative_trace_path_from_another_folder(tmp_path):
    """{workdir} is absolute, so the app (running in the task's folder) writes where checks look."""
    r = subprocess.run([sys.executable, "-m", "agent.cli", "run", str(TASK), "--model",
                        f"script:{SCRIPTS / 'fill_form_solution.yaml'}", "--trace", "rel-trace"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr
    assert load_result(tmp_path / "rel-trace").status == "success"
