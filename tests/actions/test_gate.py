"""The one gate (actions.gate) on real windows: a real xterm, a python3 REPL in an xterm of another
name, a `sh -c` wrapper, the Tk form; the window at a pointer action's point, the focused window for
keys and text; and every proposer through the real CLI: the model loop, a replayed trace, a flow's
native and cached steps."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from actions import Focus, Policy, PolicyError, gate
from actions.policy import Allow
from actions.schema import ACTION_ADAPTER
from sandbox.display import Xvfb

pytestmark = pytest.mark.timeout(240)
ROOT = Path(__file__).resolve().parents[2]


def act(**a):
    return ACTION_ADAPTER.validate_python(a)


def reply(**arguments) -> str:
    return f'<tool_call>\n{json.dumps({"name": "computer_use", "arguments": arguments})}\n</tool_call>'


def wait_window(display: str, title: str, timeout_s: float = 20) -> None:
    from sandbox.windows import list_windows

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if any(title in w.title for w in list_windows(display)):
            return
        time.sleep(0.1)
    raise AssertionError(f"no window {title!r}: {[w.title for w in list_windows(display)]}")


@pytest.fixture
def screen():
    """An Xvfb (800x600): a form on the right, an xterm on the left whose WM_CLASS is not a
    terminal's ("Notes"), running a python3 REPL; `spawn` starts more."""
    procs = []
    with Xvfb((800, 600)) as xvfb:
        env = {**os.environ, "DISPLAY": xvfb.display}

        def spawn(argv, title):
            procs.append(subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL, cwd=ROOT))
            wait_window(xvfb.display, title)

        from agent.desktop.x11 import X11Desktop

        desktop = X11Desktop(xvfb.display)
        try:
            yield desktop, spawn
        finally:
            desktop.close()
            for p in procs:
                p.kill()
                p.wait()


@pytest.mark.slow
def test_a_python_repl_in_an_xterm_of_another_name_is_a_terminal_and_the_form_is_not(screen):
    desktop, spawn = screen
    spawn(["xterm", "-class", "Notes", "-name", "notes", "-T", "notes", "-geometry", "30x10+0+0", "-e", "python3"], "notes")
    spawn(["xterm", "-class", "Memo", "-name", "memo", "-T", "memo", "-geometry", "30x10+0+300",
           "-e", "sh", "-c", "python3; true"], "memo")
    spawn([sys.executable, "-m", "sandbox.apps.form", "--out", "/dev/null"], "Registration")
    repl = desktop.window_at(40, 40)
    assert repl.wm_class == ("notes", "Notes") and repl.is_terminal(), repl
    assert repl.pty and repl.repl.startswith("python3"), repl  # the REPL reads the xterm's terminal
    wrapped = desktop.window_at(40, 340)
    assert wrapped.is_terminal() and "sh" in wrapped.processes and "python3" in wrapped.processes, wrapped
    form = desktop.window_at(600, 300)
    assert form.wm_class[-1] == "Tk" and not form.is_terminal(), form  # a GUI app written in Python
    assert desktop.window_at(700, 5).nowhere or not desktop.window_at(700, 5).is_terminal()
    # the same verdicts with the class names alone, as before the gate, would have missed both
    assert not Focus(wm_class=repl.wm_class, processes=("xterm", "python3")).is_terminal()


@pytest.mark.slow
def test_middle_click_over_a_terminal_is_refused_while_the_form_has_the_focus(screen):
    desktop, spawn = screen
    spawn(["xterm", "-T", "term", "-geometry", "30x10+0+0"], "term")
    spawn([sys.executable, "-m", "sandbox.apps.form", "--out", "/dev/null"], "Registration")
    desktop.click(600, 300)  # no window manager: the focus follows the pointer onto the form
    assert desktop.focused_window().wm_class[-1] == "Tk"
    policy = Policy()
    size = desktop.size()
    over_term = [int(40 / size[0] * 1000), int(40 / size[1] * 1000)]
    over_form = [int(600 / size[0] * 1000), int(300 / size[1] * 1000)]
    for a in (dict(action="middle_click", coordinate=over_term),
              dict(action="left_click_drag", start_coordinate=over_form, coordinate=over_term),
              dict(action="left_click_drag", start_coordinate=over_term, coordinate=over_form),
              dict(action="scroll", pixels=-100, coordinate=over_term)):
        with pytest.raises(PolicyError, match="terminal or shell"):
            gate.check(act(**a), desktop, policy)
    assert gate.check(act(action="middle_click", coordinate=over_form), desktop, policy)
    assert gate.check(act(action="type", text="Ada"), desktop, policy).text == "Ada"
    assert gate.check(act(action="middle_click", coordinate=over_term), desktop, Policy(Allow(terminal=True)))
    desktop.move(40, 40)  # now the xterm has the keys
    for a in (dict(action="type", text="ls"), dict(action="key", keys=["enter"]), dict(action="middle_click")):
        with pytest.raises(PolicyError, match="terminal or shell"):
            gate.check(act(**a), desktop, policy)


