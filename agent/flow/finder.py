"""The one place the flow cache talks to the target finder (agent.replay.locate): evidence of a point
on a screenshot, and finding it again. Everything about how targets are recognised lives there."""
from __future__ import annotations

import base64
import io
import time
from dataclasses import dataclass

import numpy as np
from PIL import Image

FIND_TIMEOUT_S = 3.0  # a target may still be appearing (a redraw, a window opening)
FIND_POLL_S = 0.2
UNMOVED_DIFF = 6.0  # mean gray-level difference under which a recorded image "is still there"


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


def describe(image, pixel, display: str | None, ocr: bool = True) -> dict:
    """Evidence that re-finds what is at `pixel` of `image`. ocr=False skips the OCR words (costly;
    an effect is checked by its looks) where the finder lets us."""
    import inspect

    from agent.replay.locate import describe_target

    kw = {"ocr": False} if not ocr and "ocr" in inspect.signature(describe_target).parameters else {}
    return describe_target(image, tuple(int(v) for v in pixel), windows=windows(display), **kw)


def find(evidence: dict, image, display: str | None) -> Found:
    from agent.replay.locate import search

    if unmoved(evidence, image):
        return Found(tuple(int(v) for v in evidence["pixel"]), "", 1.0, "unmoved")
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


def _gray_png(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("L"), dtype=np.int16)


def _same(gray: np.ndarray, tpl: np.ndarray, left: int, top: int) -> bool:
    h, w = tpl.shape
    if left < 0 or top < 0 or top + h > gray.shape[0] or left + w > gray.shape[1]:
        return False
    return float(np.abs(gray[top:top + h, left:left + w] - tpl).mean()) <= UNMOVED_DIFF


def unmoved(evidence: dict, image) -> bool:
    """The fast, certain case of an unchanged app: on a screen of the recorded size, the recorded
    neighbourhood AND every recorded anchor (the labels next to the target) are still at their recorded
    pixels. Two look-alike fields differ in their labels, so this never mistakes one for the other;
    with no anchors, or evidence of another shape, it says no and the finder decides."""
    try:
        if list(image.size) != list(evidence["frame"]) or not evidence.get("anchors"):
            return False
        gray = np.asarray(image.convert("L"), dtype=np.int16)
        px, py = (int(v) for v in evidence["pixel"])
        ctx = evidence["context"]
        if not _same(gray, _gray_png(ctx["png"]), px - int(ctx["at"][0]), py - int(ctx["at"][1])):
            return False
        for a in evidence["anchors"]:
            tpl = _gray_png(a["png"])
            cx, cy = px + a["offset"][0], py + a["offset"][1]
            left, top = round(cx - tpl.shape[1] / 2), round(cy - tpl.shape[0] / 2)
            if not any(_same(gray, tpl, left + dx, top + dy) for dx in (0, -1, 1) for dy in (0, -1, 1)):
                return False  # (a pixel of slack: the anchor's centre was rounded)
        return True
    except (KeyError, TypeError, ValueError, OSError):
        return False
