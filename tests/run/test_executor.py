"""execute(): each action kind lands where and as expected, on a real Xvfb with the real Echo app."""
from __future__ import annotations

import pytest

from actions.schema import ACTION_ADAPTER, ACTION_NAMES
from agent.desktop.x11 import X11Desktop
from agent.errors import Aborted
from agent.run.executor import TYPE_CHUNK_CHARS, Outcome, execute, screen_point
from fakes import RecordingDesktop
from x11_echo import Echo, of, text_value, xdotool, xvfb

SCREEN = (1280, 800)
HOME = (640, 400)


def act(**fields):
    return ACTION_ADAPTER.validate_python(fields)


@pytest.fixture(scope="module")
def desktop():
    with xvfb(SCREEN) as name:
        d = X11Desktop(name)
        yield d
        d.close()


@pytest.fixture(scope="module")
def echo(desktop, tmp_path_factory):
    app = Echo(desktop.display, tmp_path_factory.mktemp("echo") / "events.jsonl")
    yield app
    app.close()


@pytest.fixture(autouse=True)
def pointer_home(desktop):
    xdotool(desktop.display, "mousemove", *map(str, HOME))


def run(echo, desktop, action, frame=SCREEN):
    """Execute and return (outcome, the events it caused)."""
    since = echo.mark()
    outcome = execute(action, desktop, frame)
    return outcome, echo.collect(desktop, since)


def presses(events):
    return [(e["button"], e["x"], e["y"]) for e in of(events, "press")]


@pytest.mark.parametrize("coord, pixel", [
    ([500, 500], (640, 400)),
    ([250, 750], (320, 600)),
    ([1000, 500], (1279, 400)),   # 1000 is the last pixel, not one past it
    ([500, 1000], (640, 799)),
    ([0, 0], (2, 2)),             # corners are nudged inward: the model never trips the fail-safe
    ([1000, 1000], (1277, 797)),
    ([0, 1000], (2, 797)),
])
@pytest.mark.slow
def test_left_click_lands_on_the_mapped_pixel(desktop, echo, coord, pixel):
    outcome, events = run(echo, desktop, act(action="left_click", coordinate=coord))
    assert outcome == Outcome(pixel=pixel)
    assert presses(events) == [(1, *pixel)]
    desktop.check_abort()  # still not aborted


@pytest.mark.parametrize("kind, button, count, multi", [
    ("right_click", 3, 1, None), ("middle_click", 2, 1, None),
    ("double_click", 1, 2, "double"), ("triple_click", 1, 3, "triple"),
])
def test_click_kinds(desktop, echo, kind, button, count, multi):
    outcome, events = run(echo, desktop, act(action=kind, coordinate=[300, 800]))
    assert presses(events) == [(button, 384, 640)] * count
    if multi:
        assert [(e["x"], e["y"]) for e in of(events, multi)] == [(384, 640)]


def test_click_without_coordinate_clicks_where_the_pointer_is(desktop, echo):
    outcome, events = run(echo, desktop, act(action="left_click"))
    assert outcome.pixel == HOME and presses(events) == [(1, *HOME)]


def test_mouse_move(desktop, echo):
    outcome, events = run(echo, desktop, act(action="mouse_move", coordinate=[100, 900]))
    assert outcome.pixel == (128, 720) == desktop.position()
    assert presses(events) == []


def test_drag_from_start_coordinate(desktop, echo):
    outcome, events = run(echo, desktop, act(action="left_click_drag", start_coordinate=[100, 200], coordinate=[800, 900]))
    assert outcome == Outcome(pixel=(1024, 720), start_pixel=(128, 160))
    assert of(events, "drag") == [{"event": "drag", "button": 1, "from": [128, 160], "to": [1024, 720]}]


def test_drag_from_the_pointer(desktop, echo):
    outcome, events = run(echo, desktop, act(action="left_click_drag", coordinate=[900, 900]))
    assert outcome.start_pixel == HOME
    assert of(events, "drag")[0]["from"] == list(HOME) and of(events, "drag")[0]["to"] == [1152, 720]


@pytest.mark.parametrize("kind, pixels, directions", [
    ("scroll", 200, ["up", "up"]), ("scroll", -300, ["down"] * 3),
    ("hscroll", 100, ["right"]), ("hscroll", -200, ["left", "left"]),
])
def test_scroll_direction_moves_to_the_coordinate_first(desktop, echo, kind, pixels, directions):
    outcome, events = run(echo, desktop, act(action=kind, pixels=pixels, coordinate=[750, 250]))
    assert outcome.pixel == (960, 200)
    assert [(w["direction"], w["x"], w["y"]) for w in of(events, "wheel")] == [(d, 960, 200) for d in directions]


