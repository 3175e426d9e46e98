"""The registration form app on a real Xvfb, driven by real X input (xdotool), read by OCR."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import mss
import pytest
from PIL import Image

from agent.ocr import ocr_text, ocr_words
from agent.task import SetupStep
from sandbox.apps.form import MAX_SEED_H, MAX_SEED_W, seeded_layout
from sandbox.display import Xvfb
from sandbox.session import Sandbox

pytestmark = pytest.mark.timeout(120)
WAIT_S = 10.0  # bound on waiting for the app to react (a deadline, not a speed check)
ADA = {"name": "Ada Lovelace", "email": "ada@example.com"}


class Form:
    """The form app in a sandbox on `display`, with its widget boxes (screen pixels)."""

    def __init__(self, sb: Sandbox, workdir: Path, *args: str):
        n = len(sb.apps) + 1  # several instances may share a workdir
        self.display, self.out, layout = sb.display, workdir / f"form{n}.json", workdir / f"layout{n}.json"
        sb.run_setup([SetupStep(
            launch=[sys.executable, "-m", "sandbox.apps.form", "--out", str(self.out),
                    "--dump-layout", str(layout), *args],
            wait_for_window="^Registration$")])
        self.boxes = json.loads(_wait_for(layout).read_text())

    def xdotool(self, *args) -> None:
        subprocess.run(["xdotool", *map(str, args)], env={**os.environ, "DISPLAY": self.display},
                       check=True, timeout=WAIT_S)

    def click(self, widget: str) -> None:
        x, y, w, h = self.boxes[widget]
        self.xdotool("mousemove", x + w // 2, y + h // 2, "click", "1")

    def type_into(self, widget: str, text: str) -> None:
        self.click(widget)
        self.xdotool("type", "--delay", "5", text)

    def screenshot(self) -> Image.Image:
        with mss.MSS(display=self.display) as m:
            shot = m.grab(m.monitors[1])
        return Image.frombytes("RGB", shot.size, shot.rgb)

    def wait_for_screen_text(self, text: str) -> str:
        """OCR until `text` shows (Tk redraws asynchronously); returns the last OCR text."""
        deadline = time.monotonic() + WAIT_S
        while True:
            seen = ocr_text(self.screenshot())
            if text in seen or time.monotonic() > deadline:
                return seen
            time.sleep(0.1)


def _wait_for(path: Path) -> Path:
    deadline = time.monotonic() + WAIT_S
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    return path


@pytest.fixture
def form(xvfb, tmp_path):
    """A factory: form(*args) starts the app on the test's display."""
    with Sandbox(display=xvfb, workdir=tmp_path, cwd=tmp_path) as sb:
        yield lambda *args: Form(sb, tmp_path, *args)


@pytest.mark.slow
def test_fixed_layout_never_moves(form):
    # Scripted solutions click fixed 0..1000 coordinates: these pixels are a contract.
    boxes = form().boxes
    assert boxes["window"] == [100, 60, 570, 470]
    assert boxes["name"] == [270, 146, 360, 36]
    assert boxes["email"] == [270, 210, 360, 36]
    assert [boxes[k][:2] for k in ("plan_basic", "plan_pro", "plan_team", "newsletter", "submit")] == [
        [270, 274], [380, 274], [490, 274], [140, 338], [140, 400]]


@pytest.mark.slow
def test_fill_in_and_submit_writes_json_and_shows_saved(form):
    app = form()
    app.type_into("name", ADA["name"])
    app.type_into("email", ADA["email"])
    app.click("plan_team")
    app.click("newsletter")
    app.click("submit")
    assert json.loads(_wait_for(app.out).read_text()) == {**ADA, "plan": "Team", "newsletter": True}
    assert "Saved" in app.wait_for_screen_text("Saved")
    saved = [w for w in ocr_words(app.screenshot()) if w.text == "Saved"]
    x, y, w, h = app.boxes["status"]
    assert len(saved) == 1 and x <= saved[0].center[0] and y <= saved[0].center[1] <= y + 60
    # The typed values are on screen too (the agent sees what it typed).
    seen = ocr_text(app.screenshot())
    assert "Ada Lovelace" in seen and "ada@example.com" in seen


