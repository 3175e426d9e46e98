"""Run a task end to end: a flow (steps:) or the agent loop on its goal, inside one RunSession
(agent.run.session: sandbox, setup, trace, checks, status, teardown)."""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from actions import Policy
from agent.backends.base import Backend
from agent.errors import ModelExhausted, VlagentError
from agent.desktop.mask import mask_frames, places
from agent.run.events import EventBus
from agent.run.loop import LoopConfig, run_loop
from agent.run.session import RunControl, RunSession
from agent.run.status import End
from agent.task import Task
from agent.trace import Result


def run_task(task: Task, backend: Backend, *, display: str | None = None, trace_dir: Path | None = None,
             loop: LoopConfig | None = None, on_step=None, cache="read-write", bus: EventBus | None = None,
             control: RunControl | None = None, on_session=None) -> tuple[Result, Path]:
    """Run one task: the one place that chooses between a flow (steps:) and the agent loop (goal:).
    Always returns a Result and a complete trace folder, whatever happens; KeyboardInterrupt is
    recorded as `aborted` and then re-raised for the caller to exit. cache: a flow's action cache
    (a mode, an ActionCache, or None for none: `--cache off`). on_session: called with the task's RunSession
    before it starts (the console watches it; an attended run gets its Attendant: agent/ui/watch.py)."""
    if task.steps:
        from agent.flow.runner import run_flow

        return run_flow(task, backend, display=display, trace_dir=trace_dir, loop=loop, on_step=on_step,
                        cache=cache, bus=bus, control=control,
                        on_session=on_session)
    loop = loop or LoopConfig(max_steps=task.max_steps, timeout_s=task.timeout_s)
    if task.marks and not loop.marks:  # the task asks for element marks (agent/targets/marks.py)
        loop = dataclasses.replace(loop, marks=True)
    session = RunSession(task, mode="loop", model=getattr(backend, "name", ""), trace_dir=trace_dir, display=display,
                         masks=bool(places(task, backend)),
                         bus=bus, control=control)
    if on_session is not None:
        on_session(session)
    with session as run:
        env = run.start()
        try:
            mask_frames(env.desktop, task, backend)  # agent.desktop.mask: frames hide what the task (or a remote model) says
            policy = Policy(task.allow, task.secrets, can_ask=run.attendant is not None and run.attendant.can_answer)
            end = run_loop(task.goal, backend, env.desktop, policy, run.trace, loop, on_step, run=run)
        except ModelExhausted as e:
            end = End("exhausted", str(e))
        run.finish(end)
    return run.result, run.trace.folder


def use_display(display: str | None) -> str | None:
    """`--display live` means the desktop this process runs on."""
    if display == "live":
        if not os.environ.get("DISPLAY"):
            raise VlagentError("--display live: DISPLAY is not set, there is no live desktop here")
        return os.environ["DISPLAY"]
    return display
