"""The one interface the loop, the executor, replay and the checks drive a desktop through.

agent.desktop.x11.X11Desktop is the real one (mss + pyautogui on an X display); tests pass fakes
that implement the same methods. Coordinates are screen pixels (what input events address).
"""
from __future__ import annotations

from typing import Literal, Protocol

from PIL import Image

Button = Literal["left", "right", "middle"]


class Desktop(Protocol):
    display: str | None  # the X display, e.g. ":7"; None for one that is not on X (a test's fake)

    def capture(self) -> Image.Image:
        """The whole screen as an RGB image (the frame the model sees)."""

    def size(self) -> tuple[int, int]:
        """Screen size in pixels (w, h) as input events address it."""

    def position(self) -> tuple[int, int]:
        """Where the pointer is now."""

    def move(self, x: int, y: int) -> None: ...

    def click(self, x: int | None, y: int | None, button: Button = "left", clicks: int = 1) -> None:
        """Click at (x, y), or where the pointer is when x is None."""

    def drag(self, x0: int, y0: int, x1: int, y1: int) -> None: ...

    def scroll(self, pixels: int, x: int | None = None, y: int | None = None, horizontal: bool = False) -> None: ...

    def key(self, keys: list[str]) -> None:
        """Press a chord: the keys down in order, then up in reverse (pyautogui.hotkey)."""

    def type(self, text: str) -> None:
        """Type text, non-ASCII included."""

    def wait_stable(self, max_s: float = 2.0, seen=None) -> float:
        """Wait (bounded) until the screen stops changing; return the seconds waited. `seen`, if
        given, is called with each new frame grabbed meanwhile, as capture() would return it
        (agent/run/lookahead.py); a desktop that masks frames or has none to show need not call it."""

    def check_abort(self) -> None:
        """Raise agent.errors.Aborted when a person pushed the pointer into a screen corner."""
