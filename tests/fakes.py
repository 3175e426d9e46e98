"""Fakes that implement the real interfaces (agent.desktop.base.Desktop, agent.backends.base.Backend),
passed in where a test is about something else than the screen or the model. No patching.
tests/run/test_loop.py checks that their methods have the interfaces' signatures."""
from __future__ import annotations

import json
import threading

from PIL import Image, ImageDraw

from agent.errors import Aborted, ModelExhausted


def reply(**arguments) -> str:
    """A reply in Qwen's native computer_use format."""
    return f'<tool_call>\n{json.dumps({"name": "computer_use", "arguments": arguments})}\n</tool_call>'


class RecordingDesktop:
    """A Desktop that records every call in `calls` as (name, args, kwargs). Its screen is a plain
    frame of `frame` size that changes with each input action when `reactive` (a mark moves), so
    the loop's "did the screen change" sees what a real app would show. `size` is the screen size
    input events address (differs from the frame's under HiDPI). `abort_at`: check_abort raises
    Aborted from that call on (a person pushing the pointer into a corner)."""

    display = None  # not on X: the loop reads no windows or accessibility tree from it

    def __init__(self, frame: tuple[int, int] = (640, 400), size: tuple[int, int] | None = None,
                 reactive: bool = True, abort_at: int | None = None):
        self.frame, self.screen = frame, size or frame
        self.reactive, self.abort_at = reactive, abort_at
        self.calls: list[tuple[str, tuple, dict]] = []
        self.changes = 0
        self.pointer = (0, 0)

    def _log(self, name: str, *args, **kwargs) -> None:
        self.calls.append((name, args, kwargs))

    def _input(self, name: str, *args, **kwargs) -> None:
        self._log(name, *args, **kwargs)
        if self.reactive:
            self.changes += 1

    def named(self, name: str) -> list[tuple]:
        return [args for n, args, _ in self.calls if n == name]

    def capture(self) -> Image.Image:
        self._log("capture")
        return self._frame()

    def _frame(self) -> Image.Image:
        image = Image.new("RGB", self.frame, (236, 236, 236))
        x = (self.changes * 37) % max(self.frame[0] - 20, 1)  # a mark that moves when the screen changes
        ImageDraw.Draw(image).rectangle([x, 10, x + 20, 30], fill=(20, 20, 20))
        return image

    def size(self) -> tuple[int, int]:
        return self.screen

    def position(self) -> tuple[int, int]:
        return self.pointer

    def move(self, x: int, y: int) -> None:
        self.pointer = (x, y)
        self._input("move", x, y)

    def click(self, x: int | None, y: int | None, button="left", clicks: int = 1) -> None:
        if x is not None and y is not None:
            self.pointer = (x, y)
        self._input("click", x, y, button=button, clicks=clicks)

    def drag(self, x0: int, y0: int, x1: int, y1: int) -> None:
        self.pointer = (x1, y1)
        self._input("drag", x0, y0, x1, y1)

    def scroll(self, pixels: int, x: int | None = None, y: int | None = None, horizontal: bool = False) -> None:
        self._input("scroll", pixels, x, y, horizontal=horizontal)

    def key(self, keys: list[str]) -> None:
        self._input("key", list(keys))

    def type(self, text: str) -> None:
        self._input("type", text)

    def wait_stable(self, max_s: float = 2.0, seen=None) -> float:
        self._log("wait_stable", max_s)
        if seen is not None:
            seen(self._frame())
        return 0.0

    def check_abort(self) -> None:
        self._log("check_abort")
        if self.abort_at is not None and len(self.named("check_abort")) >= self.abort_at:
            raise Aborted("mouse moved to a screen corner: run aborted by the user")


class QueueModel:
    """A Backend whose replies are queued: a string is returned, an exception raised, a callable
    called with the messages. It keeps the messages of every call. A reply of HANG blocks until
    `release()` (a model that outlives the run's deadline)."""

    HANG = object()

    def __init__(self, *replies, name: str = "queue"):
        self.name = name
        self.replies: list = list(replies)
        self.seen: list[list[dict]] = []
        self._released = threading.Event()
        self.cancelled = 0

    def enqueue(self, *replies) -> "QueueModel":
        self.replies.extend(replies)
        return self

    def release(self) -> None:
        self._released.set()

    def cancel(self) -> None:
        """As TransformersBackend.cancel: the loop gave up on the call in progress; stop it."""
        self.cancelled += 1
        self._released.set()

    def fits(self, messages, constraint=None) -> bool:
        return True  # no context limit

    def generate(self, messages, constraint=None) -> str:
        self.seen.append(messages)
        if not self.replies:
            raise ModelExhausted(f"the queue ran out of replies after {len(self.seen) - 1}")
        item = self.replies.pop(0)
        if item is QueueModel.HANG:
            self._released.wait(30)
            return reply(action="terminate", status="success")
        if isinstance(item, BaseException):
            raise item
        if callable(item):
            return item(messages)
        return item

    def prompt_text(self, call: int = -1) -> str:
        """All the text of the messages of one call (the last by default)."""
        return "\n".join(part["text"] for m in self.seen[call] for part in m["content"] if part.get("type") == "text")
