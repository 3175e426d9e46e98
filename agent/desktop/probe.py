"""What runs behind a window: the gate's process-tree verdict (actions.gate, agent.desktop.x11).

A window belongs to an X client whose process id the X server knows (the X-Resource extension; the
window's _NET_WM_PID otherwise). From that process down through all its descendants we look for
what makes typed text a command:
- a process holding the master side of a pseudo-terminal (/dev/ptmx): a terminal emulator of any
  name, an editor's terminal pane, a `script` or `expect` wrapper;
- a shell anywhere in the tree (a `sh -c` wrapper, a shell the app spawned);
- an interpreter (python3, irb, node, psql, ...) whose standard input is a terminal: a REPL.
A process we cannot read (another user's) makes the verdict unknown: the gate then refuses.
"""
from __future__ import annotations

import os
import time

from actions.policy import INTERPRETERS, SHELLS

MAX_PROCESSES = 512  # a window's process tree is searched this far (Chromium: ~10 processes)
MAX_FDS = 4096  # descriptors looked at per process
TABLE_TTL_S = 0.5  # how long a scan of the process table stands (a shell born since is seen after)


class Unreadable(Exception):
    """The owner's process cannot be inspected (another user's, gone): the verdict is unknown."""


_table: tuple[float, dict[int, list[int]]] | None = None  # (when, parent -> children): one scan serves a moment


def _children() -> dict[int, list[int]]:
    """parent pid -> child pids, from one scan of /proc (~35 ms on a loaded 2-core machine); a scan
    younger than TABLE_TTL_S is used again (a drag's two ends, the next step's check)."""
    global _table
    now = time.monotonic()
    if _table is not None and now - _table[0] < TABLE_TTL_S:
        return _table[1]
    kids: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"{entry.path}/stat", "rb") as f:
                stat = f.read()
            ppid = int(stat.rsplit(b")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        kids.setdefault(ppid, []).append(int(entry.name))
    _table = (now, kids)
    return kids


def _comm(pid: int) -> str:
    with open(f"/proc/{pid}/comm", "rb") as f:
        return f.read().decode(errors="replace").strip()


def _fds(pid: int) -> list[str]:
    out = []
    with os.scandir(f"/proc/{pid}/fd") as it:
        for n, entry in enumerate(it):
            if n >= MAX_FDS:
                break
            try:
                out.append(os.readlink(entry.path))
            except OSError:
                continue
    return out


def _reads_terminal(pid: int) -> bool:
    try:
        target = os.readlink(f"/proc/{pid}/fd/0")
    except OSError:
        return False
    return target.startswith(("/dev/pts/", "/dev/tty")) and target != "/dev/tty"


def inspect(pid: int) -> dict:
    """{"processes": names, "pty": bool, "repl": name or ""} for `pid` and its descendants.
    Raises Unreadable when the owner itself cannot be read."""
    try:
        names = [_comm(pid)]
        owner_fds = _fds(pid)
    except OSError as e:
        raise Unreadable(f"process {pid}: {e.strerror or type(e).__name__}") from None
    pty = any(t in ("/dev/ptmx", "/dev/pts/ptmx") for t in owner_fds)
    repl = ""
    kids = _children()
    queue, seen = list(kids.get(pid, ())), {pid}
    while queue and len(seen) < MAX_PROCESSES:
        p = queue.pop(0)
        if p in seen:
            continue
        seen.add(p)
        queue.extend(kids.get(p, ()))
        try:
            name = _comm(p)
        except OSError:
            continue  # it just ended
        names.append(name)
        if not pty:
            try:
                pty = any(t in ("/dev/ptmx", "/dev/pts/ptmx") for t in _fds(p))
            except OSError:
                pass  # a descendant we may not read (a setuid helper) holds nothing of ours
        if not repl and (name.lower() in SHELLS or INTERPRETERS.fullmatch(name)) and _reads_terminal(p):
            repl = name
    return {"processes": tuple(names), "pty": pty, "repl": repl}


__all__ = ["Unreadable", "inspect"]
