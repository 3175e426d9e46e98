"""agent.desktop.change.as_after: the share of a recorded change that shows now."""
from __future__ import annotations

from PIL import Image, ImageChops, ImageDraw

from agent.desktop.change import as_after


def checkbox(ticked: bool, at=(100, 100)) -> Image.Image:
    """A light screen with a checkbox whose tick is a few thin strokes (what a 1 px shift breaks)."""
    image = Image.new("RGB", (320, 240), (240, 240, 240))
    d = ImageDraw.Draw(image)
    x, y = at
    d.rectangle((x, y, x + 16, y + 16), outline=(60, 60, 60))
    if ticked:
        d.line((x + 3, y + 8, x + 7, y + 13, x + 13, y + 3), fill=(20, 20, 20), width=2)
    d.text((x + 24, y + 2), "Subscribe", fill=(20, 20, 20))
    return image


def test_a_tick_a_pixel_or_two_away_is_the_recorded_effect():
    before, after = checkbox(False), checkbox(True)
    assert as_after(before, after, after) == 1.0
    for dx, dy in [(1, 0), (0, 1), (1, 1), (-2, 1)]:
        now = ImageChops.offset(after, dx, dy)  # the window moved by a pixel or two since recording
        assert as_after(before, after, now, shift=0) < 0.75  # compared in place it looks like no effect
        assert as_after(before, after, now) > 0.95


def test_a_missing_tick_is_not_found_by_shifting():
    before, after = checkbox(False), checkbox(True)
    for dx, dy in [(0, 0), (1, 0), (2, 2)]:
        assert as_after(before, after, ImageChops.offset(before, dx, dy)) < 0.5


def test_the_tick_of_another_checkbox_is_not_this_one():
    before, after = checkbox(False), checkbox(True)
    elsewhere = checkbox(True, at=(100, 140))  # the neighbour ticked: 40 px below
    assert as_after(before, after, elsewhere) < 0.5
