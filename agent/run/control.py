"""Steering a run from outside (the console, a signal): pause, resume, one step, stop. The driver
obeys at its next step boundary by calling wait_turn()."""
from __future__ import annotations

import threading

from agent.errors import Aborted


class RunControl:
    """Pause, resume, one step, stop: set from outside (the console, a signal), obeyed by the
    driver at its next step boundary through wait_turn()."""

    def __init__(self):
        self._cond = threading.Condition()
        self._paused = False
        self._steps_allowed = 0  # one step while paused
        self.stopped: str | None = None

    @property
    def paused(self) -> bool:
        return self._paused

    def pause(self) -> None:
        with self._cond:
            self._paused = True

    def resume(self) -> None:
        with self._cond:
            self._paused, self._steps_allowed = False, 0
            self._cond.notify_all()

    def step_once(self) -> None:
        with self._cond:
            self._paused = True
            self._steps_allowed += 1
            self._cond.notify_all()

    def stop(self, reason: str = "stopped by a person") -> None:
        with self._cond:
            self.stopped = reason
            self._cond.notify_all()

    def wait_turn(self) -> None:
        """Block while paused; raise Aborted once stopped."""
        with self._cond:
            while True:
                if self.stopped:
                    raise Aborted(self.stopped)
                if not self._paused:
                    return
                if self._steps_allowed:
                    self._steps_allowed -= 1
                    return
                self._cond.wait(0.5)
