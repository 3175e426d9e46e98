"""Child processes that cannot outlive us: each in its own process group (so teardown reaches
its children too) with PR_SET_PDEATHSIG (so the kernel kills it even when we die by SIGKILL)."""
from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import time

PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
TERM_GRACE_S = 2.0  # how long a process group gets to exit after SIGTERM before SIGKILL
KILL_WAIT_S = 2.0  # how long we wait for the group to vanish after SIGKILL
POLL_S = 0.02


def _die_with_parent(parent_pid: int):
    """preexec_fn: runs in the child between fork and exec."""
    libc = ctypes.CDLL(None, use_errno=True)

    def preexec() -> None:
        # The mask survives exec: a child spawned while we defer Ctrl-C would ignore SIGTERM.
        signal.pthread_sigmask(signal.SIG_SETMASK, [])
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        # The parent may have died between fork and prctl: then nobody will ever signal us.
        if os.getppid() != parent_pid:
            os._exit(1)

    return preexec


def spawn(argv: list[str], **kwargs) -> subprocess.Popen:
    """Popen in a new session (own process group) that dies with this process.

    Note: the death signal fires when the *thread* that spawned it exits, so spawn from a
    thread that lives as long as the child should (the main thread in the CLI)."""
    return subprocess.Popen(
        argv, start_new_session=True, preexec_fn=_die_with_parent(os.getpid()), **kwargs
    )


def group_alive(pgid: int) -> bool:
    """Does the group have a member that is not a zombie? (Orphaned zombies wait for init to
    reap them, which can take a second; they hold no resources.)"""
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):  # PermissionError: pgid reused by someone else
        return False
    return any(_running_in_group(entry, pgid) for entry in os.scandir("/proc") if entry.name.isdigit())


def _running_in_group(entry: os.DirEntry, pgid: int) -> bool:
    try:
        with open(f"{entry.path}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()  # after "pid (comm)"
    except OSError:
        return False
    return int(fields[2]) == pgid and fields[0] != b"Z"  # fields: state ppid pgrp ...


def _wait_group(proc: subprocess.Popen, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while True:
        proc.poll()  # reap the leader, else its zombie keeps the group "alive"
        if not group_alive(proc.pid):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL_S)


def kill_group(proc: subprocess.Popen, grace_s: float = TERM_GRACE_S) -> None:
    """SIGTERM the process group of `proc` (its pgid is its pid), SIGKILL after `grace_s`,
    and reap the leader. Safe to call twice and on groups that are already gone."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, KILL_WAIT_S)):
        proc.poll()
        if not group_alive(proc.pid):
            break
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            break
        if _wait_group(proc, wait_s):
            break
    try:
        proc.wait(timeout=KILL_WAIT_S)
    except subprocess.TimeoutExpired:  # unkillable (D state): nothing more we can do
        pass


def describe(argv: list[str]) -> str:
    """A short name for a command in messages: the interpreter path cut to its basename."""
    if not argv:
        return ""
    return " ".join([os.path.basename(argv[0]), *argv[1:]])
