"""Recording: how input events group into native actions, how secret fields are recognised, and
`vlagent record` driven by real xdotool input on the form app, replayed afterwards."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from agent.replay.record import Grouper, _key_fields, secret_name
from agent.replay.player import replay
from agent.task import load_task
from agent.trace import load_result, load_steps

pytestmark = pytest.mark.timeout(240)  # a hang fails the test instead of stalling CI
ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT_S = 60.0


# ----------------------------------------------------------------------------- grouping (no display)

class Log:
    def __init__(self):
        self.done = []

    def __call__(self, pending):
        self.done.append(pending)

    def actions(self):
        out = []
        for p in self.done:
            a = dict(p.action)
            if "button" in a:
                a = {"action": {1: "click", 2: "double", 3: "triple"}[p.count] + ":" + a.pop("button")}
            out.append(a)
        return out


def grouper():
    log = Log()
    return Grouper(emit=log), log


def click(g, t, x, y, button="left", moved=(0, 0)):
    g.mouse(t, x, y, button, True)
    g.mouse(t + 0.05, x + moved[0], y + moved[1], button, False)


def test_clicks_double_clicks_triple_clicks_and_drags():
    g, log = grouper()
    click(g, 0.0, 10, 10)
    g.tick(1.0)  # the double-click window passed: a single click
    click(g, 2.0, 50, 50)
    click(g, 2.2, 51, 50)  # quick, one pixel away: the same double click
    g.tick(3.0)
    click(g, 4.0, 70, 70)
    click(g, 4.2, 70, 70)
    click(g, 4.4, 70, 70)
    click(g, 5.0, 200, 200, moved=(120, 0))  # moved while pressed: a drag
    click(g, 6.0, 5, 5, button="right")
    g.flush()
    assert log.actions() == [{"action": "click:left"}, {"action": "double:left"}, {"action": "triple:left"},
                             {"action": "left_click_drag"}, {"action": "click:right"}]
    drag = log.done[3]
    assert drag.start_pixel == (200, 200) and drag.pixel == (320, 200)


def test_wheel_clicks_in_one_place_are_one_scroll():
    g, log = grouper()
    for i in range(3):
        g.wheel(1.0 + i * 0.1, 300, 300, 0, -1)
    g.wheel(1.5, 300, 300, 1, 0)  # sideways: another action
    g.tick(5.0)
    assert log.actions() == [{"action": "scroll", "pixels": -300}, {"action": "hscroll", "pixels": 100}]


def test_printable_runs_become_type_and_chords_become_key():
    g, log = grouper()
    for t, (name, char) in enumerate([(None, "A"), (None, "d"), (None, "a"), (None, " "), (None, "L")]):
        g.key(t * 0.1, name, char, True)
        g.key(t * 0.1 + 0.05, name, char, False)
    g.key(1.0, "ctrl", None, True)
    g.key(1.1, None, "a", True)  # ctrl+a is a chord, not text
    g.key(1.2, "ctrl", None, False)
    g.key(1.3, "shift", None, True)
    g.key(1.4, "tab", None, True)
    g.key(1.5, "shift", None, False)
    g.key(1.6, None, "@", True)  # shift alone never makes a chord of a character
    g.key(2.0, "enter", None, True)
    g.flush()
    assert log.actions() == [{"action": "type", "text": "Ada L"}, {"action": "key", "keys": ["ctrl", "a"]},
                             {"action": "key", "keys": ["shift", "tab"]}, {"action": "type", "text": "@"},
                             {"action": "key", "keys": ["enter"]}]


def test_a_pause_or_a_click_ends_a_run_of_text():
    g, log = grouper()
    g.key(0.0, None, "x", True)
    g.tick(5.0)  # idle longer than TYPE_IDLE_S
    g.key(6.0, None, "y", True)
    g.mouse(6.5, 1, 1, "left", True)
    assert log.actions() == [{"action": "type", "text": "x"}, {"action": "type", "text": "y"}]


def test_pynput_keys_map_to_pyautogui_names():
    assert _key_fields(SimpleNamespace(char="a")) == (None, "a")
    assert _key_fields(SimpleNamespace(char="\x01")) == (None, "a")  # ctrl+a as a control character
    assert _key_fields(SimpleNamespace(name="page_up")) == ("pageup", None)
    assert _key_fields(SimpleNamespace(name="space")) == (None, " ")
    assert _key_fields(SimpleNamespace(vk=65056)) == ("tab", None)  # ISO_Left_Tab (shift+Tab)


def test_password_like_fields_and_task_marked_fields_are_secret():
    task = SimpleNamespace(secrets={"email": "MY_EMAIL"})
    field = lambda label: {"anchors": [{"text": label}], "text": {"at": ""}}  # noqa: E731
    assert secret_name(field("Password"), task) == "PASSWORD"
    assert secret_name(field("PIN code"), task) == "PIN"
    assert secret_name(field("Email"), task) == "email"
    assert secret_name(field("Name"), task) is None
    assert secret_name(None, task) is None


# ----------------------------------------------------------------------------- real recording

def _task_file(tmp_path: Path, secrets=None) -> Path:
    data = yaml.safe_load((ROOT / "tasks" / "fill_form.yaml").read_text())
    if secrets:
        data["secrets"] = secrets
    path = tmp_path / "task.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _start_recording(trace: Path, task: Path, *extra: str):
    proc = subprocess.Popen(["vlagent", "record", str(trace), "--task", str(task), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        m = re.search(r"recording on display (:\d+)", line)
        if m:
            os.environ["XAUTHORITY"] = re.search(r"XAUTHORITY=(\S*?)\)", line).group(1)  # the sandbox's cookie
            return proc, m.group(1)
    proc.kill()
    raise AssertionError(f"vlagent record never said it was recording: {proc.communicate()}")


def _xdotool(display: str, *args: str) -> None:
    subprocess.run(["xdotool", *args], env={**os.environ, "DISPLAY": display}, check=True, timeout=30)
    time.sleep(0.3)  # a person's pace: the recorder's frames see each step's screen


@pytest.mark.slow
def test_record_with_real_input_then_replay_on_a_moved_layout(tmp_path, monkeypatch):
    trace = tmp_path / "rec"
    task = _task_file(tmp_path, secrets={"Email": "VLAGENT_TEST_EMAIL"})
    proc, display = _start_recording(trace, task, "--max-seconds", "60")
    _xdotool(display, "mousemove", "420", "164", "click", "1")  # Name (the fixed layout)
    _xdotool(display, "type", "--delay", "20", "Ada Lovelace")
    _xdotool(display, "mousemove", "400", "228", "click", "1")  # Email
    _xdotool(display, "type", "--delay", "20", "ada@example.com")
    _xdotool(display, "key", "Return")  # submits; the task's checks pass and recording stops
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, out + err
    assert "the task's success checks pass" in out

    steps = load_steps(trace)
    assert [s.kind for s in steps] == ["left_click", "type", "left_click", "type", "key"]
    assert steps[1].action.text == "Ada Lovelace"
    assert steps[3].action.text == "{secret:Email}"  # typed into the field the task marks secret
    assert steps[4].action.keys == ["enter"]
    assert "ada@example.com" not in (trace / "steps.jsonl").read_text()
    assert all(s.source == "human" and (trace / s.screenshot).is_file() for s in steps)
    assert steps[0].pixel == (420, 164) and steps[0].action.coordinate == (328, 205)
    assert any(a["text"] == "Name" for a in steps[0].target["anchors"])
    assert load_result(trace).status == "success"

    monkeypatch.setenv("VLAGENT_TEST_EMAIL", "ada@example.com")
    assert replay(trace, task, trace_out=tmp_path / "same").status == "success"
    moved = load_task(task)
    launch = list(moved.setup[0].launch) + ["--layout-seed", "4"]
    moved = moved.model_copy(update={"setup": [moved.setup[0].model_copy(update={"launch": launch})]})
    result = replay(trace, moved, trace_out=tmp_path / "replayed")
    assert result.status == "success", result.reason
    assert json.loads((tmp_path / "replayed" / "workdir" / "form.json").read_text())["email"] == "ada@example.com"


@pytest.mark.slow
def test_recording_stops_after_max_seconds_with_nothing_done(tmp_path):
    trace = tmp_path / "rec"
    proc, _ = _start_recording(trace, _task_file(tmp_path), "--max-seconds", "1")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, out + err
    assert load_steps(trace) == []
    result = load_result(trace)
    assert result.status == "failed" and "--max-seconds reached" in result.reason


@pytest.mark.slow
def test_double_click_and_scroll_then_ctrl_c_ends_the_recording_with_a_trace_and_no_display_left(tmp_path):
    trace = tmp_path / "rec"
    proc, display = _start_recording(trace, _task_file(tmp_path))
    _xdotool(display, "mousemove", "420", "164", "click", "--repeat", "2", "--delay", "80", "1")
    _xdotool(display, "click", "5")  # one wheel click down, where the pointer is
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, out + err
    assert "Traceback" not in err
    steps = load_steps(trace)
    assert [s.kind for s in steps] == ["double_click", "scroll"]
    assert steps[1].action.pixels == -100 and steps[1].pixel == (420, 164)
    assert "stopped by Ctrl-C" in load_result(trace).reason
    assert not Path(f"/tmp/.X11-unix/X{display[1:]}").exists()  # the sandbox's Xvfb is gone
