"""Run one validated action on a Desktop.

The model's coordinates are 0..1000 relative to the frame it saw (`frame_size`); they become
pixels of that frame (actions.coords.to_pixels: clamped, corners nudged inward) and are then scaled
to the screen that input events address (desktop.size()), which differs from the frame on HiDPI
setups or when frames are downscaled before the model sees them.

Scroll convention (Qwen's computer_use): `pixels` > 0 scrolls up (scroll) or right (hscroll);
the desktop turns pixels into wheel clicks (agent.desktop.x11.PIXELS_PER_WHEEL_CLICK px each).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from actions.coords import SCALE, to_pixels
from actions.policy import normalize_chord
from actions.schema import Action, Coordinate
from agent import secrets
from agent.desktop.base import Button, Desktop

WAIT_POLL_S = 0.25  # how often a `wait` looks for a person's abort
TYPE_CHUNK_CHARS = 50  # long text goes in chunks, with an abort check between (as Anthropic's demo)
CLICKS = {"left_click": ("left", 1), "right_click": ("right", 1), "middle_click": ("middle", 1),
          "double_click": ("left", 2), "triple_click": ("left", 3)}

Pixel = tuple[int, int]


@dataclass(frozen=True)
class Outcome:
    """Where an action acted, in screen pixels: `pixel` is the pointer target (None for keyboard,
    wait, terminate and answer); `start_pixel` is where a drag began."""

    pixel: Pixel | None = None
    start_pixel: Pixel | None = None


def screen_point(coord: Coordinate, frame_size: tuple[int, int], screen_size: tuple[int, int]) -> Pixel:
    """0..1000 -> a pixel of the frame -> the same spot in screen pixels (never a corner)."""
    fx, fy = to_pixels(coord, frame_size)
    if tuple(frame_size) == tuple(screen_size):
        return fx, fy
    # The screen pixel that holds the frame pixel's centre (int, not round: rounding lands up to 1.17 px
    # off at a 1.25 HiDPI factor), then the same clamp and corner nudge as to_pixels.
    (fw, fh), (sw, sh) = frame_size, screen_size
    x, y = min(int((fx + 0.5) / fw * sw), sw - 1), min(int((fy + 0.5) / fh * sh), sh - 1)
    return to_pixels((x * SCALE / sw, y * SCALE / sh), screen_size) if x in (0, sw - 1) and y in (0, sh - 1) else (x, y)


def execute(action: Action, desktop: Desktop, frame_size: tuple[int, int], deadline: float | None = None) -> Outcome:
    """Perform `action`; raises agent.errors.Aborted when a person pushed the mouse into a corner."""
    desktop.check_abort()

    def point(coord: Coordinate | None) -> Pixel | None:
        return None if coord is None else screen_point(coord, frame_size, desktop.size())

    match action.action:
        case "key":
            return _key(desktop, action.keys)
        case "type":
            return _type(desktop, action.text, deadline)
        case "mouse_move":
            return _move(desktop, point(action.coordinate))
        case "left_click" | "right_click" | "middle_click" | "double_click" | "triple_click":
            button, clicks = CLICKS[action.action]
            return _click(desktop, point(action.coordinate), button, clicks)
        case "left_click_drag":
            return _drag(desktop, point(action.start_coordinate), point(action.coordinate))
        case "scroll" | "hscroll":
            return _scroll(desktop, action.pixels, point(action.coordinate), action.action == "hscroll")
        case "wait":
            return _wait(desktop, min(action.time, max(deadline - time.monotonic(), 0)) if deadline else action.time)
        case "terminate" | "answer" | "ask_user":
            return Outcome()  # they end the run, report or ask a person; nothing happens on the desktop
        case other:
            raise TypeError(f"the executor has no case for action {other!r}")


def _key(desktop: Desktop, keys: list[str]) -> Outcome:
    desktop.key(list(normalize_chord(keys)))  # the canonical chord the policy approved
    return Outcome()


def _type(desktop: Desktop, text: str, deadline: float | None = None) -> Outcome:
    """Type in chunks, checking for a person's abort between them; stop at the run's `deadline` (a long
    text types at ~400 characters a second: it must not carry the run past its timeout)."""
    text = secrets.fill(text)  # {secret:NAME} -> its value, here and nowhere earlier: the model never sees it
    for start in range(0, len(text), TYPE_CHUNK_CHARS):
        if start:
            desktop.check_abort()
            if deadline is not None and time.monotonic() >= deadline:
                break
        desktop.type(text[start:start + TYPE_CHUNK_CHARS])
    return Outcome()


def _move(desktop: Desktop, pixel: Pixel) -> Outcome:
    desktop.move(*pixel)
    return Outcome(pixel=pixel)


def _click(desktop: Desktop, pixel: Pixel | None, button: Button, clicks: int) -> Outcome:
    if pixel is None:
        pixel = desktop.position()  # click where the pointer is; record where that was
    desktop.click(*pixel, button=button, clicks=clicks)
    return Outcome(pixel=pixel)


def _drag(desktop: Desktop, start: Pixel | None, end: Pixel) -> Outcome:
    start = start or desktop.position()
    desktop.drag(*start, *end)
    return Outcome(pixel=end, start_pixel=start)


def _scroll(desktop: Desktop, pixels: int, pixel: Pixel | None, horizontal: bool) -> Outcome:
    if pixel is None:
        pixel = desktop.position()
    desktop.scroll(pixels, *pixel, horizontal=horizontal)
    return Outcome(pixel=pixel)


def _wait(desktop: Desktop, seconds: float) -> Outcome:
    """Sleep (the policy bounds it), but a person pushing the mouse into a corner still stops the run."""
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        time.sleep(min(left, WAIT_POLL_S))
        desktop.check_abort()
    return Outcome()
