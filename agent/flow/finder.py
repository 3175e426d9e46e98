"""The one place the flow cache talks to the target finder (agent.replay.locate): evidence of a point
on a screenshot, and finding it again. Everything about how targets are recognised lives there."""
from __future__ import annotations

import time
from dataclasses import dataclass

FIND_TIMEOUT_S = 3.0  # a target may still be appearing (a redraw, a window opening)
FIND_POLL_S = 0.2


@dataclass
class Found:
    pixel: tuple[int, int] | None
    reason: str = ""  # why not found
    score: float = 0.0
    method: str = ""


def windows(display: str | None) -> list:
    from agent.replay.locate import list_windows

    try:
        return list_windows(display)
    except Exception:  # the window list is a hint; a display hiccup must not fail the step
        return []


def describe(image, pixel, display: str | None) -> dict:
    """Evidence that re-finds what is at `pixel` of `image`."""
    from agent.replay.locate import describe_target

    return describe_target(image, tuple(int(v) for v in pixel), windows=windows(display))


def find(evidence: dict, image, display: str | None) -> Found:
    from agent.replay.locate import search

    s = search(evidence, image, windows(display))
    if s.match is None:
        return Found(None, s.reason or "not found")
    return Found(tuple(int(v) for v in s.match.pixel), "", float(s.match.score), s.match.method)


def find_waiting(evidence: dict, desktop, display: str | None, timeout_s: float = FIND_TIMEOUT_S):
    """Find on the live screen, polling while the target may still appear: (Found, frame it was looked for on)."""
    deadline = time.monotonic() + timeout_s
    while True:
        frame = desktop.capture()
        found = find(evidence, frame, display)
        if found.pixel is not None or time.monotonic() >= deadline:
            return found, frame
        time.sleep(FIND_POLL_S)
        desktop.wait_stable(1.0)


def label(evidence: dict | None) -> str:
    from agent.replay.locate import label as name

    return name(evidence)
