"""The accessibility tree of a display (AT-SPI): what GTK, Qt and Chromium apps say their widgets are.

A reader process per display (`python -m sandbox.atspi`, started on first use) walks the tree on
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
READER_IDLE_S = 300.0  # a reader nobody asked for this long ends
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
        self.pending = False  # a prefetched walk's answer is still to be read
        self.ticket = 0

    def start(self) -> None:
        """Start the reader now (a few hundred ms), not on the first walk."""
        with self.lock:
            if self.proc is None and not self.broken:
                try:
                    self._start()
                except (OSError, ValueError):
                    self._give_up()

    def nodes(self) -> list[Node]:
        """The tree now (a walk started by this call); [] when there is none."""
        return self.read() or []

    def read(self) -> list[Node] | None:
        """The tree now, or None when it cannot be read (no reader, no bus, a walk that failed): what
        must not go on without a tree (masking a frame, agent.desktop.mask) tells the two apart."""
        with self.lock:
            self._drain()
            return self._read() if self._ask() else None

    def prefetch(self) -> int:
        """Start a walk now and return its ticket: take(ticket) gets it later, while the caller did
        other work (the walk takes as long as capturing and comparing a screen)."""
        with self.lock:
            self._drain()
            self.pending = self._ask()
            self.ticket += 1
            return self.ticket

    def take(self, ticket: int) -> list[Node]:
        """The walk prefetch() started, or a fresh one when it was given away already."""
        with self.lock:
            if self.pending and ticket == self.ticket:
                self.pending = False
                return self._read() or []
        return self.nodes()

    def _ask(self) -> bool:
        if self.broken:
            return False
        try:
            if self.proc is None:
                self._start()
            self.proc.stdin.write(b"tree\n")
            self.proc.stdin.flush()
            return True
        except (OSError, ValueError):
            self._give_up()
            return False

    def _read(self) -> list[Node] | None:
        try:
            line = _readline(self.proc.stdout, READ_TIMEOUT_S) if self.proc is not None else b""
        except (OSError, ValueError):
            line = b""
        if not line:
            self._give_up()
            return None
        data = json.loads(line)
        if data is None:  # the walk failed (the bus went away): no tree this time
            return None
        return [Node(**{**d, "states": tuple(d["states"]), "box": tuple(d["box"])}) for d in data]

    def _drain(self) -> None:
        """An old prefetched walk nobody took: read it away, it is not the tree now."""
        if self.pending:
            self.pending = False
            self._read()

    def _start(self) -> None:
        env = {**os.environ, "DISPLAY": self.display}
        env.pop("AT_SPI_BUS_ADDRESS", None)  # the display's own bus, from its root window
        self.proc = subprocess.Popen([sys.executable, "-m", "sandbox.atspi"], env=env,
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


# ------------------------------------------------------------------------------ an element as evidence

# Roles a person acts on; a hit on a text or icon inside one of these means the control itself.
ACTIONABLE = {"push button", "toggle button", "radio button", "check box", "menu item", "radio menu item",
              "check menu item", "menu", "link", "combo box", "entry", "text", "password text", "spin button",
              "list item", "table cell", "page tab", "slider", "tree item", "icon", "document web",
              "document text", "terminal", "canvas", "tool bar", "editbar"}
MENU_ITEMS = {"menu item", "radio menu item", "check menu item", "tearoff menu item"}
LABELS = {"label", "static", "heading", "paragraph", "caption"}
DIALOG_ROLES = {"dialog", "alert", "file chooser", "color chooser", "font chooser"}
WINDOW_ROLES = {"frame", "dialog", "window", "alert", "file chooser", "color chooser", "font chooser"}
CONTROL_GROWTH = 8  # a control is at most this much larger than the text or icon inside it
LABEL_REACH_PX = 220  # a label further than this from an element does not name it
NAME_AGREES = 0.8  # fuzzy similarity of two names that say the same (a '*' or a count changed)
WIN_MARGIN = 0.15  # the best candidate must beat the runner-up by this much ...
MIN_SCORE = 0.6  # ... and score at least this


def _norm(s: str) -> str:
    import re

    # Paths, numbers of unsaved changes and markers differ per run: compare words only.
    s = re.sub(r"(/[^\s/]+)+/?", " ", s or "")
    return " ".join(re.sub(r"[^\w]+", " ", s.lower()).split())


def similar(a: str, b: str) -> float:
    import difflib

    if (a or "").strip().lower() == (b or "").strip().lower():
        return 1.0
    a, b = _norm(a), _norm(b)  # words only; a name of signs alone ("+", "-") must match exactly
    if not a or not b:
        return 0.0
    if a == b:
        return 0.95
    return difflib.SequenceMatcher(None, a, b).ratio()


def _window_of(nodes: list[Node], n: Node) -> Node | None:
    while n.parent >= 0:
        p = nodes[n.parent]
        if p.parent < 0:  # n is the app's top-level: its window
            return n
        n = p
    return None


def _chain(nodes: list[Node], n: Node) -> list[Node]:
    out = [n]
    while out[-1].parent >= 0:
        out.append(nodes[out[-1].parent])
    return out


def element_at(nodes: list[Node], px) -> Node | None:
    """The element a click at px acts on: the deepest showing one under it (the topmost window's),
    or the control around it when that is a text or icon inside a control."""
    hits = [n for n in nodes if n.depth >= 3 and n.box[2] > 0 and n.box[3] > 0 and n.contains(px)]
    if not hits:
        return None
    # An open menu is drawn over everything (its items show only while it is open). Else the topmost
    # window under the point: a dialog over a frame, a later window over an earlier one (the tree has no
    # stacking order); within it the deeper element, then the smaller.
    menus = [n for n in hits if n.role in MENU_ITEMS]
    if not menus:
        wins = {id(w): w for w in (_window_of(nodes, n) for n in hits) if w is not None}
        if wins:
            top = max(wins.values(), key=lambda w: (w.role in DIALOG_ROLES, w.i))
            hits = [n for n in hits if _window_of(nodes, n) is top] or hits
    best = max(menus or hits, key=lambda n: (n.depth, -n.box[2] * n.box[3], n.i))
    area = max(best.box[2] * best.box[3], 1)
    for up in _chain(nodes, best):
        # A control around the hit, not the page or pane that holds everything.
        if up.role in WINDOW_ROLES or up.box[2] * up.box[3] > CONTROL_GROWTH * area:
            break
        if up.role in ACTIONABLE and up.contains(px):
            return up
    return best


def name_at(nodes: list[Node], px) -> str:
    """What a click at px lands on, in words: "push button 'OK'", "text '' by 'Name'"."""
    n = element_at(nodes, px)
    if n is None:
        return ""
    by = [l["text"] for l in _labels(nodes, n, _window_of(nodes, n)) if l["side"] in ("left", "above")]
    return f"{n.role} {n.name!r}" + (f" by {by[0]!r}" if by and not n.name else "")


def _labels(nodes: list[Node], n: Node, win: Node | None) -> list[dict]:
    """The nearest label-like texts left of, above, right of and below n, in its window."""
    x, y, w, h = n.box
    cx, cy = n.centre
    best: dict[str, tuple[float, Node]] = {}
    for m in nodes:
        if m.i == n.i or m.role not in LABELS or not m.name.strip() or m.app != n.app:
            continue
        if win is not None and not _inside(m.box, win.box):
            continue
        mx, my = m.centre
        if abs(my - cy) <= max(h, m.box[3]) / 2 + 4:  # the same row
            side = "left" if mx < cx else "right"
            d = (x - (m.box[0] + m.box[2])) if side == "left" else (m.box[0] - (x + w))
        elif abs(mx - cx) <= max(w, m.box[2]) / 2 + 40 or m.box[0] <= x <= m.box[0] + m.box[2] + 40:
            side = "above" if my < cy else "below"
            d = (y - (m.box[1] + m.box[3])) if side == "above" else (m.box[1] - (y + h))
        else:
            continue
        if -4 <= d <= LABEL_REACH_PX and (side not in best or d < best[side][0]):
            best[side] = (d, m)
    return [{"text": m.name.strip(), "side": side, "gap": round(d)} for side, (d, m) in best.items()]


def label(nodes: list[Node], n: Node) -> str:
    """The text that labels n: the nearest label left of it, else above it ("" when none)."""
    near = {l["side"]: l["text"] for l in _labels(nodes, n, _window_of(nodes, n))}
    return near.get("left") or near.get("above") or ""


def _inside(box, outer) -> bool:
    return outer[0] <= box[0] + box[2] / 2 <= outer[0] + outer[2] and outer[1] <= box[1] + box[3] / 2 <= outer[1] + outer[3]


def describe(nodes: list[Node], px) -> dict | None:
    """The element under px as evidence (None when no element is there: no tree, or Tk)."""
    n = element_at(nodes, px)
    if n is None:
        return None
    win = _window_of(nodes, n)
    x, y, w, h = n.box
    wbox = win.box if win is not None else n.box
    same = list({m.box: m for m in nodes if m.app == n.app and m.role == n.role and m.name.strip() == n.name.strip()
                 and _window_of(nodes, m) is win}.values())
    if n.box in {m.box for m in same} and n not in same:
        n = next(m for m in same if m.box == n.box)
    return {
        "role": n.role, "name": n.name, "app": n.app, "states": list(n.states), "text": n.text,
        "box": list(n.box), "at": [round((px[0] - x) / max(w, 1), 3), round((px[1] - y) / max(h, 1), 3)],
        "window": {"role": win.role if win else "", "name": win.name if win else "", "box": list(wbox)},
        "path": [m.role for m in _chain(nodes, n)[1:] if m.role not in WINDOW_ROLES and m.parent >= 0][:6],
        "labels": _labels(nodes, n, win),
        "order": [same.index(n), len(same)],  # which of the look-alikes (same role and name) it is
        "says": name_at(nodes, px),  # in words, for messages and reports
    }


@dataclass
class Found:
    """What the tree says: the element (its point), ambiguity, or nothing."""

    pixel: tuple[int, int] | None
    score: float = 0.0
    reason: str = ""
    node: Node | None = None
    runner_up: Node | None = None
    detail: dict | None = None


def find(ev: dict, nodes: list[Node]) -> Found:
    """The recorded element on the current tree: same app and role, its name, its labels, its window and
    its place there must agree, and the best must clearly beat the runner-up."""
    cands = list({(n.name, n.box): n for n in nodes if n.role == ev["role"] and n.depth >= 3 and n.box[2] > 0
                  and n.box[3] > 0 and n.app == ev["app"]}.values())  # a popup's items may be listed twice
    if not cands:
        return Found(None, reason=f"no {ev['role']} in {ev['app']!r}'s accessibility tree")
    # A name that reads exactly as recorded beats one that only looks like it ("Cut Display Value" is
    # not "Copy Display Value"); the fuzzy match is for names with per-run parts.
    exact = [n for n in cands if n.name.strip().lower() == ev["name"].strip().lower()]
    cands = exact or cands
    scored = []
    for n in cands:
        detail = _agreement(ev, nodes, n)
        if detail is not None:
            scored.append((detail["score"], n, detail))
    what = f"{ev['role']} {ev['name']!r}" if ev["name"] else f"the {ev['role']}" + (
        f" by {ev['labels'][0]['text']!r}" if ev["labels"] else "")
    if not scored:
        return Found(None, reason=f"{what} not in the accessibility tree")
    scored.sort(key=lambda t: -t[0])
    score, best, detail = scored[0]
    if score < MIN_SCORE:
        return Found(None, score, f"{what}: best element agrees {score:.2f} < {MIN_SCORE}", best, detail=detail)
    if len(scored) > 1 and score - scored[1][0] < WIN_MARGIN:
        tied = [t for t in scored if score - t[0] < WIN_MARGIN]
        picked = _by_order(ev, nodes, tied)
        if picked is None:
            other = scored[1][1]
            return Found(None, score, f"{what} is ambiguous: elements at {best.centre} and {other.centre} "
                                      f"agree alike ({score:.2f} vs {scored[1][0]:.2f})", best, other, detail)
        score, best, detail = picked
        detail = {**detail, "tie_break": "order"}
    runner = scored[1][1] if len(scored) > 1 and scored[1][1] is not best else None
    return Found(_point(ev, best), score, "", best, runner, detail)


def _point(ev: dict, n: Node) -> tuple[int, int]:
    """Where in the element to act: where the recording acted, relatively, kept off its border."""
    x, y, w, h = n.box
    ax, ay = (min(max(v, 0.1), 0.9) for v in ev["at"])
    return round(x + ax * w), round(y + ay * h)


def _agreement(ev: dict, nodes: list[Node], n: Node) -> dict | None:
    """How well element n fits the evidence (score 0..1 and its parts), None when its name disagrees."""
    parts: dict[str, float] = {}
    if ev["name"].strip() or n.name.strip():
        name = similar(ev["name"], n.name)
        if name < NAME_AGREES:
            return None
        parts["name"] = name
    win = _window_of(nodes, n)
    rec_win = ev["window"]
    if win is not None and rec_win["role"]:
        if win.role != rec_win["role"]:
            return None
        parts["window"] = similar(rec_win["name"], win.name) if rec_win["name"] or win.name else 1.0
    if ev["labels"]:
        now = {(l["text"].lower(), l["side"]) for l in _labels(nodes, n, win)}
        parts["labels"] = sum((l["text"].lower(), l["side"]) in now for l in ev["labels"]) / len(ev["labels"])
    path = [m.role for m in _chain(nodes, n)[1:] if m.role not in WINDOW_ROLES and m.parent >= 0][:6]
    parts["path"] = _common_prefix(path, ev["path"]) / max(len(ev["path"]), len(path)) if path or ev["path"] else 1.0
    if win is not None:  # the place in its window, relative (survives moves and stretching)
        wx, wy, ww, wh = win.box
        rx, ry, rw, rh = rec_win["box"]
        ex, ey = (ev["box"][0] + ev["box"][2] / 2 - rx) / max(rw, 1), (ev["box"][1] + ev["box"][3] / 2 - ry) / max(rh, 1)
        cx, cy = (n.centre[0] - wx) / max(ww, 1), (n.centre[1] - wy) / max(wh, 1)
        import math

        parts["place"] = math.exp(-math.hypot(cx - ex, cy - ey) / 0.15)
    weights = {"name": 3.0, "labels": 2.0, "window": 1.0, "path": 1.0, "place": 1.5}
    # Without a name the labels must carry it; without both, only place and path tell look-alikes apart.
    total = sum(weights[k] * v for k, v in parts.items()) / sum(weights[k] for k in parts)
    return {"score": round(total, 3), **{k: round(v, 3) for k, v in parts.items()}}


def _common_prefix(a: list, b: list) -> int:
    k = 0
    while k < min(len(a), len(b)) and a[k] == b[k]:
        k += 1
    return k


def _by_order(ev: dict, nodes: list[Node], tied: list) -> tuple | None:
    """Look-alikes with the same name, as many as when recorded: the one in the recorded position."""
    k, count = ev.get("order", [0, 0])
    same = [t for t in tied if t[1].name.strip() == ev["name"].strip()]
    if count < 2 or len(same) != len(tied) or len(same) != count:
        return None
    return sorted(same, key=lambda t: t[1].i)[k]


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
            name = (acc.get_name() or "").strip()  # GTK pads menu items with spaces
            ext = acc.get_extents(Atspi.CoordType.SCREEN) if depth > 0 else None
            box = (ext.x, ext.y, ext.width, ext.height) if ext is not None else (0, 0, 0, 0)
            text = ""
            if states.contains(Atspi.StateType.EDITABLE) or role == "text":  # (a read-only view: a display)
                iface = acc.get_text_iface()
                if iface is not None:
                    # (Qt answers "" for an end past the text's length)
                    text = Atspi.Text.get_text(iface, 0, min(Atspi.Text.get_character_count(iface), 200)) or ""
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
    while True:
        # A client that forgot us (or died without closing the pipe) does not keep us forever.
        if not select.select([sys.stdin], [], [], READER_IDLE_S)[0]:
            return
        line = sys.stdin.readline()
        if not line:
            return
        if line.strip() == "tree":
            try:
                nodes = _walk()
            except Exception:  # the bus went away: no tree (null), not a crash
                nodes = None
            sys.stdout.write(json.dumps(nodes, separators=(",", ":")) + "\n")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
