"""X11Desktop on a real Xvfb with real pyautogui/xdotool input into the real Echo app."""
from __future__ import annotations

import os

import pytest
from PIL import Image

from agent.desktop.x11 import PIXELS_PER_WHEEL_CLICK, SETTLE_MAX_S, X11Desktop, _runs, wheel_clicks
from agent.desktop.keysym_typing import keysym, pieces
from agent.errors import Aborted, VlagentError
from x11_echo import Echo, of, text_value, xdotool, xvfb

SCREEN = (1280, 800)
CENTRE = (640, 400)
NON_ASCII = "Zoë – 日本語 ✓"


@pytest.fixture(scope="module")
def display():
    with xvfb(SCREEN) as name:
        yield name


@pytest.fixture(scope="module")
def desktop(display):
    d = X11Desktop(display)
    yield d
    d.close()


@pytest.fixture(scope="module")
def echo(display, desktop, tmp_path_factory):
    app = Echo(display, tmp_path_factory.mktemp("echo") / "events.jsonl")
    yield app
    app.close()


@pytest.fixture(autouse=True)
def pointer_home(request):
    """Each test starts with the pointer in the middle, clear of the fail-safe corners."""
    if "desktop" in request.fixturenames:
        d = request.getfixturevalue("desktop")
        xdotool(d.display, "mousemove", *map(str, CENTRE))


def test_capture_is_an_rgb_frame_of_the_screen(desktop, echo):
    frame = desktop.capture()
    assert frame.mode == "RGB"
    assert frame.size == desktop.size() == SCREEN == (echo.ready["width"], echo.ready["height"])
    assert frame.getpixel(CENTRE) == (255, 255, 255)  # the Echo canvas is white


@pytest.mark.parametrize("button, number", [("left", 1), ("middle", 2), ("right", 3)])
def test_click_lands_on_the_pixel(desktop, echo, button, number):
    since = echo.mark()
    desktop.click(321, 456, button=button)
    presses = of(echo.collect(desktop, since), "press")
    assert presses == [{"event": "press", "button": number, "x": 321, "y": 456}]


def test_click_without_coordinates_uses_the_pointer(desktop, echo):
    desktop.move(700, 500)
    since = echo.mark()
    desktop.click(None, None)
    assert desktop.position() == (700, 500)
    assert of(echo.collect(desktop, since), "press") == [{"event": "press", "button": 1, "x": 700, "y": 500}]


def test_double_and_triple_click(desktop, echo):
    since = echo.mark()
    desktop.click(200, 600, clicks=2)
    events = echo.collect(desktop, since)
    assert len(of(events, "press")) == 2 and of(events, "double")[0]["x"] == 200
    since = echo.mark()
    desktop.click(900, 650, clicks=3)
    events = echo.collect(desktop, since)
    assert len(of(events, "press")) == 3 and of(events, "triple")[0]["y"] == 650


def test_drag_from_start_to_end(desktop, echo):
    since = echo.mark()
    desktop.drag(100, 200, 900, 700)
    events = echo.collect(desktop, since)
    assert of(events, "drag") == [{"event": "drag", "button": 1, "from": [100, 200], "to": [900, 700]}]
    assert desktop.position() == (900, 700)


@pytest.mark.parametrize("pixels, horizontal, expected", [
    (300, False, ["up"] * 3), (-100, False, ["down"]), (200, True, ["right"] * 2), (-40, True, ["left"]),
])
def test_scroll_direction_and_amount(desktop, echo, pixels, horizontal, expected):
    since = echo.mark()
    desktop.scroll(pixels, 500, 300, horizontal=horizontal)
    wheel = of(echo.collect(desktop, since), "wheel")
    assert [w["direction"] for w in wheel] == expected
    assert {(w["x"], w["y"]) for w in wheel} == {(500, 300)}


def test_wheel_clicks_convention():
    assert wheel_clicks(0) == 0
    assert wheel_clicks(PIXELS_PER_WHEEL_CLICK) == 1
    assert wheel_clicks(-3 * PIXELS_PER_WHEEL_CLICK) == -3
    assert wheel_clicks(1) == 1 and wheel_clicks(-1) == -1  # any nonzero scroll moves something


def test_chord_arrives_with_its_modifier(desktop, echo):
    since = echo.mark()
    desktop.key(["ctrl", "a"])
    keys = of(echo.collect(desktop, since), "key")
    assert [(k["keysym"], k["ctrl"]) for k in keys] == [("Control_L", False), ("a", True)]