def test_scroll_without_coordinate_scrolls_where_the_pointer_is(desktop, echo):
    outcome, events = run(echo, desktop, act(action="scroll", pixels=-100))
    assert outcome.pixel == HOME and [(w["x"], w["y"]) for w in of(events, "wheel")] == [HOME]


def test_key_chord_arrives(desktop, echo):
    _, events = run(echo, desktop, act(action="key", keys=["Control", "A"]))  # aliases and case normalized
    keys = of(events, "key")
    assert keys[-1]["keysym"] == "a" and keys[-1]["ctrl"] is True


@pytest.mark.slow
@pytest.mark.parametrize("text", ["Zoë – 日本語 ✓", "x<y> (a) & b",
                                  "The quick brown fox jumps over the lazy dog, Zoë said; 0123456789 – done ✓."])
def test_type_arrives_intact(desktop, echo, text):
    echo.clear_text(desktop)
    outcome, events = run(echo, desktop, act(action="type", text=text))
    assert outcome == Outcome() and text_value(events) == text


def test_hidpi_frame_is_scaled_to_the_screen(desktop, echo):
    # The model saw a 2x frame (2560x1600): the same relative spot lands on the same screen pixel.
    outcome, events = run(echo, desktop, act(action="left_click", coordinate=[500, 500]), frame=(2560, 1600))
    assert outcome.pixel == (640, 400) and presses(events) == [(1, 640, 400)]


@pytest.mark.parametrize("action", [dict(action="wait", time=0.05), dict(action="terminate", status="success"),
                                    dict(action="answer", text="42")])
def test_actions_that_do_nothing_on_the_desktop(desktop, echo, action):
    outcome, events = run(echo, desktop, act(**action))
    assert outcome == Outcome() and events == []


def test_execute_aborts_when_a_person_holds_a_corner(desktop, echo):
    xdotool(desktop.display, "mousemove", "0", "0")
    since = echo.mark()
    with pytest.raises(Aborted):
        execute(act(action="left_click", coordinate=[500, 500]), desktop, SCREEN)
    xdotool(desktop.display, "mousemove", *map(str, HOME))
    assert presses(echo.collect(desktop, since)) == []  # nothing was clicked


# --- pure mapping and dispatch, no display needed ---

@pytest.mark.parametrize("coord, frame, screen, expected", [
    ((500, 500), (1280, 800), (1280, 800), (640, 400)),
    ((1000, 1000), (1280, 800), (1280, 800), (1277, 797)),
    ((999.3, 0), (2560, 1600), (1280, 800), (1277, 2)),   # frame (2558, 0) -> screen corner: nudged again
    ((500, 500), (1920, 1080), (1280, 720), (640, 360)),  # the frame was resized for the model
    ((1000, 500), (640, 400), (1280, 800), (1279, 401)),  # a frame pixel covers 2x2 screen pixels: its centre
])
def test_screen_point(coord, frame, screen, expected):
    assert screen_point(coord, frame, screen) == expected


def test_long_text_is_typed_in_chunks_with_abort_checks_between():
    fake = RecordingDesktop(size=(100, 100))
    text = "a" * (2 * TYPE_CHUNK_CHARS + 7)
    execute(act(action="type", text=text), fake, (100, 100))
    typed = [args[0] for name, args, _ in fake.calls if name == "type"]
    assert "".join(typed) == text and [len(t) for t in typed] == [TYPE_CHUNK_CHARS, TYPE_CHUNK_CHARS, 7]
    assert [name for name, _, _ in fake.calls].count("check_abort") == 3  # once up front, once per later chunk


def test_every_action_kind_is_dispatched():
    samples = {"key": dict(keys=["a"]), "type": dict(text="a"), "mouse_move": dict(coordinate=[1, 1]),
               "left_click_drag": dict(coordinate=[1, 1]), "scroll": dict(pixels=1), "hscroll": dict(pixels=1),
               "wait": dict(time=0), "terminate": dict(status="failure"), "answer": dict(text=""),
               "ask_user": dict(text="?")}
    for name in ACTION_NAMES:
        outcome = execute(act(action=name, **samples.get(name, {})), RecordingDesktop(size=(100, 100)), (100, 100))
        assert isinstance(outcome, Outcome)
