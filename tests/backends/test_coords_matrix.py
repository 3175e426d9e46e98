"""Coordinates are exact under every scaling (issue 24 item 4): for each screen size, HiDPI factor,
--max-pixels and model family convention, the point a model proposes lands within 1 px of where
that point is on the screen."""
from __future__ import annotations


import pytest
from PIL import Image

from actions import Policy, check_reply
from agent.backends.families import family
from agent.run.executor import screen_point
from agent.run.history import fit_pixels

pytestmark = pytest.mark.slow  # starts displays, apps or models

SCREENS = [(1280, 800), (1366, 768), (1920, 1080), (2560, 1440), (3840, 2160)]
HIDPI = [1.0, 1.25, 1.5, 2.0]  # the captured frame is this many times the screen that input addresses
MAX_PIXELS = [None, 1_000_000, 300_000]  # what the model sees; its coordinates are relative to that image
REPLY = {  # a click at (x, y) in each family's own words and range
    "qwen3-vl": lambda x, y: f'<tool_call>\n{{"name": "computer_use", "arguments": {{"action": "left_click", "coordinate": [{x}, {y}]}}}}\n</tool_call>',
    "gui-owl-1.5": lambda x, y: f'Action: click.\n<tool_call>\n{{"name": "computer_use", "arguments": {{"action": "left_click", "coordinate": [{x}, {y}]}}}}\n</tool_call>',
    "mai-ui": lambda x, y: f'<tool_call>\n{{"name": "mobile_use", "arguments": {{"action": "click", "coordinate": [{x}, {y}]}}}}\n</tool_call>',
    "ui-venus-1.5": lambda x, y: f"<think></think>\n<action>Click(box=({x},{y}))</action>\n<conclusion></conclusion>",
}


@pytest.mark.parametrize("hidpi", HIDPI)
@pytest.mark.parametrize("name", list(REPLY))
@pytest.mark.parametrize("screen", SCREENS)
def test_a_proposed_point_lands_within_one_pixel(name, screen, hidpi):
    """x / scale * width is the pixel the point names (Qwen's convention); the pixel clicked is within 1 px."""
    fam = family(name)
    sw, sh = screen
    frame = (round(sw * hidpi), round(sh * hidpi))
    for max_pixels in MAX_PIXELS[:1] if hidpi != 1.0 else MAX_PIXELS:
        seen = fit_pixels(Image.new("RGB", frame), max_pixels).size  # the image the model answers about
        assert seen[0] <= frame[0]  # relative coordinates: the landing does not depend on it
        for v in range(3, fam.scale + 1, 3):  # every third point of the family's range
            vx, vy = v, fam.scale - v
            action = check_reply(fam.to_native(REPLY[name](vx, vy)), Policy())
            px = screen_point(action.coordinate, frame, screen)
            want = (min(vx / fam.scale * sw, sw - 1), min(vy / fam.scale * sh, sh - 1))
            err = max(abs(px[0] - want[0]), abs(px[1] - want[1]))
            edge = lambda c: c <= 2 or c >= fam.scale - 2  # noqa: E731
            if not (edge(vx) and edge(vy)):  # corners are nudged 2 px inward on purpose (pyautogui's fail-safe)
                assert err <= 1.0, (name, screen, hidpi, max_pixels, (vx, vy), px, want)
