"""The parts of a run that agent.run.session puts together: the task's display and setup, the
trace it starts with, the task's checks, the final screen."""
from __future__ import annotations

import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import yaml

from agent.task import Task
from agent.trace import CheckResult, Result, Trace

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
                 workdir=workdir, cwd=task.base_dir, pass_env=task.env) as sandbox:
        with X11Desktop(sandbox.display) as desktop:
            desktop.watch(sandbox.check_apps)  # a dead app ends the run at the next step, not at its end
            sandbox.run_setup(task.setup)
            yield Env(sandbox, desktop, workdir)


def evaluate(task: Task, env: Env, final: bool = False) -> list[CheckResult]:
    """The task's success checks; final: at the end of a run (a failed one is looked at again for a
    moment: the app may finish its last update just after the last action)."""
    from agent.run.checks import GRACE_S, evaluate as run_checks

    return run_checks(task, env.workdir, env.desktop, GRACE_S if final else 0.0)


def start_trace(folder: Path, task: Task, model: str) -> tuple[Trace, Result]:
    """A trace folder with the task as run, and a Result that says `error` until something better."""
    trace = Trace(Path(folder).resolve())  # absolute: setup runs in the task's folder, {workdir} too
    # the task as it was given, not every unset default of every step
    given = task.model_dump(mode="json", exclude_unset=True, by_alias=True)
    trace.write_task(yaml.safe_dump(given, sort_keys=False, allow_unicode=True))
    return trace, Result(status="error", task=task.name, model=model, started=time.time())


def save_final_screen(env: Env, trace: Trace, result: Result) -> None:
    try:
        result.final_screenshot = trace.save_screen(env.desktop.capture(), "final")
    except Exception:  # the display may be gone; the status already says why
        pass
