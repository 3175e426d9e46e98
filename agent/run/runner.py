"""Run a task end to end with a model: sandbox, setup, the loop, the success checks, teardown, a
trace. What replay, record and flows share with it is in agent.run.environment (re-exported here),
so that all of them end the same way (agent.run.status decides the status).
"""
from __future__ import annotations

import os
from pathlib import Path

from actions import Policy
from agent.backends.base import Backend
from agent.errors import ModelExhausted, VlagentError
from agent.run.environment import (DEFAULT_RUNS_DIR, Env, conclude, evaluate, run_outcome,  # noqa: F401 (API)
                                   save_final_screen, start_trace, task_environment)
from agent.run.loop import LoopConfig, run_loop
from agent.run.status import End
from agent.task import Task
from agent.trace import Result, new_trace_dir


def run_task(task: Task, backend: Backend, *, display: str | None = None, trace_dir: Path | None = None,
             loop: LoopConfig | None = None, on_step=None) -> tuple[Result, Path]:
    """Run one task. Always returns a Result and a complete trace folder, whatever happens;
    KeyboardInterrupt is recorded as `aborted` and then re-raised for the caller to exit."""
    if task.steps:  # a flow (steps: instead of goal:) has its own runner, with the action cache
        from agent.flow.runner import run_flow

        return run_flow(task, backend, display=display, trace_dir=trace_dir, loop=loop, on_step=on_step)
    loop = loop or LoopConfig(max_steps=task.max_steps, timeout_s=task.timeout_s)
    trace, result = start_trace(trace_dir or new_trace_dir(DEFAULT_RUNS_DIR, task.name), task,
                                getattr(backend, "name", ""))
    with run_outcome(trace, result):
        with task_environment(task, display=display, workdir=trace.folder / "workdir") as env:
            result.display = env.sandbox.display
            try:
                end = run_loop(task.goal, backend, env.desktop, Policy(task.allow), trace, loop, on_step)
            except ModelExhausted as e:
                end = End("exhausted", str(e))
            conclude(task, env, trace, result, end)
    return result, trace.folder


def use_display(display: str | None) -> str | None:
    """`--display live` means the desktop this process runs on."""
    if display == "live":
        if not os.environ.get("DISPLAY"):
            raise VlagentError("--display live: DISPLAY is not set, there is no live desktop here")
        return os.environ["DISPLAY"]
    return display
