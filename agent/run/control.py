"""Steering a run from outside (the console, a signal): pause, resume, one step, stop. The driver
obeys at its next step boundary by calling wait_turn(). And the person who attends a run, as the
drivers see them (Attendant; agent/ui/attend.py is the one implementation)."""
from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Callable, Protocol

from agent.errors import Aborted

if TYPE_CHECKING:
    from PIL import Image

    from actions.schema import Action, AskUser
    from agent.trace import Step


class Attendant(Protocol):
    """A person attending a run (the console's page, else the terminal). The drivers call it between
    the gate and the desktop: the model loop for every action, a flow's actor for its cached, grounded
    and native actions. What they decide is kept on the step (`Step.decision`)."""

    can_answer: bool  # someone can answer a question now (a console, --attended, a terminal)

    def review(self, step: "Step", action: "Action", frame: "Image.Image",
               check: Callable[[str], "Action"]) -> "Action | None":
        """The action to run (the proposal, or a person's correction passed through `check`, the gate),
        or None when it must not run (then step.error says why, for the model)."""

    def question(self, step: "Step", action: "AskUser", until: float | None = None) -> bool:
        """Put the model's question to the person and wait (at most until the monotonic time `until`);
        the answer, or why none came, goes on step.decision. False: the task says an unanswered
        question ends the run."""


OPS = {"pause": "pause", "resume": "resume", "step": "step_once", "stop": "stop"}  # control name -> method


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

    def apply(self, op: str, reason: str = "stopped by a person") -> None:
        """One of OPS by name, as a console or its relay sends it; ValueError for anything else."""
        if op not in OPS:
            raise ValueError(f"unknown control {op!r}")
        if op == "stop":
            self.stop(reason)
        else:
            getattr(self, OPS[op])()

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
