"""One run's lifecycle, whatever drives it (the model loop, a flow, a replay, a recording, the
pytest `vl` fixture): the trace, the environment (sandbox, desktop, setup), the one status decision,
the event stream and the cleanup.

    with RunSession(task, mode="loop", model=backend.name, trace_dir=folder) as run:
        env = run.start()                      # the display, the setup, a desktop bound to it
        end = run_loop(task.goal, backend, env.desktop, policy, run.trace, cfg, run=run)
        run.finish(end)                        # apps alive? checks, status, final screen
    run.result                                 # always set; the trace folder is always complete

Whatever cuts the run short becomes its status in __exit__ (agent.run.status.status_of); Ctrl-C
is recorded as `aborted` and re-raised for the caller to exit with 130.
"""
from __future__ import annotations

import time
from contextlib import ExitStack
from pathlib import Path

from agent.errors import SandboxError
from agent.run import events as ev
from agent.run.control import Attendant, RunControl
from agent.run.environment import (DEFAULT_RUNS_DIR, Env, evaluate, save_final_screen, start_trace,
                                   task_environment)
from agent.run.status import End, decide, status_of
from agent.task import Task
from agent.trace import Result, Step, Trace, new_trace_dir

MODES = ("loop", "flow", "replay", "record")


class RunSession:
    def __init__(self, task: Task, *, mode: str, model: str = "", trace_dir: Path | None = None,
                 display: str | None = None, bus: ev.EventBus | None = None, control: RunControl | None = None,
                 trace_name: str | None = None, reraise: bool = False, masks: bool = False):
        """reraise: let the exception that ended the run through after recording it (the pytest API
        wants its assert); otherwise only Ctrl-C goes through and the status says the rest. masks: the
        run's frames are masked (agent.desktop.mask.places): a watcher's must be too, from the start."""
        if mode not in MODES:
            raise ValueError(f"unknown run mode {mode!r}")
        self.task, self.mode, self.model, self.display = task, mode, model, display
        self.folder = Path(trace_dir) if trace_dir else new_trace_dir(DEFAULT_RUNS_DIR, trace_name or task.name)
        self.bus = bus or ev.EventBus()
        self.control = control or RunControl()
        self.attendant: Attendant | None = None  # a person who reviews and answers (set by on_session: agent/ui)
        self.id = ev.new_run_id()
        self.reraise = reraise
        self.masks = masks
        self.env: Env | None = None
        self.trace: Trace | None = None
        self.result: Result | None = None
        self._stack = ExitStack()
        self._finished = False

    # -- lifecycle ------------------------------------------------------------------------------------
    def __enter__(self) -> "RunSession":
        self.trace, self.result = start_trace(self.folder, self.task, self.model)
        self.trace.listeners.append(lambda step: self.publish(ev.StepWritten, step=step))
        self.publish(ev.RunStarted, task=self.task.name, mode=self.mode, trace_dir=str(self.trace.folder),
                     display=self.display)
        return self

    def start(self) -> Env:
        """The task's display (a fresh sandbox unless one was named), its setup, a desktop."""
        self.env = self._stack.enter_context(task_environment(self.task, display=self.display,
                                                              workdir=self.trace.folder / "workdir"))
        self.result.display = self.env.sandbox.display
        return self.env

    def frame_mask(self):
        """What paints the task's `mask:` boxes (agent.desktop.mask) over a frame of this run's display
        that someone else grabs (the console's live view); None before the desktop masks (setup) or
        when the run masks nothing (`masks` says which)."""
        return getattr(self.env.desktop, "masker", None) if self.env is not None else None

    def finish(self, end: End, *, checks: bool = True) -> None:
        """The one status decision of a run that ended on its own: did an app die, the task's
        checks (unless the driver broke down), the status, the final screen."""
        try:
            self.env.sandbox.check_apps()
            died = None
        except SandboxError as e:
            died = str(e)
        self.result.answer = end.answer
        self.result.checks = self.evaluate(final=True) if checks else []
        for c in self.result.checks:
            self.publish(ev.CheckDone, name=c.check, ok=c.passed, detail=c.detail or "")
        self.result.status, self.result.reason = decide(end, self.result.checks, died)
        save_final_screen(self.env, self.trace, self.result)
        self._finished = True

    def evaluate(self, final: bool = False):
        return evaluate(self.task, self.env, final)

    def __exit__(self, exc_type, exc, tb) -> bool:
        interrupted = exc if isinstance(exc, KeyboardInterrupt) else None
        if exc is not None:
            self.result.status, self.result.reason = status_of(exc, in_test=self.reraise)
            if self.env is not None and not self._finished:
                save_final_screen(self.env, self.trace, self.result)
        try:
            self._stack.close()  # the sandbox goes away (apps, display, setup's processes)
        except KeyboardInterrupt as e:  # a second Ctrl-C while cleaning up
            interrupted = interrupted or e
            if exc is None:
                self.result.status, self.result.reason = status_of(e)
        except Exception as e:
            if exc is None and self.result.status not in ("error", "aborted"):
                self.result.status, self.result.reason = status_of(e)
        finally:
            self.result.ended = time.time()
            self.result.duration_s = round(self.result.ended - self.result.started, 3)
            self.trace.finish(self.result)
            self.publish(ev.RunEnded, status=self.result.status, reason=self.result.reason or "")
            self.bus.drain()
        if interrupted is not None and interrupted is not exc:
            raise interrupted
        return exc is not None and exc is not interrupted and not self.reraise

    # -- events ---------------------------------------------------------------------------------------
    def publish(self, kind: type[ev.Event], **fields) -> None:
        self.bus.publish(kind(self.id, **fields))

    def add_step(self, step: Step) -> Step:
        """Write a step to the trace (the subscribers hear of it as StepWritten)."""
        return self.trace.add(step)


__all__ = ["RunSession", "RunControl", "MODES"]
