"""The accessibility tree of a display (AT-SPI): what GTK, Qt and Chromium apps say their widgets are.

A reader process per display (`python -m agent.replay.atspi`, started on first use) walks the tree on
request and answers one JSON line: the showing elements with role, name, states, screen box, parent
and app. It runs apart from us because libatspi binds a process to one display's bus for its life,
and a run, a test session or the benchmark meet many displays. Reading costs ~10 ms for a dialog,
~100 ms for a web page. Everything here degrades to "no tree" (an empty list): without PyGObject, an
app that publishes nothing (Tk, games, remote screens) or a bus that is not there.

    tree = Tree(":7"); nodes = tree.nodes(); ...; tree.close()
"""
from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

READ_TIMEOUT_S = 4.0  # one walk; an app that hangs must not hang the replay
START_TIMEOUT_S = 8.0
MAX_NODES = 3000
MAX_CHILDREN = 400
STATES = ("focused", "checked", "selected", "pressed", "expanded", "sensitive", "editable", "focusable",
          "active", "indeterminate")
OFFSCREEN = -(2 ** 30)  # closed popups report boxes at -2^31


@dataclass
class Node:
    i: int
    parent: int  # -1 for an application
    role: str
    name: str
    states: tuple[str, ...]
    box: tuple[int, int, int, int]  # x, y, w, h on the screen
    app: str
    depth: int
    text: str = ""  # an editable field's content (its first characters)

    def contains(self, px) -> bool:
        x, y, w, h = self.box
        return x <= px[0] < x + w and y <= px[1] < y + h

    @property
    def centre(self) -> tuple[int, int]:
        x, y, w, h = self.box
        return x + w // 2, y + h // 2


class Tree:
    """A lazily started reader of `display`'s tree. nodes() is [] when there is no tree."""

    def __init__(self, display: str):
        self.display = display
        self.proc: subprocess.Popen | None = None
        self.broken = False
        self.lock = threading.Lock()

    def nodes(self) -> list[Node]:
        with self.lock:
            if self.broken:
                return []
            try:
                if self.proc is None:
                    self._start()
                self.proc.stdin.write(b"tree\n")
                self.proc.stdin.flush()
                line = _readline(self.proc.stdout, READ_TIMEOUT_S)
            except (OSError, ValueError):
                line = b""
            if not line:
                self._give_up()
                return []
            return [Node(**{**d, "states": tuple(d["states"]), "box": tuple(d["box"])}) for d in json.loads(line)]

    def _start(self) -> None:
        env = {**os.environ, "DISPLAY": self.display}
        env.pop("AT_SPI_BUS_ADDRESS", None)  # the display's own bus, from its root window
        self.proc = subprocess.Popen([sys.executable, "-m", "agent.replay.atspi"], env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        if _readline(self.proc.stdout, START_TIMEOUT_S).strip() != b"ready":
            raise OSError("the AT-SPI reader did not start")

    def _give_up(self) -> None:
        """No tree on this display (or a reader that stopped answering): pixels and text only."""
        self.broken = True
        self.close()

    def close(self) -> None:
        if self.proc is not None:
            try:
                self.proc.kill()
                self.proc.wait(2.0)
            except (OSError, subprocess.TimeoutExpired):
                pass
            for f in (self.proc.stdin, self.proc.stdout):
                try:
                    f.close()
                except OSError:
                    pass
            self.proc = None

    def __enter__(self) -> "Tree":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _readline(stream, timeout_s: float) -> bytes:
    fd = stream.fileno()
    deadline, buf = time.monotonic() + timeout_s, b""
    while not buf.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0:
            return b""
        ready, _, _ = select.select([fd], [], [], min(left, 0.1))
        if ready:
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                return b""
            buf += chunk
    return buf


# ------------------------------------------------------------------------------ the reader process

def _walk() -> list[dict]:
    from gi.repository import Atspi

    out: list[dict] = []

    def visit(acc, parent: int, depth: int, app: str) -> None:
        if len(out) >= MAX_NODES:
            return
        try:
            states = acc.get_state_set()
            if depth > 1 and not states.contains(Atspi.StateType.SHOWING):
                return  # a closed menu or a hidden page: not on screen, nor are its children
            role = acc.get_role_name()
            name = acc.get_name() or ""
            ext = acc.get_extents(Atspi.CoordType.SCREEN) if depth > 0 else None
            box = (ext.x, ext.y, ext.width, ext.height) if ext is not None else (0, 0, 0, 0)
            text = ""
            if states.contains(Atspi.StateType.EDITABLE):
                iface = acc.get_text_iface()
                if iface is not None:
                    text = Atspi.Text.get_text(iface, 0, 200) or ""
            n = acc.get_child_count()
        except Exception:  # the element went away while we looked (a closing popup)
            return
        if box[0] <= OFFSCREEN or box[1] <= OFFSCREEN:
            return
        here = len(out)
        out.append({"i": here, "parent": parent, "role": role, "name": name, "box": list(box),
                    "states": [s for s in STATES if states.contains(getattr(Atspi.StateType, s.upper()))],
                    "app": app or name, "depth": depth, "text": text})
        for k in range(min(n, MAX_CHILDREN)):
            try:
                child = acc.get_child_at_index(k)
            except Exception:
                continue
            if child is not None:
                visit(child, here, depth + 1, app or name)

    desktop = Atspi.get_desktop(0)
    for k in range(desktop.get_child_count()):
        app = desktop.get_child_at_index(k)
        if app is not None:
            visit(app, -1, 1, "")
    return [n for n in out if n["depth"] >= 1]


def main() -> None:
    try:
        import gi

        gi.require_version("Atspi", "2.0")
        from gi.repository import Atspi

        Atspi.set_timeout(1500, 3000)  # ms: a hung app costs this, not D-Bus's 25 s
    except (ImportError, ValueError):
        return  # no PyGObject or no typelib: the client sees no "ready" and works without a tree
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    for line in sys.stdin:
        if line.strip() == "tree":
            try:
                nodes = _walk()
            except Exception:  # the bus went away: an empty tree, not a crash
                nodes = []
            sys.stdout.write(json.dumps(nodes, separators=(",", ":")) + "\n")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