@pytest.mark.slow
def test_keyboard_only_enter_submits(form):
    app = form()
    app.xdotool("type", "--delay", "5", "Ada Lovelace")  # Name has the focus at start
    app.xdotool("key", "Tab")
    app.xdotool("type", "--delay", "5", "ada@example.com")
    app.xdotool("key", "Return")
    assert json.loads(_wait_for(app.out).read_text()) == {**ADA, "plan": "Basic", "newsletter": False}


@pytest.mark.slow
def test_validation_shows_an_error_and_writes_nothing(form):
    app = form()
    app.click("submit")
    assert "Please enter your name" in app.wait_for_screen_text("Please enter your name")
    app.type_into("name", "Ada Lovelace")
    app.type_into("email", "ada@example")
    app.click("submit")
    assert "Please enter a valid email" in app.wait_for_screen_text("Please enter a valid email")
    assert not app.out.exists()
    app.type_into("email", ".com")
    app.click("submit")
    assert json.loads(_wait_for(app.out).read_text())["email"] == "ada@example.com"


@pytest.mark.parametrize("screen", [(1280, 800), (1024, 768), (800, 600)])
def test_seeded_layouts_stay_on_screen(screen):
    w, h = screen
    for seed in range(300):
        lay = seeded_layout(seed, screen)
        assert lay.width <= min(w, MAX_SEED_W) and lay.height <= min(h, MAX_SEED_H)
        assert 0 <= lay.x <= w - lay.width and 0 <= lay.y <= h - lay.height
    assert len({(seeded_layout(s, screen).x, seeded_layout(s, screen).rows) for s in range(20)}) >= 15


def inside(box, size) -> bool:
    x, y, w, h = box
    return x >= 0 and y >= 0 and x + w <= size[0] and y + h <= size[1]


def next_to(label, field) -> bool:
    """The label is left of its field, on the same row."""
    return label[0] + label[2] <= field[0] and abs((label[1] + label[3] / 2) - (field[1] + field[3] / 2)) <= 10


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2])
def test_layout_seed_moves_widgets_and_form_still_works(form, seed):
    fixed = form().boxes  # an unseeded instance for comparison
    again = form("--layout-seed", str(seed)).boxes
    app = form("--layout-seed", str(seed))  # last: its window is on top
    assert app.boxes == again  # deterministic per seed
    assert app.boxes["window"][:2] != fixed["window"][:2]
    assert app.boxes["name"][:2] != fixed["name"][:2] and app.boxes["submit"][:2] != fixed["submit"][:2]
    assert all(inside(b, (1280, 800)) for b in app.boxes.values())
    assert next_to(app.boxes["name_label"], app.boxes["name"])
    assert next_to(app.boxes["email_label"], app.boxes["email"])
    assert next_to(app.boxes["plan_label"], app.boxes["plan_basic"])
    app.type_into("name", ADA["name"])
    app.type_into("email", ADA["email"])
    app.click("plan_pro")
    app.click("submit")
    assert json.loads(_wait_for(app.out).read_text()) == {**ADA, "plan": "Pro", "newsletter": False}


@pytest.mark.slow
def test_seeded_layouts_differ_between_seeds_and_fit_a_small_screen(tmp_path):
    with Xvfb((1024, 768)) as x, Sandbox(display=x.display, workdir=tmp_path, cwd=tmp_path) as sb:
        boxes = [Form(sb, tmp_path, "--layout-seed", str(s)).boxes for s in (3, 4)]
    assert boxes[0] != boxes[1]
    assert all(inside(b, (1024, 768)) for bs in boxes for b in bs.values())


def test_bench_ocr_of_the_form_screen(benchmark, form):
    """OCR of a full 1280x800 screen with the form (run with --benchmark-only)."""
    shot = form().screenshot()
    words = benchmark.pedantic(ocr_words, args=(shot,), rounds=5, iterations=1)
    assert {"Registration", "Name", "Email", "Submit"} <= {w.text for w in words}