def test_key_that_cannot_be_pressed_is_an_error_not_a_silent_skip(desktop):
    with pytest.raises(VlagentError, match="cannot be pressed"):
        desktop.key(["browserback"])  # a valid pyautogui name with no key code on X11


def test_non_ascii_text_arrives_intact(desktop, echo):
    echo.clear_text(desktop)
    since = echo.mark()
    desktop.type(NON_ASCII)
    assert text_value(echo.collect(desktop, since)) == NON_ASCII


def test_every_printable_ascii_character_arrives_intact(desktop, echo):
    text = "".join(map(chr, range(0x20, 0x7F)))  # pyautogui alone types '<' as '>' on Xvfb
    echo.clear_text(desktop)
    since = echo.mark()
    desktop.type(text)
    assert text_value(echo.collect(desktop, since)) == text


@pytest.mark.slow
def test_more_distinct_characters_than_spare_keycodes_arrive_intact(desktop, echo):
    text = "".join(map(chr, range(0x4E00, 0x4E00 + len(desktop._typer.spare) + 12)))  # forces rebinding
    echo.clear_text(desktop)
    since = echo.mark()
    desktop.type(text)
    assert text_value(echo.collect(desktop, since)) == text


def test_text_helpers():
    assert _runs("Zoë!", frozenset("Zo!")) == [(True, "Zo"), (False, "ë"), (True, "!")]
    assert _runs("", frozenset("a")) == []
    assert pieces("abcabd", 3) == ["abcab", "d"] and pieces("", 3) == []
    assert (keysym("a"), keysym("ë"), keysym("日")) == (0x61, 0xEB, 0x1000000 + 0x65E5)


def test_wait_stable_returns_once_the_screen_is_still(desktop, echo):
    waited = desktop.wait_stable(max_s=30.0)
    assert 0 <= waited < 30.0  # a still screen settles without hitting the bound
    assert desktop.wait_stable(max_s=0.0) < SETTLE_MAX_S  # bounded even when told not to wait



def test_the_stable_frame_settling_grabbed_is_the_next_observation(desktop, echo):
    desktop.wait_stable(max_s=30.0)
    stable = desktop._settled[0]
    desktop.check_abort()  # reading the pointer (the loop does before each capture) is no input
    desktop.window_at(*CENTRE)
    assert desktop._settled is not None and desktop._settled[0] is stable
    frame = desktop.capture()  # no second grab: the very frame settling saw
    assert frame.tobytes() == Image.frombytes("RGB", stable.size, bytes(stable.bgra), "raw", "BGRX").tobytes()
    assert desktop._settled is None  # used once
    desktop.wait_stable(max_s=30.0)
    desktop.move(300, 300)  # input may change the screen: the next capture grabs anew
    assert desktop._settled is None

def test_settling_shows_each_new_frame_and_the_next_observation_is_the_last_shown(desktop, echo):
    """What the lookahead relies on (agent/run/lookahead.py): wait_stable hands over each new frame
    as capture() will return it, and the frame it settles on is the last one handed over."""
    shown = []
    desktop.click(*CENTRE)  # the echo app logs the click: the screen changes
    desktop.wait_stable(max_s=30.0, seen=shown.append)
    frame = desktop.capture()
    assert shown and all(im.size == frame.size and im.mode == "RGB" for im in shown)
    assert frame.tobytes() == shown[-1].tobytes()
    desktop.masker = lambda im: im  # a desktop that masks frames shows none ahead (the model sees masked ones)
    try:
        shown.clear()
        desktop.click(*CENTRE)
        desktop.wait_stable(max_s=30.0, seen=shown.append)
        assert shown == []
    finally:
        desktop.masker = None


@pytest.mark.parametrize("corner", ["top_left", "top_right", "bottom_left", "bottom_right"])
def test_person_pushing_the_pointer_into_a_corner_aborts(desktop, echo, corner):
    w, h = desktop.size()
    x, y = {"top_left": (0, 0), "top_right": (w - 1, 0), "bottom_left": (0, h - 1), "bottom_right": (w - 1, h - 1)}[corner]
    desktop.check_abort()  # pointer in the middle: nothing happens
    xdotool(desktop.display, "mousemove", str(x), str(y))  # the person, from outside this process
    with pytest.raises(Aborted, match="aborted by the user"):
        desktop.check_abort()
    with pytest.raises(Aborted):  # pyautogui's own fail-safe, translated
        desktop.click(300, 300)


def test_pixels_next_to_a_corner_do_not_abort(desktop, echo):
    since = echo.mark()
    desktop.click(2, 797)
    desktop.check_abort()
    assert of(echo.collect(desktop, since), "press")[0]["x"] == 2


