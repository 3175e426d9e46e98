"""Every success-check kind passes and fails as it should; a check never raises."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import mss
import pytest
from PIL import Image

import agent.run.checks
from agent.run.checks import evaluate
from agent.task import SetupStep, Task
from agent.trace import CheckResult
from sandbox.session import Sandbox

pytestmark = pytest.mark.timeout(120)


class ScreenDesktop:
    """The part of the Desktop interface checks use: capture and display (mss, real screen)."""

    def __init__(self, display: str):
        self.display = display

    def capture(self) -> Image.Image:
        with mss.MSS(display=self.display) as m:
            shot = m.grab(m.monitors[1])
        return Image.frombytes("RGB", shot.size, shot.rgb)


class NoScreen:
    """For file and command checks: using the screen would be a bug, so it fails loudly."""

    display = ":0"

    def capture(self):
        raise RuntimeError("capture should not be needed")


def run(tmp_path: Path, checks: list, desktop=None) -> list[CheckResult]:
    task = Task.model_validate({"name": "t", "goal": "g", "success": checks})
    task.base_dir = tmp_path / "task"
    task.base_dir.mkdir(exist_ok=True)
    workdir = tmp_path / "work"
    workdir.mkdir(exist_ok=True)
    return evaluate(task, workdir, desktop or NoScreen())


def one(tmp_path, check, desktop=None) -> CheckResult:
    [result] = run(tmp_path, [check], desktop)
    return result


# -- file_json ----------------------------------------------------------------------------------

def write(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data if isinstance(data, str) else json.dumps(data))


FORM = {"name": "Ada Lovelace", "email": "ada@example.com", "plan": "Pro", "newsletter": True,
        "address": {"city": "London", "zip": "N1"}}


@pytest.mark.parametrize("equals", [
    {"name": "Ada Lovelace", "email": "ada@example.com"},
    {"newsletter": True, "plan": "Pro"},
    {"address": {"city": "London"}},  # nested subset
    {},
])
def test_file_json_subset_passes(tmp_path, equals):
    write(tmp_path / "work/form.json", FORM)
    r = one(tmp_path, {"file_json": {"path": "{workdir}/form.json", "equals": equals}})
    assert r.passed and r.check == "file_json: {workdir}/form.json"


@pytest.mark.parametrize("equals, detail", [
    ({"name": "Ada"}, 'name: expected "Ada", got "Ada Lovelace"'),
    ({"phone": "1"}, "phone: missing"),
    ({"address": {"city": "Paris"}}, 'address.city: expected "Paris", got "London"'),
    ({"newsletter": 1}, "newsletter: expected 1, got true"),  # True is not 1 here
    ({"name": {"first": "Ada"}}, 'name: expected an object, got "Ada Lovelace"'),
])
def test_file_json_mismatch_fails_with_the_difference(tmp_path, equals, detail):
    write(tmp_path / "work/form.json", FORM)
    r = one(tmp_path, {"file_json": {"path": "{workdir}/form.json", "equals": equals}})
    assert not r.passed and r.detail == detail


def test_file_json_missing_or_broken_file_fails(tmp_path):
    r = one(tmp_path, {"file_json": {"path": "{workdir}/none.json", "equals": {}}})
    assert not r.passed and r.detail.endswith("none.json does not exist")
    write(tmp_path / "work/bad.json", '{"name": "Ada",')
    r = one(tmp_path, {"file_json": {"path": "{workdir}/bad.json", "equals": {}}})
    assert not r.passed and "is not valid JSON" in r.detail
    write(tmp_path / "work/list.json", [1, 2])
    r = one(tmp_path, {"file_json": {"path": "{workdir}/list.json", "equals": {"a": 1}}})
    assert not r.passed and r.detail == "top level: expected an object, got [1, 2]"


def test_relative_paths_resolve_against_the_task_folder(tmp_path):
    write(tmp_path / "task/out/form.json", {"name": "Ada"})
    assert one(tmp_path, {"file_json": {"path": "out/form.json", "equals": {"name": "Ada"}}}).passed


# -- file_contains ------------------------------------------------------------------------------

def test_file_contains(tmp_path):
    write(tmp_path / "work/log.txt", "line one\nSaved 3 records\n")
    assert one(tmp_path, {"file_contains": {"path": "{workdir}/log.txt", "text": "Saved 3"}}).passed
    r = one(tmp_path, {"file_contains": {"path": "{workdir}/log.txt", "text": "saved 3"}})  # exact case
    assert not r.passed and "does not contain 'saved 3'" in r.detail
    r = one(tmp_path, {"file_contains": {"path": "{workdir}/nope.txt", "text": "x"}})
    assert not r.passed and "does not exist" in r.detail


def test_at_the_end_of_a_run_a_failed_check_is_looked_at_again_but_a_command_runs_once(tmp_path):
    """An app may write its file (or set its title) a moment after the last action: the checks at
    the end of a run give it GRACE_S. A command is not run again (it may not be harmless)."""
    import threading
    import time

    task = Task.model_validate({"name": "t", "goal": "g", "success": [
        {"file_contains": {"path": "{workdir}/late.txt", "text": "saved"}},
        {"command": "echo ran >> {workdir}/runs.txt; exit 1"}]})
    task.base_dir = tmp_path
    work = tmp_path / "work"
    work.mkdir()
    assert [r.passed for r in evaluate(task, work, NoScreen())] == [False, False]  # no grace: at once
    (work / "runs.txt").unlink()
    threading.Timer(0.6, lambda: (work / "late.txt").write_text("saved")).start()
    t0 = time.monotonic()
    late, command = evaluate(task, work, NoScreen(), grace_s=agent.run.checks.GRACE_S)
    assert late.passed and late.detail.startswith("found in") and not command.passed
    assert (work / "runs.txt").read_text() == "ran\n"
    assert 0.6 <= time.monotonic() - t0 < agent.run.checks.GRACE_S


# -- command ------------------------------------------------------------------------------------

def test_command_list_and_shell(tmp_path):
    write(tmp_path / "task/here.txt", "x")
    assert one(tmp_path, {"command": ["test", "-f", "here.txt"]}).passed  # cwd: the task folder
    assert one(tmp_path, {"command": "test -f here.txt && test -d {workdir}"}).passed
    assert one(tmp_path, {"command": ["{python}", "-c", "import sys; sys.exit(0)"]}).passed
    r = one(tmp_path, {"command": "echo went wrong >&2; exit 3"})
    assert not r.passed and r.detail == "exit code 3: went wrong"
    r = one(tmp_path, {"command": ["no-such-program-xyz"]})
    assert not r.passed and r.detail.startswith("cannot run")


def test_command_sees_the_display(tmp_path):
    r = one(tmp_path, {"command": [sys.executable, "-c", "import os; assert os.environ['DISPLAY'] == ':0'"]})
    assert r.passed, r.detail


def test_command_timeout_fails_and_kills_it(tmp_path, monkeypatch):
    monkeypatch.setattr(agent.run.checks, "COMMAND_TIMEOUT_S", 0.3)
    r = one(tmp_path, {"command": "sleep 30 & echo $! > {workdir}/pid; wait"})
    assert not r.passed and r.detail == "did not finish in 0.3 s"
    pid = int((tmp_path / "work/pid").read_text())
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1][:3]


# -- screen_text and window_title on a real display with the form app -----------------------------

@pytest.fixture
def form_screen(xvfb, tmp_path):
    with Sandbox(display=xvfb, workdir=tmp_path / "work", cwd=tmp_path) as sb:
        sb.run_setup([SetupStep(launch=["{python}", "-m", "sandbox.apps.form", "--out", "{workdir}/f.json"],
                                wait_for_window="Registration")])
        yield ScreenDesktop(xvfb)


@pytest.mark.slow
def test_screen_and_window_checks(tmp_path, form_screen):
    results = run(tmp_path, [
        {"screen_text": "registration"},  # case-insensitive
        {"screen_text": "  Subscribe\tTO   newsletter "},  # whitespace-normalised
        {"screen_text": "Saved"},  # not submitted yet
        {"window_title": "^Regis"},
        {"window_title": "Nope"},
        {"window_title": "(a+)+$"},  # backtracks forever in Python's re; RE2 answers at once
    ], form_screen)
    assert [r.passed for r in results] == [True, True, False, True, False, False]
    assert "OCR read:" in results[2].detail and "registration" in results[2].detail
    assert results[4].detail == "no visible window matches; titles: ['Registration']"
    assert results[5].detail.startswith("no visible window matches")


def test_a_pattern_the_linear_time_engine_cannot_run_is_refused_when_the_task_loads():
    with pytest.raises(ValueError, match="RE2"):
        Task.model_validate({"name": "t", "goal": "g", "success": [{"window_title": "(unclosed"}]})
    with pytest.raises(ValueError, match="RE2"):
        Task.model_validate({"name": "t", "goal": "g", "setup": [{"wait_for_window": "(x)\\1"}]})


def test_a_check_never_raises(tmp_path):
    r = one(tmp_path, {"screen_text": "anything"})  # NoScreen.capture raises
    assert not r.passed and r.detail == "RuntimeError: capture should not be needed"


# -- OCR ----------------------------------------------------------------------------------------

def text_image(lines: list[str], size=(600, 200), px=28) -> Image.Image:
    from PIL import ImageDraw, ImageFont
    img = Image.new("RGB", size, "white")
    try:
        font = ImageFont.truetype("DejaVuSans.ttf", px)
    except OSError:  # no DejaVu: Pillow's own scalable font
        font = ImageFont.load_default(size=px)
    for i, line in enumerate(lines):
        ImageDraw.Draw(img).text((20, 20 + i * int(px * 1.8)), line, fill="black", font=font)
    return img


def test_ocr_words_boxes_and_lines():
    from agent.ocr import ocr_text, ocr_words
    img = text_image(["Name Ada", "Submit"])
    words = ocr_words(img)
    assert [(w.text, w.line) for w in words] == [("Name", 0), ("Ada", 0), ("Submit", 1)]
    submit = words[2]
    assert 15 <= submit.box[0] <= 25 and 65 <= submit.center[1] <= 90 and submit.conf > 80
    assert ocr_text(img) == "Name Ada\nSubmit"


def test_ocr_upscales_small_images():
    from agent.ocr import ocr_words
    small = text_image(["Saved"], size=(120, 40), px=11)  # crops like replay's are this small
    words = ocr_words(small)
    assert [w.text for w in words] == ["Saved"]
    x, y, w, h = words[0].box  # boxes come back in the caller's pixels, not the upscaled ones
    assert x + w <= 120 and y + h <= 40


def test_missing_tesseract_is_one_clear_line(monkeypatch):
    import agent.ocr
    from agent.errors import VlagentError
    monkeypatch.setattr(agent.ocr.shutil, "which", lambda name: None)
    with pytest.raises(VlagentError, match=r"^tesseract not found: install it \(apt-get install tesseract-ocr\)$"):
        agent.ocr.ocr_words(text_image(["x"]))


def test_taskdir_and_a_trace_copy_of_the_task_resolve_paths_against_the_task_folder(tmp_path):
    import yaml

    from agent.task import load_task, resolve_path

    home = tmp_path / "tasks"
    home.mkdir()
    (home / "data.json").write_text('{"ok": true}')
    (home / "t.yaml").write_text("name: t\ngoal: g\nsetup: [{run: [cat, '{taskdir}/data.json']}]\n"
                                 "success: [{file_json: {path: data.json, equals: {ok: true}}}]\n")
    task = load_task(home / "t.yaml")
    assert task.base_dir == home and task.taskdir == str(home)
    assert resolve_path(task, "data.json", tmp_path) == home / "data.json"
    assert resolve_path(task, "{taskdir}/data.json", tmp_path) == home / "data.json"
    trace = tmp_path / "runs" / "trace1"  # what a run writes: the task as run, with its folder
    trace.mkdir(parents=True)
    (trace / "task.yaml").write_text(yaml.safe_dump(task.model_dump(mode="json"), sort_keys=False))
    copy = load_task(trace / "task.yaml")
    assert copy.base_dir == home and resolve_path(copy, "data.json", tmp_path) == home / "data.json"
    moved = yaml.safe_load((trace / "task.yaml").read_text()) | {"taskdir": str(tmp_path / "gone")}
    (trace / "task.yaml").write_text(yaml.safe_dump(moved))
    assert load_task(trace / "task.yaml").base_dir == trace  # folder gone (another machine): its own
