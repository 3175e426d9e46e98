"""Starting a run from the console's page: a task file, a model, options; the run goes on a thread of
the console's process, in its own sandbox, as `vlagent run` would run it, watched from the start.

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
        from actions import Policy  # noqa: F401 (fail here, not on the thread, if the install is broken)
        from agent.cli.common import make_backend
        from agent.run.session import RunSession
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
            session = RunSession(task, mode="flow" if task.steps else "loop", model=getattr(backend, "name", ""),
                                 trace_dir=folder)
            live = self.console.attach(session, attended=bool(data.get("attended")))
            t = threading.Thread(target=run_session, args=(session, task, backend, max_steps), daemon=True,
                                 name=f"run-{session.id}")
            self.threads.append(t)
            t.start()
        return live


def run_session(session, task, backend, max_steps: int | None = None) -> None:
    """The run on this thread, as `vlagent run` runs a goal task (the session decides its status,
    whatever happens; its trace is always complete)."""
    from actions import Policy
    from agent.errors import ModelExhausted
    from agent.run.loop import LoopConfig, run_loop
    from agent.run.status import End

    cfg = LoopConfig(max_steps=max_steps or task.max_steps, timeout_s=task.timeout_s)
    with session as run:
        env = run.start()
        if task.steps:
            raise VlagentError("flows (steps:) are started with `vlagent run --watch`; the page starts goal tasks")
        try:
            end = run_loop(task.goal, backend, env.desktop, Policy(task.allow), run.trace, cfg, run=run)
        except ModelExhausted as e:
            end = End("exhausted", str(e))
        run.finish(end)


def launcher_of(console) -> Launcher:
    if console.launcher is None:
        console.launcher = Launcher(console)
    return console.launcher
