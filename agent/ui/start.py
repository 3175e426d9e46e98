"""Starting a run from the console's page: a task file (a goal task or a flow), a model, options; the
run goes on a thread of the console's process, in its own sandbox, as `vlagent run` would run it
(agent.run.runner.run_task), watched from the start.

One run at a time: input to X goes through pyautogui's process-wide state, which two runs of one
process would share. (A second console, or `vlagent run --watch`, runs another.)
"""
from __future__ import annotations

import threading
from pathlib import Path

from agent.errors import VlagentError


class Launcher:
    def __init__(self, console):
        self.console = console
        self._lock = threading.Lock()
        self.threads: list[threading.Thread] = []

    def start(self, data: dict):
        """Check the request, prepare the run (task, backend, trace folder) and start it; return its LiveRun."""
        from agent.ui.views import make_backend
        from agent.task import load_task
        from agent.trace import check_trace_dir, new_trace_dir

        task_file = str(data.get("task") or "").strip()
        if not task_file:
            raise VlagentError("name a task file")
        with self._lock:
            busy = self.console.live_run()
            if busy is not None:
                raise VlagentError(f"a run is live ({busy.task}); stop it or wait for its end first")
            task = load_task(Path(task_file).expanduser())
            max_steps = data.get("max_steps")
            if max_steps is not None and (not isinstance(max_steps, int) or max_steps < 1):
                raise VlagentError("max_steps must be a whole number of at least 1")
            backend = make_backend(str(data.get("model") or self.console.defaults["model"]),
                                   str(data.get("backend") or "auto"), data.get("base_url") or None)
            folder = new_trace_dir(self.console.runs_dir, task.name)
            check_trace_dir(folder)
            live, thread = start_watched(self.console, task, backend, folder, attended=bool(data.get("attended")),
                                         max_steps=max_steps)
            self.threads.append(thread)
        return live


def start_watched(console, task, backend, folder: Path, *, attended: bool = False, max_steps: int | None = None):
    """Run a task on a new thread as `vlagent run` runs it (agent.run.runner.run_task), watched by the
    console from its first event; (its LiveRun, the thread)."""
    from agent.run.loop import LoopConfig
    from agent.run.runner import run_task

    ready, box = threading.Event(), {}

    def hook(session):
        box["live"] = console.attach(session, attended=attended)
        ready.set()

    def target():
        try:
            run_task(task, backend, trace_dir=folder, on_session=hook,
                     loop=LoopConfig(max_steps=max_steps or task.max_steps, timeout_s=task.timeout_s))
        finally:
            ready.set()

    thread = threading.Thread(target=target, daemon=True, name=f"run-{task.name}")
    thread.start()
    ready.wait()
    if "live" not in box:
        raise VlagentError("the run ended before it started")
    return box["live"], thread


def launcher_of(console) -> Launcher:
    if console.launcher is None:
        console.launcher = Launcher(console)
    return console.launcher
