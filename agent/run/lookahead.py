"""Work the next step will need, done while the desktop acts and settles.

Once the model has chosen an action, the next step's prompt is known but for its screenshot: the
history plus this step. While the action runs and the screen settles (about 100-600 ms a step on real
apps: benchmarks/results/desktop_time.json) the model has nothing to do, so a backend that can
(TransformersBackend with its engine: `prepare`) prefills that history then, an eviction's re-prefill
included, and encodes each new frame the settle loop grabs. The frame the screen settles on was
grabbed one poll before the screen was called settled, so the next step usually finds it encoded and
only prefills its tokens and decodes.

A guess that turns out wrong costs time on an idle GPU, never a different reply: the engine compares
tokens and image keys as always and recomputes from the first difference. A failure here is logged
and dropped; the step that follows works as if nothing had been prepared.

The time before the first frame goes to the backend's deferred warm-up (`idle`: the decode graphs the
load left for later), in short slices so that a new frame waits little. That part runs with
prepare=False too.
"""
from __future__ import annotations

import logging
import threading
from typing import Callable

from PIL import Image

from agent.backends.base import BackendBase, Message

log = logging.getLogger(__name__)
JOIN_S = 10.0  # at the run's end, how long to wait for a prepare still running (it is bounded work)
IDLE_SLICE_S = 0.03  # deferred warm-up in slices this long (one decode graph capture is ~30-40 ms on an H100)


class Lookahead:
    """One worker thread per run; the newest job replaces one not yet started."""

    def __init__(self, backend, constraint=None, prepare: bool = True):
        self._prepare = _own(backend, "prepare") if prepare else None
        self._idle = _own(backend, "idle")
        self._constraint = constraint
        self._build: Callable[[Image.Image], list[Message]] | None = None
        self._frames = True
        self._job: tuple[list[Message] | None, bool] | None = None
        self._cv = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None
        self.prepared = 0  # jobs run (tests, benchmarks)

    def begin(self, build: Callable[[Image.Image], list[Message]], frame: Image.Image, frames: bool = True) -> None:
        """The action is chosen: `build(screenshot)` renders the next step's prompt. The history part
        is prepared now (with this step's frame standing in for the next one). frames=False: the next
        prompt's screenshot will not be a grabbed frame as it is (marks are drawn on it)."""
        if self._prepare is None and self._idle is None:
            return
        self._build, self._frames = build, frames
        self._submit(self._render(frame) if self._prepare is not None else None, False)

    def seen(self, frame: Image.Image) -> None:
        """A new frame grabbed while the screen settles (the desktop's wait_stable calls this)."""
        if self._prepare is not None and self._build is not None and self._frames:
            messages = self._render(frame)
            if messages is not None:
                self._submit(messages, True)

    def _render(self, frame: Image.Image) -> list[Message] | None:
        """The next prompt with this frame, or None: a prompt that cannot be built (one that does not
        fit, say) is the next step's error to report, not this one's."""
        try:
            return self._build(frame)
        except Exception as e:
            log.debug("lookahead: no prompt: %s", e)
            return None

    def end(self) -> None:
        """The screen settled: no more frames for this step."""
        self._build = None

    def close(self) -> None:
        with self._cv:
            self._closed, self._job = True, None
            self._cv.notify()
        if self._thread is not None:
            self._thread.join(JOIN_S)

    def _submit(self, messages: list[Message] | None, image: bool) -> None:
        with self._cv:
            if self._closed:
                return
            self._job = (messages, image)
            self._cv.notify()
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, daemon=True, name="lookahead")
            self._thread.start()

    def _work(self) -> None:
        while True:
            with self._cv:
                while self._job is None and not self._closed:
                    self._cv.wait()
                if self._closed:
                    return
                (messages, image), self._job = self._job, None
            try:
                if messages is not None:  # (None: nothing to prepare, only the warm-up below)
                    self._prepare(messages, self._constraint, image)
                    self.prepared += 1
                # Until a frame comes (the screen settles a poll after the last one, so not after a
                # frame's encoding): the deferred warm-up, a slice at a time.
                while not image and self._idle is not None and self._job is None and self._build is not None:
                    if not self._idle(IDLE_SLICE_S):
                        break
            except Exception as e:  # a guess that failed costs nothing more: the next step does the work
                log.warning("lookahead: %s: %s", type(e).__name__, e)


def _own(backend, name: str):
    """The backend's method `name`, or None where it has none or only BackendBase's do-nothing one
    (a remote model): then no prompt is built ahead and no thread started for it."""
    method = getattr(backend, name, None)
    if method is None or getattr(type(backend), name, None) is getattr(BackendBase, name):
        return None
    return method
