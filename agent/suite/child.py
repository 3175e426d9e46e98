"""One suite item run as a child process: its command line, its deadline, and the clean-up.

Each child runs in its own process group and carries a marker in its environment, inherited by
every process it starts, so whatever it leaves behind (an Xvfb in its own session, an app) can be
found and killed even after the child itself is gone.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from agent.errors import VlagentError
from agent.task import read_yaml
from agent.run.status import ended_from_outside
from agent.suite.items import Item, Outcome
from agent.trace import count_steps, load_result
from sandbox.procs import with_env

KILL_GRACE_S = 5.0  # after SIGTERM, how long a child gets to tear down its sandbox before SIGKILL
TASK_GRACE_S = 60.0  # on top of a task's own timeout_s: interpreter start, sandbox, model load
TRACE_TIMEOUT_S = 300.0  # default bound on one replay
PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
MARKER_ENV = "VLAGENT_SUITE_ITEM"  # inherited by every process a child starts
# The vlagent CLI, run by this interpreter (works without the console script on PATH).
VLAGENT = [sys.executable, "-c", "import sys; sys.argv[0] = 'vlagent'; from agent.cli import main; main()"]


@dataclass
class Options:
    model: str | None = None  # for tasks; {dir} and {name} are the task file's folder and stem
    backend: str | None = None
    base_url: str | None = None
    timeout_s: float | None = None  # per item; None: the task's timeout_s + TASK_GRACE_S
    retries: int = 0
    extra_env: dict[str, str] = field(default_factory=dict)


def model_for(item: Item, model: str) -> str:
    return model.replace("{dir}", str(item.path.parent)).replace("{name}", item.path.stem)


def default_command(item: Item, trace_dir: Path, opts: Options) -> list[str]:
    if item.kind == "trace":
        return [*VLAGENT, "replay", str(item.path), "--trace", str(trace_dir)]
    cmd = [*VLAGENT, "run", str(item.path), "--trace", str(trace_dir)]
    if opts.model:
        cmd += ["--model", model_for(item, opts.model)]
    if opts.backend:
        cmd += ["--backend", opts.backend]
    if opts.base_url:
        cmd += ["--base-url", opts.base_url]
    return cmd


def item_timeout(item: Item, opts: Options) -> float:
    if opts.timeout_s is not None:
        return opts.timeout_s
    if item.kind == "trace":
        return TRACE_TIMEOUT_S
    try:
        data = read_yaml(item.path)
        return float(data.get("timeout_s", 300)) + TASK_GRACE_S
    except (VlagentError, TypeError, ValueError, AttributeError):
        return 300 + TASK_GRACE_S


def _marked_pids(marker: str) -> list[int]:
    """Live processes whose environment carries `marker` (the child and all it started)."""
    return with_env(MARKER_ENV, marker)


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def sweep(marker: str) -> list[int]:
    """SIGKILL whatever a finished child left behind (e.g. an Xvfb in its own session)."""
    pids = [p for p in _marked_pids(marker) if p != os.getpid()]
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    return pids


def _child_setup(parent_pid: int):
    """preexec_fn: runs in the child between fork and exec."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)

    def setup() -> None:
        # The signal mask is inherited: a child that blocks SIGTERM could not tear down when asked.
        signal.pthread_sigmask(signal.SIG_SETMASK, [])
        # Should the suite itself die (SIGKILL, OOM), its children are asked to stop, not left running.
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent_pid:  # the suite died between fork and prctl
            os._exit(1)

    return setup


class Child:
    """One attempt at one item: a process group with a deadline."""

    def __init__(self, item: Item, attempt: int, out: Path, opts: Options,
                 command: Callable[[Item, Path, Options], list[str]]):
        self.item, self.attempt = item, attempt
        suffix = "" if attempt == 1 else f"~{attempt}"
        self.trace = out / "traces" / f"{item.slug}{suffix}"
        self.log = out / "logs" / f"{item.slug}{suffix}.log"
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self.marker = uuid.uuid4().hex
        self.timeout_s = item_timeout(item, opts)
        env = {**os.environ, **opts.extra_env, MARKER_ENV: self.marker}
        self.started = time.monotonic()
        self.killed_for: str | None = None  # "timeout" or "interrupted" when the suite ended it
        self.term_at: float | None = None  # when the suite sent SIGTERM
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(command(item, self.trace, opts), stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=env, start_new_session=True,
                                         preexec_fn=_child_setup(os.getpid()))

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def steps(self) -> int:
        return count_steps(self.trace)

    def poll(self) -> bool:
        """True when finished. Past its deadline a child gets SIGTERM, then SIGKILL after a bound;
        this never blocks, so the other children keep being watched meanwhile."""
        if self.proc.poll() is not None:
            return True
        if self.term_at is None:
            if self.elapsed > self.timeout_s:
                self.terminate("timeout")
        elif time.monotonic() - self.term_at > KILL_GRACE_S:
            _signal_group(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            return True
        return False

    def terminate(self, why: str) -> None:
        """SIGTERM the whole group: the child's handlers tear down its sandbox."""
        if self.term_at is None:
            self.killed_for, self.term_at = why, time.monotonic()
            _signal_group(self.proc.pid, signal.SIGTERM)

    def outcome(self) -> Outcome:
        swept = sweep(self.marker)
        _signal_group(self.proc.pid, signal.SIGKILL)  # the group outlives its leader
        code = self.proc.returncode
        result = None
        try:
            result = load_result(self.trace)
        except (OSError, ValueError):
            pass
        if self.killed_for is not None:
            status, reason = ended_from_outside(self.killed_for, f"{self.timeout_s:g} s")
        elif result is not None:
            status, reason = result.status, result.reason
        else:
            status, reason = ended_from_outside("died", f"exited with code {code} without a result: {self._last_line()}")
        _complete_trace(self.trace, status, reason, result)
        return Outcome(self.item, status, reason, self.trace, self.log, round(self.elapsed, 3),
                       self.attempt, self.steps(), swept)

    def _last_line(self) -> str:
        try:
            lines = [ln.strip() for ln in self.log.read_text(errors="replace").splitlines() if ln.strip()]
        except OSError:
            return "no output"
        return lines[-1][:300] if lines else "no output"


def _complete_trace(trace: Path, status: str, reason: str, result) -> None:
    """Leave a complete trace folder whatever happened: steps.jsonl and a result.json that says
    how it ended (the suite's verdict wins when the suite ended the child)."""
    trace.mkdir(parents=True, exist_ok=True)
    (trace / "steps.jsonl").touch()
    if result is not None and result.status == status and result.reason == reason:
        return
    data = result.model_dump() if result is not None else {}
    data.update(status=status, reason=reason)
    data.setdefault("ended", time.time())
    (trace / "result.json").write_text(json.dumps(data, indent=2), encoding="utf-8")