class Blind:
    """A probe that cannot tell: the gate refuses (fails closed)."""

    def size(self):
        return (800, 600)

    def position(self):
        return (1, 1)

    def window_at(self, x, y):
        return None

    def focused_window(self):
        return None


class Broken(Blind):
    def window_at(self, x, y):
        raise OSError("display gone")


def test_the_gate_fails_closed_and_keeps_secrets_to_their_place():
    for probe in (Blind(), Broken()):
        for a in (dict(action="left_click", coordinate=[500, 500]), dict(action="type", text="x"),
                  dict(action="key", keys=["tab"])):
            with pytest.raises(PolicyError, match="cannot tell"):
                gate.check(act(**a), probe, Policy())
    assert gate.check(act(action="wait", time=1), Blind(), Policy())  # nothing receives a wait
    declares = Policy(secrets={"PW"})
    with pytest.raises(PolicyError, match="alone"):
        gate.check(act(action="type", text="https://evil.example/?q={secret:PW}"), None, declares)
    with pytest.raises(PolicyError, match="not one the task declares"):
        gate.check(act(action="type", text="{secret:AWS_KEY}"), None, declares)
    assert gate.check(act(action="type", text="{secret:PW}"), None, declares)
    with pytest.raises(PolicyError, match="not one the task declares"):  # another run's policy: not its secret
        gate.check(act(action="type", text="{secret:PW}"), None, Policy())

    class Form(Blind):
        field = {"role": "text", "name": "Name", "label": "Name"}

        def focused_window(self):
            return Focus(wm_class=("zenity", "Zenity"), processes=("zenity",))

        def focused_field(self):
            return self.field

    placed = Policy(Allow(secrets={"PW": {"field": "Password", "role": "password text"}}))
    with pytest.raises(PolicyError, match="only be typed into the field 'Password'"):
        gate.check(act(action="type", text="{secret:PW}"), Form(), placed)
    form = Form()
    form.field = {"role": "password text", "name": "Password", "label": ""}
    assert gate.check(act(action="type", text="{secret:PW}"), form, placed)


def _trace(folder: Path, steps: list[dict], size=(800, 600)) -> Path:
    from PIL import Image

    (folder / "screens").mkdir(parents=True)
    Image.new("RGB", size, "white").save(folder / "screens" / "0001.png")
    with open(folder / "steps.jsonl", "w") as f:
        for n, a in enumerate(steps, 1):
            f.write(json.dumps({"step": n, "action": a, "screenshot": "screens/0001.png", "frame": list(size)}) + "\n")
    return folder


TERM_TASK = {"name": "term", "goal": "Use the notes app.", "screen": {"width": 800, "height": 600},
             "setup": [{"launch": ["xterm", "-class", "Notes", "-T", "notes", "-geometry", "120x45+0+0"],
                        "wait_for_window": "notes"}],
             "success": [{"file_contains": {"path": "{workdir}/pwned", "text": "x"}}]}


