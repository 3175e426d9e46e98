"""Starting a run from the console's page: a task file (a goal task or a flow), a model, options; the
run goes on a thread of the console's process, in its own sandbox, as `vlagent run` would run it
(agent.run.runner.run_task), watched from the start.

Input to X goes through pyautogui's process-wide state, so the console's process runs one at a
time; while one is live, the next is a `vlagent run` process of its own that attaches to the
console (agent/ui/relay.py): watched, paused, stopped, not attended or taken over. A suite started
from the page is a `vlagent suite` process: it and its items attach the same way.
"""
from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

from agent.errors import VlagentError

ATTACH_TIMEOUT_S = 120.0  # a run's process: interpreter, model load, then its session attaches


class Launcher:
    def __init__(self, console):
        self.console = console
        self._lock = threading.Lock()
        self.threads: list[threading.Thread] = []
        self.children: dict[Path, subprocess.Popen] = {}  # trace folder -> its run's process
        self.suites: dict[Path, subprocess.Popen] = {}  # suite folder -> its process

    def start(self, data: dict):
        """Check the request, prepare the run (task, backend, trace folder) and start it; return its LiveRun."""
        from agent.ui.attend import rules_of
        from agent.ui.views import make_backend
        from agent.task import load_task
        from agent.trace import check_trace_dir, new_trace_dir

        task_file = str(data.get("task") or "").strip()
        if not task_file:
            raise VlagentError("name a task file")
        with self._lock:
            busy = self.console.runs.in_process()
            task = load_task(Path(task_file).expanduser())
            if busy is not None and (data.get("attended") or rules_of(task.allow) is not None):
                raise VlagentError(f"a run with approvals needs the console's own process, where {busy.task} runs; "
                                   "stop it or wait for its end first")
            max_steps = data.get("max_steps")
            if max_steps is not None and (not isinstance(max_steps, int) or max_steps < 1):
                raise VlagentError("max_steps must be a whole number of at least 1")
            model, backend = str(data.get("model") or self.console.defaults["model"]), str(data.get("backend") or "auto")
            base_url = data.get("base_url") or None
            folder = new_trace_dir(self.console.runs_dir, task.name)
            check_trace_dir(folder)
            if busy is not None:  # another process, attached to this console
                argv = ["run", task_file, "--trace", str(folder), "--model", model, "--backend", backend]
                argv += ["--base-url", str(base_url)] if base_url else []
                argv += ["--max-steps", str(max_steps)] if max_steps else []
                proc = self.children[folder.resolve()] = self._spawn(argv, folder.with_name(folder.name + ".log"))
            else:
                live, thread = start_watched(self.console, task, make_backend(model, backend, base_url), folder,
                                             attended=bool(data.get("attended")), max_steps=max_steps)
                self.threads.append(thread)
                return live
        return self._attached(folder, proc)

    def start_suite(self, data: dict) -> Path:
        """`vlagent suite PATHS` as a process of its own; it and its items report to this console.
        Returns the suite's folder."""
        from agent.trace import new_trace_dir

        paths = [p for p in str(data.get("paths") or "").split() if p]
        if not paths:
            raise VlagentError("name the task files or folders of the suite")
        workers = data.get("workers") or 1
        if not isinstance(workers, int) or not 1 <= workers <= 16:
            raise VlagentError("workers must be a whole number from 1 to 16")
        out = new_trace_dir(self.console.runs_dir, "suite")
        argv = ["suite", *paths, "--out", str(out), "--workers", str(workers),
                "--model", str(data.get("model") or self.console.defaults["model"])]
        argv += ["--backend", str(data["backend"])] if data.get("backend") not in (None, "", "auto") else []
        argv += ["--base-url", str(data["base_url"])] if data.get("base_url") else []
        with self._lock:
            self.suites[out.resolve()] = self._spawn(argv, out.with_name(out.name + ".log"))
        return out

    def _spawn(self, argv: list[str], log: Path) -> subprocess.Popen:
        from agent.suite.child import VLAGENT

        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "wb") as out:
            proc = subprocess.Popen([*VLAGENT, *argv], stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env={**os.environ, **self.console.relay.env()}, start_new_session=True)
        return proc

    def _attached(self, folder: Path, proc: subprocess.Popen):
        """The run's LiveRun once its process attached (its session began)."""
        deadline, target = time.monotonic() + ATTACH_TIMEOUT_S, str(folder.resolve())
        while time.monotonic() < deadline:
            run_id = self.console.runs.id_of_folder(target)
            if run_id is not None:
                return self.console.runs.get(run_id)
            if proc.poll() is not None:
                lines = folder.with_name(folder.name + ".log").read_text(errors="replace").strip().splitlines()
                raise VlagentError(f"the run's process ended before it started: {lines[-1] if lines else 'no output'}")
            time.sleep(0.05)
        raise VlagentError(f"the run's process did not start within {ATTACH_TIMEOUT_S:g} s")

    def reap(self, grace_s: float) -> None:
        """End the processes this console started: a suite is interrupted (SIGTERM: its items end
        `aborted`, its summary written); a run, stopped through the console already, gets the grace
        (then SIGTERM, which it also records as `aborted`)."""
        for proc in self.suites.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for proc in [*self.children.values(), *self.suites.values()]:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()


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
