"""Run a task end to end: sandbox, setup, the loop, the success checks, teardown, a trace.

`task_environment`, `start_trace` and `conclude` are shared with replay and record, so that all
three end the same way (agent.run.status decides the status).
"""
from __future__ import annotations

import os
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import yaml

from actions import Policy
from agent.backends.base import Backend
from agent.errors import ModelExhausted, SandboxError, VlagentError
from agent.run.loop import LoopConfig, run_loop
from agent.run.status import End, decide
from agent.run.status import outcome as run_outcome  # noqa: F401 (API: replay and record use it)
from agent.task import Task
from agent.trace import CheckResult, Result, Trace, new_trace_dir

DEFAULT_RUNS_DIR = Path("runs")


@dataclass
class Env:
    sandbox: object  # sandbox.session.Sandbox
    desktop: object  # agent.desktop.x11.X11Desktop
    workdir: Path


@contextmanager
def task_environment(task: Task, display: str | None = None, workdir: Path | None = None) -> Iterator[Env]:
    """A display for the task (a fresh Xvfb sandbox unless `display` names one), its setup run,
    and a desktop bound to it. Everything started here is torn down on exit, Ctrl-C included."""
    from agent.desktop.x11 import X11Desktop
    from sandbox.session import Sandbox

    workdir = Path(workdir or tempfile.mkdtemp(prefix=f"vlagent-{task.name}-"))
    workdir.mkdir(parents=True, exist_ok=True)
    with Sandbox(screen=(task.screen.width, task.screen.height), display=display,
                 workdir=workdir, cwd=task.base_dir) as sandbox:
        with X11Desktop(sandbox.display) as desktop:
            desktop.watch(sandbox.check_apps)  # a dead app ends the run at the next step, not at its end
            sandbox.run_setup(task.setup)
            yield Env(sandbox, desktop, workdir)


def evaluate(task: Task, env: Env) -> list[CheckResult]:
    from agent.run.checks import evaluate as run_checks

    return run_checks(task, env.workdir, env.desktop)


def start_trace(folder: Path, task: Task, model: str) -> tuple[Trace, Result]:
    """A trace folder with the task as run, and a Result that says `error` until something better."""
    trace = Trace(Path(folder).resolve())  # absolute: setup runs in the task's folder, {workdir} too
    trace.write_task(yaml.safe_dump(task.model_dump(mode="json"), sort_keys=False, allow_unicode=True))
    return trace, Result(status="error", task=task.name, model=model, started=time.time())


def conclude(task: Task, env: Env, trace: Trace, result: Result, end: End) -> None:
    """How every run ends (run, replay, record): did an app die, the checks, the status, the final screen."""
    try:
        env.sandbox.check_apps()
        died = None
    except SandboxError as e:
        died = str(e)
    result.answer = end.answer
    result.checks = evaluate(task, env)
    result.status, result.reason = decide(end, result.checks, died)
    save_final_screen(env, trace, result)


def save_final_screen(env: Env, trace: Trace, result: Result) -> None:
    try:
        result.final_screenshot = trace.save_screen(env.desktop.capture(), "final")
    except Exception:  # the display may be gone; the status already says why
        pass


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