@pytest.mark.slow
def test_two_desktops_in_one_process_each_drive_their_own_display(desktop, echo, tmp_path):
    small = (800, 600)
    with xvfb(small) as other:
        second = X11Desktop(other)
        echo2 = Echo(other, tmp_path / "events2.jsonl")
        try:
            assert second.size() == small and desktop.size() == SCREEN
            for _ in range(2):  # interleaved: each call re-binds pyautogui to its own display
                m1, m2 = echo.mark(), echo2.mark()
                desktop.click(1000, 700)
                second.click(100, 50)
                second.type(NON_ASCII)
                assert of(echo.collect(desktop, m1), "press") == [{"event": "press", "button": 1, "x": 1000, "y": 700}]
                events2 = echo2.collect(second, m2)
                assert [(p["x"], p["y"]) for p in of(events2, "press")] == [(100, 50)]
                assert text_value(events2).endswith(NON_ASCII)
            assert second.capture().size == small
            # the fail-safe corners follow each display's own size
            xdotool(other, "mousemove", "799", "599")
            with pytest.raises(Aborted):
                second.click(10, 10)
            desktop.move(799, 599)
            desktop.check_abort()  # not a corner of the big screen
        finally:
            echo2.close()
            second.close()


def _free_display() -> str:
    """A display number nobody serves (high, so other test runs' Xvfbs do not take it meanwhile)."""
    for n in range(4000, 5000):
        if not os.path.exists(f"/tmp/.X11-unix/X{n}") and not os.path.exists(f"/tmp/.X{n}-lock"):
            return f":{n}"
    pytest.skip("no free display number")


def test_missing_display_is_one_clear_line():
    name = _free_display()
    with pytest.raises(VlagentError) as err:
        X11Desktop(name)
    assert str(err.value).startswith(f"cannot open display {name}: ")
    assert "\n" not in str(err.value)


def test_display_dying_mid_run_is_a_vlagent_error(tmp_path):
    with xvfb((320, 200)) as name:
        d = X11Desktop(name)
        d.capture()
    calls = (d.capture, lambda: d.click(10, 10), d.position, lambda: d.key(["a"]), lambda: d.type("é"),
             d.wait_stable, d.check_abort)
    for call in calls:
        with pytest.raises(VlagentError) as err:
            call()
        assert "\n" not in str(err.value) and name in str(err.value)
    d.close()  # closing what is left of a dead display does not raise


@pytest.mark.slow
def test_two_desktops_on_one_display_share_spare_keycodes(display, desktop, echo):
    from Xlib.display import Display

    echo.clear_text(desktop)
    desktop.type(NON_ASCII)  # the module's desktop binds some spare keycodes
    with X11Desktop(display) as other:
        assert other._typer.spare == desktop._typer.spare  # claimed ones count as spare
        other.type("ĀāĂ" + NON_ASCII[::-1])  # rebinds keycodes the first desktop holds
        used = list(other._typer.bound.values())
    x = Display(display)
    first = min(used)
    table = x.get_keyboard_mapping(first, max(used) - first + 1)
    x.close()
    assert all(not any(table[code - first]) for code in used)  # unbound again on close
    echo.clear_text(desktop)
    since = echo.mark()
    desktop.type(NON_ASCII)  # the first desktop notices its bindings were changed and rebinds
    assert text_value(echo.collect(desktop, since)) == NON_ASCII


def test_missing_xauthority_is_created(tmp_path, monkeypatch):
    path = tmp_path / "Xauthority"
    monkeypatch.setenv("XAUTHORITY", str(path))
    with xvfb((320, 200)) as name:
        X11Desktop(name).close()
    assert path.exists()


# --- speed (skipped by default: run with `pytest tests/desktop/test_desktop.py --benchmark-only`) ---

def test_bench_capture(benchmark, desktop):
    assert benchmark(desktop.capture).size == SCREEN


def test_bench_click(benchmark, desktop, echo):
    benchmark(desktop.click, 500, 500)
    assert desktop.position() == (500, 500)


def test_bench_type_50_ascii_chars(benchmark, desktop, echo):
    benchmark(desktop.type, "abcdefghij" * 5)
    echo.clear_text(desktop)
    assert echo.proc.poll() is None


def test_bench_type_10_non_ascii_chars(benchmark, desktop, echo):
    benchmark(desktop.type, "日本語✓ëéèàüö")
    echo.clear_text(desktop)
    assert echo.proc.poll() is None


def test_bench_wait_stable_on_a_still_screen(benchmark, desktop):
    assert benchmark(desktop.wait_stable) < SETTLE_MAX_S