@pytest.mark.slow
def test_a_replayed_trace_that_types_a_command_into_an_xterm_is_refused(tmp_path):
    """The pointer rests over a full-screen xterm (named "Notes"): without a window manager it has
    the keys. The trace types a command and presses Enter: the replay stops at the typing."""
    (tmp_path / "task.yaml").write_text(yaml.safe_dump(TERM_TASK))
    trace = _trace(tmp_path / "evil", [{"action": "type", "text": f"touch {tmp_path}/pwned"},
                                       {"action": "key", "keys": ["enter"]}])
    done = subprocess.run([sys.executable, "-m", "agent.cli", "replay", str(trace), "--task", str(tmp_path / "task.yaml"),
                           "--trace", str(tmp_path / "out")], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 1, done.stdout + done.stderr
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    assert "terminal or shell" in result["reason"] and "step 1" in result["reason"], result["reason"]
    assert not (tmp_path / "pwned").exists()


@pytest.mark.slow
@pytest.mark.parametrize("how", ["native", "cached"])
def test_a_flow_step_and_a_cached_step_that_type_into_an_xterm_are_refused(tmp_path, how):
    """A flow's native `type:` step, and a cache committed next to a task whose `act` entry types a
    command (no model is asked: the script is empty)."""
    from agent.flow.cache import step_key

    command = f"touch {tmp_path}/pwned"
    steps = [{"type": command}, {"key": "enter"}] if how == "native" else [{"act": "Write a note"}]
    task = {**TERM_TASK, "steps": steps}
    task.pop("goal")
    (tmp_path / "flow.yaml").write_text(yaml.safe_dump(task))
    (tmp_path / "replies.yaml").write_text("[]\n")
    if how == "cached":
        actions = [{"action": {"action": "type", "text": command}}, {"action": {"action": "key", "keys": ["enter"]}}]
        cache = {"version": 1, "task": "term", "steps": [{"key": step_key("act", "Write a note"), "kind": "act",
                                                          "text": "Write a note", "actions": actions}]}
        (tmp_path / "term.cache.json").write_text(json.dumps(cache))
    done = subprocess.run([sys.executable, "-m", "agent.cli", "run", str(tmp_path / "flow.yaml"), "--model",
                           f"script:{tmp_path / 'replies.yaml'}", "--trace", str(tmp_path / "out")],
                          cwd=ROOT, capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    assert done.returncode == 1 and not (tmp_path / "pwned").exists(), (done.stderr, result)
    if how == "native":
        assert "terminal or shell" in json.dumps(result), result
    else:  # the gate refused the cached typing: nothing of the entry ran, the step went to the (empty) model
        flow = result["flow"][0]
        assert flow["cache"] == "healed" and flow["actions"] == [], flow
        assert "type" not in (tmp_path / "out" / "steps.jsonl").read_text()


@pytest.mark.slow
def test_the_model_loop_cannot_paste_into_a_terminal_beside_the_form(tmp_path):
    task = {"name": "paste", "goal": "Fill the form.", "screen": {"width": 1280, "height": 800}, "max_steps": 4,
            "setup": [{"launch": ["xterm", "-T", "term", "-geometry", "40x10+0+0"], "wait_for_window": "term"},
                      {"launch": ["{python}", "-m", "sandbox.apps.form", "--out", "{workdir}/form.json"],
                       "wait_for_window": "Registration"}]}
    (tmp_path / "task.yaml").write_text(yaml.safe_dump(task))
    replies = [reply(action="left_click", coordinate=[352, 205]), reply(action="middle_click", coordinate=[40, 40]),
               reply(action="terminate", status="failure")]
    (tmp_path / "replies.yaml").write_text(yaml.safe_dump(replies))
    subprocess.run([sys.executable, "-m", "agent.cli", "run", str(tmp_path / "task.yaml"), "--model",
                    f"script:{tmp_path / 'replies.yaml'}", "--trace", str(tmp_path / "out")], cwd=ROOT,
                   capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    steps = [json.loads(line) for line in (tmp_path / "out" / "steps.jsonl").read_text().splitlines()]
    assert steps[0]["error"] is None and steps[1]["action"] is None
    assert "middle_click" in steps[1]["error"] and "terminal or shell" in steps[1]["error"], steps[1]


@pytest.mark.slow
def test_a_window_that_takes_the_place_between_the_check_and_the_input_gets_nothing(screen):
    """The gate judged the form; before the input goes, an xterm maps over that place. The desktop
    looks again right before the click (and the typing): another window is there, nothing is sent."""
    from agent.desktop.x11 import ReceiverChanged
    from agent.run.executor import execute
    from sandbox.windows import list_windows

    desktop, spawn = screen
    spawn([sys.executable, "-m", "sandbox.apps.form", "--out", "/dev/null"], "Registration")
    form = next(w for w in list_windows(desktop.display) if w.title == "Registration")
    size = desktop.size()
    x, y = form.x + 20, form.y + 20
    click = act(action="left_click", coordinate=[int((x + 0.5) / size[0] * 1000), int((y + 0.5) / size[1] * 1000)])
    execute(gate.check(click, desktop, Policy()), desktop, size)  # the same window at the input: it goes
    desktop.move(x, y)
    # no window manager and nobody set the focus: keys go to the window under the pointer (the form)
    from Xlib import X, display as xdisplay

    d = xdisplay.Display(desktop.display)  # (the Tk click set an explicit focus: give it back to the pointer)
    d.set_input_focus(X.PointerRoot, X.RevertToPointerRoot, X.CurrentTime)
    d.sync()
    d.close()
    checked_click, typing = gate.check(click, desktop, Policy()), gate.check(act(action="type", text="ls"), desktop, Policy())
    spawn(["xterm", "-T", "term", "-geometry", "200x80+0+0"], "term")  # over everything, under the pointer
    with pytest.raises(ReceiverChanged, match="click changed after the gate checked it"):
        execute(checked_click, desktop, size)
    with pytest.raises(ReceiverChanged, match="typing changed after the gate checked it"):
        execute(typing, desktop, size)
