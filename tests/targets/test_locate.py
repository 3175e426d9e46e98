"""agent.targets.locate on real screenshots of the form app under Xvfb: evidence, re-finding after the
window and widgets moved, another screen size and another DPI, ambiguity and absence."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from PIL import Image

from agent.targets.locate import Window, describe_target, find_target, search

pytestmark = pytest.mark.timeout(240)  # a hang fails the test instead of stalling CI
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
from bench_locate import screenshot  # noqa: E402  (the form's screenshots: the benchmark's, the same code)


@pytest.fixture(scope="module")
def screens(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("locate")
    size = (1280, 800)
    return {"fixed": screenshot(None, size, tmp), "seed3": screenshot(3, size, tmp), "seed7": screenshot(7, size, tmp),
            "small": screenshot(5, (1024, 768), tmp)}


def _centre(box):
    return box[0] + box[2] // 2, box[1] + box[3] // 2


def _inside(pixel, box, margin=2):
    return box[0] - margin <= pixel[0] < box[0] + box[2] + margin and box[1] - margin <= pixel[1] < box[1] + box[3] + margin


# Where a person clicks each widget: entries anywhere, radio and check boxes on their indicator.
def _click_point(boxes, widget):
    x, y, w, h = boxes[widget]
    return (x + 12, y + h // 2) if widget in ("plan_pro", "plan_team", "newsletter") else (x + w // 3, y + h // 2)


WIDGETS = ("name", "email", "plan_pro", "plan_team", "newsletter", "submit")


@pytest.mark.slow
def test_evidence_is_json_with_patch_context_anchors_text_and_window(screens):
    image, windows, boxes = screens["fixed"]
    ev = describe_target(image, _click_point(boxes, "email"), windows)
    assert json.loads(json.dumps(ev)) == ev  # it goes into steps.jsonl as is
    assert ev["window"]["title"] == "Registration"
    assert ev["patch"]["png"] and ev["context"]["png"]
    assert any(a["text"] == "Email" for a in ev["anchors"])  # the field's label, read by OCR
    submit = describe_target(image, _centre(boxes["submit"]), windows)
    assert submit["text"]["at"] == "Submit"


def test_windows_are_listed_with_their_geometry(screens):
    image, windows, boxes = screens["fixed"]
    reg = [w for w in windows if w.title == "Registration"]
    assert len(reg) == 1 and (reg[0].x, reg[0].y, reg[0].width, reg[0].height) == tuple(boxes["window"])


@pytest.mark.slow
@pytest.mark.parametrize("screen", ["fixed", "seed3", "seed7", "small"])
def test_every_widget_is_found_again_where_it_moved(screens, screen):
    image0, windows0, boxes0 = screens["fixed"]
    image, windows, boxes = screens[screen]
    for widget in WIDGETS:
        ev = describe_target(image0, _click_point(boxes0, widget), windows0)
        match = find_target(ev, image, windows)
        assert match is not None, f"{widget} not found on {screen}"
        assert _inside(match.pixel, boxes[widget]), f"{widget} on {screen}: {match}"
        assert match.score >= 0.62


@pytest.mark.slow
def test_a_different_dpi_is_matched_across_scales(screens):
    image0, windows0, boxes0 = screens["fixed"]
    ev = describe_target(image0, _centre(boxes0["submit"]), windows0)
    factor = 1.25
    bigger = image0.resize((round(image0.width * factor), round(image0.height * factor)), Image.Resampling.LANCZOS)
    scaled = [Window(0, w.title, round(w.x * factor), round(w.y * factor), round(w.width * factor),
                     round(w.height * factor)) for w in windows0]
    match = find_target(ev, bigger, scaled)
    box = [round(v * factor) for v in boxes0["submit"]]
    assert match is not None and _inside(match.pixel, box)
    assert match.scale == pytest.approx(factor)


def test_windows_may_be_plain_dicts(screens):
    image, windows, boxes = screens["fixed"]
    as_dicts = [{"title": w.title, "x": w.x, "y": w.y, "width": w.width, "height": w.height} for w in windows]
    ev = describe_target(image, _centre(boxes["submit"]), as_dicts)
    assert ev["window"]["title"] == "Registration"
    assert find_target(ev, image, as_dicts) is not None


def test_two_equally_good_places_are_reported_as_ambiguous(screens):
    """The same field twice on screen, and evidence without the label that tells them apart."""
    image, windows, boxes = screens["fixed"]
    x, y, w, h = boxes["email"]
    ev = describe_target(image, _click_point(boxes, "email"), windows)
    twice = image.copy()
    twice.paste(image.crop((x - 30, y - 30, x + w + 30, y + h + 30)), (700, 600))
    blind = {**ev, "anchors": [], "context": ev["patch"], "window": None}
    found = search(blind, twice, [])
    assert found.match is None
    assert "ambiguous" in found.reason
    # Its label (an anchor) says which one is the Email field.
    assert _inside(find_target(ev, twice, windows).pixel, boxes["email"])


@pytest.mark.slow
def test_a_target_that_is_not_on_screen_is_not_found(screens):
    image, windows, boxes = screens["fixed"]
    ev = describe_target(image, _centre(boxes["submit"]), windows)
    blank = Image.new("RGB", image.size, (40, 40, 40))
    found = search(ev, blank, [])
    assert found.match is None
    assert "'Submit' not found" in found.reason


@pytest.mark.slow
def test_when_no_image_matches_the_text_at_the_target_is_found_by_ocr(screens):
    """A restyled button (here: its images replaced by noise) is still found by its text."""
    import numpy as np

    from agent.targets.locate import _encode

    image0, windows0, boxes0 = screens["fixed"]
    image, windows, boxes = screens["seed3"]
    ev = describe_target(image0, _centre(boxes0["submit"]), windows0)
    noise = np.random.default_rng(0).integers(0, 255, (48, 112), dtype=np.uint8)
    restyled = {**ev, "patch": {"png": _encode(noise), "at": [56, 24]},
                "context": {"png": _encode(noise), "at": [56, 24]}, "anchors": []}
    match = find_target(restyled, image, windows)
    assert match is not None and match.method == "ocr"
    assert _inside(match.pixel, boxes["submit"])


def test_the_window_under_a_point_is_estimated_from_a_screenshot_alone(screens):
    """Agent traces keep no window list; replay guesses it so templates keep off the desktop."""
    import numpy as np

    from agent.targets.locate import estimate_window

    for key in ("fixed", "seed7", "small"):
        image, windows, boxes = screens[key]
        win = estimate_window(image, _centre(boxes["email"]))
        got = (win.x, win.y, win.width, win.height)
        assert all(abs(a - b) <= 1 for a, b in zip(got, boxes["window"])), (got, boxes["window"])
    wallpaper = Image.fromarray(np.random.default_rng(1).integers(0, 255, (200, 300, 3), dtype=np.uint8))
    assert estimate_window(wallpaper, (150, 100)) is None
