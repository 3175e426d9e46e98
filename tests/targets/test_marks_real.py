"""Element marks on real apps in a real sandbox (Xvfb, the accessibility bus, real input): a GTK
dialog (yad) gets its elements marked and listed; a model answering a mark clicks the right
element although its window moved between the frame and the action; a mark whose window went away
is refused with the reason, fed back to the model, and nothing is clicked; the project's Tk app
publishes no tree, so it gets no marks and the model is told to use coordinates."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from PIL import Image, ImageChops

from agent.run.runner import run_task
from agent.task import load_task
from agent.trace import load_steps

from fakes import QueueModel, reply

ROOT = Path(__file__).resolve().parents[2]
YAD = ["yad", "--form", "--title=Preferences", "--field=User name", "--field=Remember me:CHK",
       "--button=Apply:0", "--button=Quit:1"]
TICKED = {"a11y": {"role": "check box", "name": "Remember me", "states": {"checked": True}}}
needs_yad = pytest.mark.skipif(not shutil.which("yad"), reason="yad (GTK 3) is not installed; .ci/install installs it")


def task_file(tmp_path: Path, launch: list[str], title: str, **fields) -> Path:
    task = {"name": "marks", "goal": "Tick Remember me", "screen": {"width": 1280, "height": 800},
            "setup": [{"launch": launch, "wait_for_window": title}], "max_steps": 8, "timeout_s": 120,
            "marks": True, **fields}
    path = tmp_path / "task.yaml"
    path.write_text(yaml.safe_dump(task), encoding="utf-8")
    return path


def prompt_of(messages) -> str:
    return "\n".join(p["text"] for p in messages[-1]["content"] if p.get("type") == "text")


class Session:
    """The run's session, kept by the on_session hook: the fake model acts on its display."""

    def __call__(self, session) -> None:
        self.session = session
        session.reraise = True  # a bug of ours fails the test with its traceback

    def xdotool(self, *args: str) -> None:
        subprocess.run(["xdotool", "search", "--onlyvisible", "--name", "^Preferences$", *args],
                       env=self.session.env.sandbox.env, check=True, timeout=10)


def mark_of(what: str, then):
    """A model step: once `what` is listed, do `then` to the app and answer its mark (None until then)."""
    def answer(messages) -> str | None:
        m = re.search(rf"\[(\d+)\] {re.escape(what)}", prompt_of(messages))
        if m is None:
            return None
        then()
        return reply(action="left_click", mark=int(m.group(1)))
    return answer


def model_of(*steps) -> QueueModel:
    """A model that goes through `steps` (callables of the messages, or replies), waiting a second
    while a step is not ready (the dialog's widgets are not in the tree yet)."""
    todo = list(steps)

    def answer(messages) -> str:
        got = todo[0](messages) if callable(todo[0]) else todo[0]
        if got is None:
            return reply(action="wait", time=1)
        todo.pop(0)
        return got
    return QueueModel(*[answer] * 8)


@pytest.mark.slow
@needs_yad
def test_a_mark_answer_clicks_its_element_after_the_window_moved(tmp_path):
    hook = Session()

    def move():
        hook.xdotool("windowmove", "420", "260")
        time.sleep(0.5)

    model = model_of(mark_of("check box 'Remember me'", move), reply(action="terminate", status="success"))
    task = load_task(task_file(tmp_path, YAD, "Preferences", success=[TICKED]))
    result, folder = run_task(task, model, trace_dir=tmp_path / "trace", on_session=hook)
    assert result.status == "success", result.reason  # the tree says the check box is ticked
    steps = load_steps(folder)
    clicked = next(s for s in steps if s.mark is not None)
    listed = prompt_of(model.seen[clicked.step - 1])
    assert "check box 'Remember me'" in listed and "push button 'Apply'" in listed and '"mark": ' in listed
    mark = clicked.mark
    assert mark["name"] == "Remember me" and mark["box"] != mark["box_marked"]  # it moved in between
    x, y, w, h = mark["box"]
    assert x <= clicked.pixel[0] < x + w and y <= clicked.pixel[1] < y + h
    assert clicked.raw.count('"mark"') == 1 and clicked.action.coordinate is not None
    shown, plain = Image.open(folder / clicked.marks), Image.open(folder / clicked.screenshot)
    assert ImageChops.difference(shown.convert("RGB"), plain.convert("RGB")).getbbox() is not None
    assert {"marks_tree_ms", "marks_draw_ms"} <= set(clicked.timings)
    # the step's target evidence (for replay and the flow cache) is the element, read where the frame shows it
    assert clicked.target["a11y"]["role"] == "check box" and clicked.target["a11y"]["name"] == "Remember me"


@pytest.mark.slow
@needs_yad
def test_a_mark_whose_window_went_away_is_refused_and_nothing_is_clicked(tmp_path):
    hook = Session()

    def hide():
        hook.xdotool("windowunmap")
        time.sleep(1.0)

    model = model_of(mark_of("check box 'Remember me'", hide), reply(action="terminate", status="failure"))
    task = load_task(task_file(tmp_path, YAD, "Preferences", success=[TICKED]))
    result, folder = run_task(task, model, trace_dir=tmp_path / "trace", on_session=hook)
    assert result.status == "failed"  # the check box was never ticked
    steps = load_steps(folder)
    refused = next(s for s in steps if s.raw and '"mark"' in s.raw)
    assert refused.action is None and refused.pixel is None
    assert re.search(r"mark \d+ \(check box 'Remember me'\) is no longer on the screen", refused.error)
    assert "is no longer on the screen" in prompt_of(model.seen[refused.step])  # told to the model


@pytest.mark.slow
def test_the_tk_app_has_no_tree_so_no_marks_and_a_mark_answer_is_refused(tmp_path):
    access = ["{python}", "-m", "sandbox.apps.access", "--out", "{workdir}/access.json"]
    model = QueueModel(reply(action="left_click", mark=1), reply(action="terminate", status="failure"))
    task = load_task(task_file(tmp_path, access, "Access"))
    result, folder = run_task(task, model, trace_dir=tmp_path / "trace")
    steps = load_steps(folder)
    assert "no element marks" in prompt_of(model.seen[0]) and "[1]" not in prompt_of(model.seen[0])
    assert steps[0].marks is None and steps[0].action is None and steps[0].pixel is None
    assert "mark 1 is not on this screenshot (it has no marks)" in steps[0].error


def test_only_the_native_format_offers_marks(tmp_path):
    """A family that has no marks in its format is one line and exit 2, before anything starts."""
    path = task_file(tmp_path, ["true"], "x")
    script = tmp_path / "s.yaml"
    script.write_text("[]\n", encoding="utf-8")
    r = subprocess.run([sys.executable, "-m", "agent.cli", "run", str(path), "--marks", "--model", f"script:{script}",
                        "--format", "mai-ui", "--trace", str(tmp_path / "t")], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2 and "only the qwen3-vl format offers element marks, not mai-ui" in r.stderr
