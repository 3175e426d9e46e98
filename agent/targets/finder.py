"""The one place the flow cache talks to the target finder (agent.targets.evidence, on agent.targets.locate):
evidence of a point on a screenshot, and finding it again. How targets are recognised (the same screen,
the accessibility element, pixels checked by their own text, text) lives there; this adapter only
gathers what it needs: the windows and the accessibility tree of the display, read *before* an action
lands (the tree after a click may hold a dialog the click opened)."""
from __future__ import annotations

import time
from dataclasses import dataclass


FIND_TIMEOUT_S = 5.0  # how long a target may take to appear (a window still opening, a redraw)
FIND_POLL_S = 0.2
A11Y_PATIENCE_S = 1.0  # an element missing from the tree this long is searched by pixels instead
SETTLE_MAX_S = 2.0  # bounded wait for the screen to stop changing, before and after each action
EFFECT_WAIT_S = 1.0  # extra time for an effect the recorded action showed to appear


@dataclass
class Found:
    pixel: tuple[int, int] | None
    reason: str = ""  # why not found
    score: float = 0.0
    method: str = ""
    alike: bool = False  # the target's window looked as recorded (same screen, same window), as a whole


@dataclass
class Context:
    """What surrounded a screenshot when it was taken: windows and accessibility nodes."""

    windows: list
    nodes: list


class Finder:
    """Per display: the window list and a lazily started accessibility tree reader. close() when done."""

    def __init__(self, display: str | None):
        self.display = display
        self._tree = None

    def windows(self) -> list:
        if not self.display:
            return []
        try:
            from sandbox.windows import list_windows

            return list_windows(self.display)
        except Exception:  # the window list is a hint; a display hiccup must not fail the step
            return []

    def nodes(self) -> list:
        if not self.display:
            return []
        try:
            if self._tree is None:
                from agent.targets.atspi import Tree

                self._tree = Tree(self.display)
            return self._tree.nodes()
        except Exception:
            return []

    def context(self) -> Context:
        """Windows and accessibility nodes now (a few ms; [] where the display has none)."""
        return Context(self.windows(), self.nodes())

    def describe(self, image, pixel, ctx: Context | None = None, ocr: bool = True) -> dict:
        """Evidence that re-finds what is at `pixel` of `image`; `ctx` as it was when `image` was taken."""
        from agent.targets.evidence import describe

        ctx = ctx or self.context()
        return describe(image, tuple(int(v) for v in pixel), ctx.windows, ctx.nodes, ocr=ocr, later=self.nodes)

    def find(self, evidence: dict, image, recorded=None, target: bool = True) -> Found:
        """Where the evidence's target is on `image`; `recorded`: the screenshot it was recorded on.
        The windows and the tree are read only when the finder needs them (the screen changed).
        Found at its recorded place, it needs that place's neighbourhood to look as recorded, else it
        is looked for by what it is. A target (a place to act on) found otherwise must be the recorded
        element where the app has a tree; target=False: a recorded effect, whose evidence describes
        whatever the changed place showed (often a bare panel), not an element to act on."""
        from agent.targets.evidence import find

        d = find(evidence, image, self.windows, self.nodes, recorded=recorded, target=target)
        return _found(d, d.method in ("same screen", "same window") or bool(d.detail.get("window_alike")))

    def find_waiting(self, evidence: dict, desktop, recorded=None, timeout_s: float = FIND_TIMEOUT_S, frame=None):
        """Find on the live screen (first on `frame` when given: the screen as it is now), polling while
        the target may still appear: (Found, frame looked at)."""
        deadline = time.monotonic() + timeout_s
        while True:
            frame = desktop.capture() if frame is None else frame
            found = self.find(evidence, frame, recorded)
            if found.pixel is not None or time.monotonic() >= deadline:
                return found, frame
            time.sleep(FIND_POLL_S)
            desktop.wait_stable(1.0)
            frame = None

    def close(self) -> None:
        if self._tree is not None:
            try:
                self._tree.close()
            except Exception:
                pass
            self._tree = None


def _found(d, alike: bool) -> Found:
    if d.pixel is None:
        return Found(None, d.reason or "not found", float(d.score), d.method, alike)
    return Found(tuple(int(v) for v in d.pixel), "", float(d.score), d.method, alike)


def label(evidence: dict | None) -> str:
    """The target in words: the element the app's tree names there, else its text or nearest label."""
    from agent.targets.locate import label as name

    says = ((evidence or {}).get("a11y") or {}).get("says")
    return says or name(evidence)
