"""The one finder of a display: the windows and the accessibility tree read when needed, evidence of a
point on a screenshot (read *before* an action lands: the tree after a click may hold a dialog the click
opened), and finding recorded targets again on the live screen, waiting while they may still appear.
How a target is recognised (the same screen, the accessibility element, pixels checked by their own
text, text) lives in agent.targets.evidence; the replay and the flow cache both find through here.

    finder = Finder(display)                      # or Finder(display, tree) to share a tree reader
    look = finder.find_waiting({"coordinate": ev}, desktop, recorded_frame)
    look.found["coordinate"].pixel, look.frame    # where it is now, on the frame it was found on
    finder.close()
"""
from __future__ import annotations

import time
from dataclasses import dataclass

FIND_TIMEOUT_S = 5.0  # how long a target may take to appear (a window still opening, a redraw)
FIND_POLL_S = 0.2
A11Y_PATIENCE_S = 1.0  # an element missing from the tree this long is searched by pixels instead
SETTLE_MAX_S = 2.0  # bounded wait for the screen to stop changing, before and after each action
EFFECT_WAIT_S = 1.0  # extra time for an effect the recorded action showed to appear
LOOK_SETTLE_S = 1.0  # between two looks for a target not found yet, the screen may settle this long


@dataclass
class Context:
    """What surrounded a screenshot when it was taken: windows and accessibility nodes."""

    windows: list
    nodes: list


@dataclass
class Look:
    """What find_waiting saw: a Decision per evidence, the frame they were made on, and the windows
    and tree of that frame (read only if the finder needed them)."""

    found: dict  # name -> agent.targets.evidence.Decision
    frame: object
    windows: object  # () -> list
    nodes: object  # () -> list

    @property
    def missing(self) -> str | None:
        """The first evidence not found (None when all were)."""
        return next((k for k, d in self.found.items() if d.pixel is None), None)


class Finder:
    """Per display: the window list and a lazily started accessibility tree reader. close() when done
    (a tree given by the caller is the caller's to close)."""

    def __init__(self, display: str | None, tree=None, field_text: bool = False):
        self.display = display
        self._tree, self._own = tree, tree is None
        self.field_text = field_text  # keep editable fields' text in evidence (a task's allow.store_field_text)

    def windows(self) -> list:
        if not self.display:
            return []
        try:
            from sandbox.windows import list_windows

            return list_windows(self.display)
        except Exception:  # the window list is a hint; a display hiccup must not fail the step
            return []

    def tree(self):
        """The display's tree reader (started on first use), None without a display."""
        if self._tree is None and self.display:
            from sandbox.atspi import Tree

            self._tree = Tree(self.display)
        return self._tree

    def nodes(self, ticket: int | None = None) -> list:
        """The tree now; with `ticket`, the walk prefetched under it (Tree.prefetch)."""
        try:
            tree = self.tree()
            if tree is None:
                return []
            return tree.take(ticket) if ticket is not None else tree.nodes()
        except Exception:
            return []

    def context(self) -> Context:
        """Windows and accessibility nodes now (a few ms; [] where the display has none)."""
        return Context(self.windows(), self.nodes())

    def describe(self, image, pixel, ctx: Context | None = None, ocr: bool = True) -> dict:
        """Evidence that re-finds what is at `pixel` of `image`; `ctx` as it was when `image` was taken
        (the tree read again, briefly, when it did not hold the element yet)."""
        from agent.targets.evidence import describe

        ctx = ctx or self.context()
        return describe(image, tuple(int(v) for v in pixel), ctx.windows, ctx.nodes, ocr=ocr, later=self.nodes,
                        field_text=self.field_text)

    def find(self, evidence: dict, image, recorded=None, target: bool = True):
        """Where the evidence's target is on `image` (a Decision); `recorded`: the screenshot it was
        recorded on. The windows and the tree are read only when needed (the screen changed).
        target=False: the evidence is of a recorded effect, not of a place to act on (see evidence.find)."""
        from agent.targets.evidence import find

        return find(evidence, image, self.windows, self.nodes, recorded=recorded, target=target)

    def find_waiting(self, evidence: dict[str, dict], desktop, recorded=None, frame=None,
                     timeout_s: float = FIND_TIMEOUT_S, prefetched: int | None = None) -> Look:
        """Find each named evidence on the live screen (first on `frame` when given: the screen as it
        is now), looking again while a target may still appear, up to timeout_s. For the first
        A11Y_PATIENCE_S an element the app's tree should hold is waited for there rather than searched
        by pixels (the tree follows the screen). `prefetched`: a tree walk started for this frame."""
        from agent.targets.evidence import find

        deadline = time.monotonic() + timeout_s
        patience = time.monotonic() + A11Y_PATIENCE_S
        while True:
            frame = desktop.capture() if frame is None else frame
            windows = _once(self.windows)
            nodes = _once(lambda ticket=prefetched: self.nodes(ticket))  # read only when the screen changed
            patient = time.monotonic() < patience
            found = {k: find(ev, frame, windows, nodes, recorded, pixels=not patient) for k, ev in evidence.items()}
            prefetched = None  # a later look reads the tree again
            if all(d.pixel is not None or d.ambiguous for d in found.values()) or time.monotonic() >= deadline:
                return Look(found, frame, windows, nodes)
            time.sleep(FIND_POLL_S)
            desktop.wait_stable(LOOK_SETTLE_S)
            frame = None

    def close(self) -> None:
        if self._tree is not None and self._own:
            try:
                self._tree.close()
            except Exception:
                pass
            self._tree = None


def _once(read):
    """read(), called at most once, on first use."""
    got: list = []

    def value():
        if not got:
            got.append(read())
        return got[0]
    return value


def label(evidence: dict | None) -> str:
    """The target in words: the element the app's tree names there, else its text or nearest label."""
    from agent.targets.locate import label as name

    says = ((evidence or {}).get("a11y") or {}).get("says")
    return says or name(evidence)
