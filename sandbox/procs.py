"""Child processes that cannot outlive us: each in its own process group (so teardown reaches
its children too) with PR_SET_PDEATHSIG (so the kernel kills it even when we die by SIGKILL).

A program that leaves its group (setsid, a daemon's double fork) escapes both, so a sandbox also
tags everything it starts with an environment variable (TAG_VAR, inherited by every descendant)
and ends whatever carries its tag at teardown (kill_tagged); vlagent is a child subreaper, so such
orphans are re-parented to it, not to init, and it reaps them."""
from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import time

PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
PR_SET_CHILD_SUBREAPER = 36
TAG_VAR = "VLAGENT_SANDBOX"
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


def sandbox_tag(display: str, workdir) -> str:
    """The tag of one sandbox's processes: this process, its display and its workdir."""
    return f"{os.getpid()}:{display}:{workdir}"


def become_subreaper() -> None:
    """Orphans of our descendants (a daemon's double fork) become our children instead of init's."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def tagged(tag: str) -> list[int]:
    """PIDs of the live processes whose environment holds TAG_VAR=tag."""
    return with_env(TAG_VAR, tag)


def with_env(var: str, value: str) -> list[int]:
    """PIDs of the live processes (not zombies, not this one) whose environment holds var=value:
    the one /proc scanner (sandboxes, the suite's children, the tests' leak checks)."""
    needle = f"{var}={value}".encode() + b"\0"
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            with open(f"{entry.path}/environ", "rb") as f:
                env = f.read()
            if (b"\0" + env).find(b"\0" + needle) >= 0 and _state(entry.path) != b"Z":
                found.append(int(entry.name))
        except OSError:  # gone, or not ours
            continue
    return found


def _state(proc_dir: str) -> bytes:
    with open(f"{proc_dir}/stat", "rb") as f:
        return f.read().rsplit(b")", 1)[1].split()[0]


def kill_tagged(tag: str, grace_s: float = TERM_GRACE_S) -> list[int]:
    """End every process carrying `tag` (SIGTERM, then SIGKILL after `grace_s`) and reap those that
    became our children. Returns the PIDs it found."""
    found = tagged(tag)
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, KILL_WAIT_S)):
        left = tagged(tag)
        if not left:
            break
        for pid in left:
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and tagged(tag):
            _reap(found)
            time.sleep(POLL_S * 5)
    _reap(found)
    return found


def _reap(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:  # not our child (still re-parented elsewhere) or reaped already
            pass
