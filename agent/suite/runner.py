"""`vlagent suite`: run many task files (with a model) and traces (by replay) unattended, each in its
own child process and its own sandbox display, N at a time; then JUnit XML and an HTML report.

Why a process per item: pyautogui binds one X display per process at import, and a crashed or hung
item must never take the suite down. agent.suite.items finds and shards the items,
agent.suite.child runs and cleans up one of them, this module schedules them and is the command.
"""
from __future__ import annotations

import json
import os
import signal
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

from agent.errors import VlagentError
from agent.task import read_yaml
from agent.suite.child import (TASK_GRACE_S, TRACE_TIMEOUT_S, VLAGENT, Child, Options,  # noqa: F401 (API)
                               default_command, model_for)
from agent.suite.items import Item, Outcome, discover, parse_shard, take_shard  # noqa: F401 (API)
from agent.trace import count_steps

POLL_S = 0.1  # how often the scheduler looks at its children


# ---------------------------------------------------------------- the scheduler

def expected_steps(item: Item) -> int:
    """A cheap guess at how long an item runs: a trace's recorded steps, a task's max_steps."""
    try:
        if item.kind == "trace":
            return count_steps(item.path)
        return int((read_yaml(item.path) or {}).get("max_steps", 20))
    except (VlagentError, ValueError, TypeError, AttributeError):
        return 0


class _Stop(Exception):
    """SIGTERM or SIGINT on the suite: stop every child cleanly."""


def _raise_stop(signum, frame):
    raise _Stop()


def run_suite(items: list[Item], out: Path, opts: Options, workers: int = 1, progress=None,
              command: Callable[[Item, Path, Options], list[str]] = default_command,
              server=None) -> tuple[list[Outcome], bool]:
    """Run the items N at a time. Returns the final outcome per item (in item order) and whether
    the suite was interrupted. Never raises for a failing item. `server` (agent.serve.process.
    ServeProcess) is the model server the task items use: once it is gone, the task items not yet
    started fail with its reason and failed ones are not retried; traces still replay."""
    from agent.suite.progress import Progress

    out = Path(out).resolve()  # children may run elsewhere; their trace paths must not depend on cwd
    progress = progress or Progress(len(items))
    from agent.ui.relay import CONSOLE_ENV, SuiteRelay

    console = os.environ.get(CONSOLE_ENV)
    if console:  # a console watches: the suite tells it how far it is; the items (same environment) attach to it
        progress = SuiteRelay(progress, console, name=out.name, out=out)
    pending = sorted(items, key=expected_steps, reverse=True)  # longest first: no long straggler at the end
    attempts = {it: 0 for it in items}
    running: list[Child] = []
    final: dict[Item, Outcome] = {}
    handled = (signal.SIGINT, signal.SIGTERM) if threading.current_thread() is threading.main_thread() else ()
    old = {s: signal.signal(s, _raise_stop) for s in handled}
    interrupted = False
    # Signals are held while the scheduler changes its state (spawning, reaping) and let in only
    # while it sleeps, so Ctrl-C never loses track of a child it had just started or finished.
    signal.pthread_sigmask(signal.SIG_BLOCK, handled)
    try:
        with progress:
            while pending or running:
                dead = server.poll() if server is not None else None
                for it in [i for i in pending if dead and i.kind == "task"]:
                    pending.remove(it)
                    final[it] = Outcome(it, "error", f"the model server {dead}", attempts=attempts[it])
                while pending and len(running) < workers:
                    it = pending.pop(0)
                    attempts[it] += 1
                    child = Child(it, attempts[it], out, opts, command)
                    running.append(child)
                    progress.started(child)
                for child in list(running):
                    if not child.poll():
                        progress.update(child)
                        continue
                    running.remove(child)
                    outcome = child.outcome()
                    if dead and not outcome.passed and child.item.kind == "task":
                        outcome = replace(outcome, reason=f"the model server {dead}; {outcome.reason}")
                    retry = not outcome.passed and attempts[child.item] <= opts.retries \
                        and not (dead and child.item.kind == "task")
                    progress.finished(child, outcome, retrying=retry)
                    final[child.item] = outcome  # the last attempt's, should the suite stop mid-retry
                    if retry:
                        pending.insert(0, child.item)
                signal.pthread_sigmask(signal.SIG_UNBLOCK, handled)
                time.sleep(POLL_S)
                signal.pthread_sigmask(signal.SIG_BLOCK, handled)
    except (_Stop, KeyboardInterrupt):
        interrupted = True
        signal.pthread_sigmask(signal.SIG_BLOCK, handled)  # a second Ctrl-C must not cut the clean-up short
        for child in running:
            child.terminate("interrupted")
        while running:
            for child in [c for c in running if c.poll()]:
                running.remove(child)
                final[child.item] = child.outcome()
                progress.finished(child, final[child.item])
            time.sleep(POLL_S)
    finally:
        for s, h in old.items():
            signal.signal(s, signal.SIG_IGN)  # drop what came in during the clean-up, then restore
        signal.pthread_sigmask(signal.SIG_UNBLOCK, handled)
        for s, h in old.items():
            signal.signal(s, h)
    for it in items:
        final.setdefault(it, Outcome(it, "skipped", "the suite was interrupted before it ran"))
    return [final[it] for it in items], interrupted


def write_summary(outcomes: list[Outcome], root: Path, out: Path) -> Path:
    rows = [{"name": o.item.name, "kind": o.item.kind, "path": o.item.rel, "status": o.status,
             "reason": o.reason, "duration_s": o.duration_s, "attempts": o.attempts, "steps": o.steps,
             "trace": str(o.trace) if o.trace else None} for o in outcomes]
    path = out / "suite.json"
    path.write_text(json.dumps({"root": str(root), "items": rows}, indent=2), encoding="utf-8")
    return path
