"""CPU-side speed of a step, with pytest-benchmark (skipped in the normal run by --benchmark-skip).

Run:  pytest tests/backends/test_cpu_speed.py -o addopts="" --benchmark-only
Targets (issue 3): capture + preprocessing of a 1920x1080 frame <= 30 ms, parse + policy <= 1 ms,
loop overhead per step (outside the model and the action) <= 20 ms. See docs/performance.md.
"""
from __future__ import annotations

import shutil

import pytest
from PIL import Image, ImageDraw

from actions import Policy, check_reply
from agent.backends.base import BackendBase
from agent.trace import Trace

FULL_HD = (1920, 1080)
REPLY = ('Thought: the Submit button is at the bottom.\n<tool_call>\n{"name": "computer_use", "arguments": '
         '{"action": "left_click", "coordinate": [512, 873]}}\n</tool_call>')


def gui_frame(size=FULL_HD, seed=0) -> Image.Image:
    """A desktop-like frame: flat panels, text-sized boxes (PNG and resize costs like a real screen)."""
    import random
    rng = random.Random(seed)
    img = Image.new("RGB", size, (236, 236, 236))
    d = ImageDraw.Draw(img)
    for _ in range(400):
        x, y = rng.randrange(size[0] - 60), rng.randrange(size[1] - 20)
        d.rectangle([x, y, x + rng.randrange(8, 60), y + rng.randrange(6, 20)], fill=tuple(rng.randrange(256) for _ in "rgb"))
    return img


@pytest.fixture(scope="module")
def display():
    if shutil.which("Xvfb") is None:
        pytest.skip("Xvfb not installed")
    from sandbox.display import Xvfb
    with Xvfb(FULL_HD) as x:
        yield x.display


@pytest.fixture(scope="module")
def desktop(display):
    from pathlib import Path
    (Path.home() / ".Xauthority").touch(exist_ok=True)
    from agent.desktop.x11 import X11Desktop
    with X11Desktop(display) as d:
        yield d


@pytest.fixture(scope="module")
def image_processor():
    pytest.importorskip("transformers")
    from transformers import AutoImageProcessor
    from agent.backends.tiny import tiny_checkpoint  # the real model's preprocessor config
    return AutoImageProcessor.from_pretrained(tiny_checkpoint())


def test_capture_1080p(benchmark, desktop):
    frame = benchmark(desktop.capture)
    assert frame.size == FULL_HD


def test_preprocess_1080p(benchmark, image_processor):
    frame = gui_frame()
    out = benchmark(lambda: image_processor(images=[frame], return_tensors="pt"))
    assert out["image_grid_thw"].tolist() == [[1, 68, 120]]  # 1920x1088 in 16 px patches


def test_capture_and_preprocess_1080p(benchmark, desktop, image_processor):
    def step():
        return image_processor(images=[desktop.capture()], return_tensors="pt")
    out = benchmark(step)
    assert out["pixel_values"].shape == (68 * 120, 3 * 2 * 16 * 16)


def test_parse_and_policy(benchmark):
    policy = Policy()
    action = benchmark(check_reply, REPLY, policy)
    assert action.action == "left_click" and list(action.coordinate) == [512, 873]


class InstantDesktop:
    """The Desktop protocol with instant capture and no-op input: what is left is the loop's own work."""

    display = ":instant"

    def __init__(self):
        self.frame = gui_frame()

    def capture(self):
        return self.frame

    def size(self):
        return FULL_HD

    def position(self):
        return (0, 0)

    def move(self, x, y): ...
    def click(self, x, y, button="left", clicks=1): ...
    def drag(self, x0, y0, x1, y1): ...
    def scroll(self, pixels, x=None, y=None, horizontal=False): ...
    def key(self, keys): ...
    def type(self, text): ...
    def check_abort(self): ...

    def wait_stable(self, max_s=2.0, seen=None):
        return 0.0


class InstantModel(BackendBase):
    """Replies at once: clicks that move around (so the loop detector stays quiet), then terminate."""

    name = "instant"

    def __init__(self, steps: int):
        self.n, self.steps = 0, steps

    def generate(self, messages, policy=None):
        self.n += 1
        if self.n >= self.steps:
            return '<tool_call>\n{"name": "computer_use", "arguments": {"action": "terminate", "status": "success"}}\n</tool_call>'
        return ('<tool_call>\n{"name": "computer_use", "arguments": {"action": "left_click", '
                f'"coordinate": [{100 + 7 * self.n}, {200 + 3 * self.n}]}}}}\n</tool_call>')


STEPS = 10


def test_loop_overhead_per_step(benchmark, tmp_path):
    """Per step: prompt rendering, trace writing (the screenshot PNG included), parsing, policy."""
    from agent.run.loop import LoopConfig, run_loop
    runs = iter(range(1000))

    def episode():
        trace = Trace(tmp_path / f"run{next(runs)}")
        return run_loop("Fill in the form.", InstantModel(STEPS), InstantDesktop(), Policy(), trace,
                        LoopConfig(max_steps=STEPS + 1, timeout_s=60)), trace

    end, trace = benchmark.pedantic(episode, rounds=3, iterations=1, warmup_rounds=1)
    benchmark.extra_info["steps_per_round"] = STEPS
    assert end.kind == "terminated" and len(trace.steps) == STEPS
    assert all(s.action is not None and s.error is None for s in trace.steps)
