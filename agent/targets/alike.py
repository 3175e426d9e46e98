"""Does a recorded target's neighbourhood or window look as recorded (a hover or a caret aside)? The
comparisons replay and the flow cache make before trusting a recorded point; what changed is
agent.desktop.change's to say.

    alike_around(ev, rec, now, p) a target's neighbourhood looks as recorded
    same_screen(ev, rec, now)     the target's window is as recorded (a hover aside)
    moved_window(ev, rec, now, w) the target's window moved, its content as recorded: the point with it
"""
from __future__ import annotations

import numpy as np
from PIL import Image

from agent.desktop.change import CHANGED_LEVEL, changed

SAME_SCREEN_SHARE = 0.03  # a window with fewer changed pixels (a hover, a caret) is unchanged
SAME_TARGET_SHARE = 0.25  # ... and so is the target's own neighbourhood (hover highlights it)


def alike_around(ev: dict, recorded: Image.Image | None, frame: Image.Image, pixel) -> bool:
    """Does `frame` around `pixel` look as `recorded` around the evidence's point (a caret aside)?
    The neighbourhood is the evidence's context (locate.CONTEXT_HALF: the target, its label, its
    neighbours), kept inside the target's window and both images."""
    from agent.targets.locate import CONTEXT_HALF

    if recorded is None or pixel is None:
        return False
    (rx, ry), (fx, fy) = ev["pixel"], pixel
    x0, y0, x1, y1 = -CONTEXT_HALF[0], -CONTEXT_HALF[1], CONTEXT_HALF[0], CONTEXT_HALF[1]
    win = ev.get("window")
    if win:  # (offset: the point within its window)
        (ox, oy), (ww, wh) = win["offset"], win["size"]
        x0, y0, x1, y1 = max(x0, -ox), max(y0, -oy), min(x1, ww - ox), min(y1, wh - oy)
    x0, y0 = max(x0, -rx, -fx), max(y0, -ry, -fy)
    x1, y1 = min(x1, recorded.width - rx, frame.width - fx), min(y1, recorded.height - ry, frame.height - fy)
    if x1 <= x0 or y1 <= y0:
        return False
    return changed(recorded.crop((rx + x0, ry + y0, rx + x1, ry + y1)),
                   frame.crop((fx + x0, fy + y0, fx + x1, fy + y1))) is None


# ------------------------------------------------------------------------- the target's window, unchanged

def same_screen(ev: dict, recorded: Image.Image, frame: Image.Image) -> bool:
    """The recorded target's window (or the whole screen) is unchanged where it was: the recorded
    point is right by definition. A hover highlight or a caret changes a few pixels only."""
    if recorded.size != frame.size:
        return False
    a = np.asarray(recorded.convert("L"), dtype=np.int16)
    b = np.asarray(frame.convert("L"), dtype=np.int16)
    h, w = a.shape
    x, y = ev["pixel"]
    win = ev.get("window")
    if win:
        wx, wy = x - win["offset"][0], y - win["offset"][1]
        x0, y0, x1, y1 = max(wx, 0), max(wy, 0), min(wx + win["size"][0], w), min(wy + win["size"][1], h)
    else:
        x0, y0, x1, y1 = 0, 0, w, h
    moved = np.abs(a[y0:y1, x0:x1] - b[y0:y1, x0:x1]) > CHANGED_LEVEL
    if moved.size == 0 or moved.mean() > SAME_SCREEN_SHARE:
        return False
    return patch_agrees(ev, b, (x, y))


def patch_agrees(ev: dict, gray: np.ndarray, point) -> bool:
    """The target's own patch (as the evidence holds it) is at point: a hover changes it a little."""
    from agent.targets.locate import decode_patch

    patch = decode_patch(ev["patch"]["png"]).astype(np.int16)
    h, w = gray.shape
    px0, py0 = point[0] - ev["patch"]["at"][0], point[1] - ev["patch"]["at"][1]
    if px0 < 0 or py0 < 0 or px0 + patch.shape[1] > w or py0 + patch.shape[0] > h:
        return False
    here = gray[py0:py0 + patch.shape[0], px0:px0 + patch.shape[1]]
    return (np.abs(here - patch) > CHANGED_LEVEL).mean() <= SAME_TARGET_SHARE


def moved_window(ev: dict, recorded: Image.Image, frame: Image.Image, windows) -> tuple[int, int] | None:
    """The target's window moved but looks as recorded (same size, same content): the recorded point
    moved with it. None when there is no such window."""
    from agent.targets.locate import window_matches

    win = ev.get("window")
    if not win:
        return None
    x, y = ev["pixel"]
    rx, ry = x - win["offset"][0], y - win["offset"][1]
    ww, wh = win["size"]
    if rx < 0 or ry < 0 or rx + ww > recorded.width or ry + wh > recorded.height:
        return None
    a = None
    for w in windows:
        if (w.w, w.h) != (ww, wh) or (w.x, w.y) == (rx, ry) or not window_matches(win, w):
            continue
        if w.x < 0 or w.y < 0 or w.x + ww > frame.width or w.y + wh > frame.height:
            continue
        if a is None:
            a = np.asarray(recorded.convert("L").crop((rx, ry, rx + ww, ry + wh)), dtype=np.int16)
        b = np.asarray(frame.convert("L").crop((w.x, w.y, w.x + ww, w.y + wh)), dtype=np.int16)
        point = (x - rx + w.x, y - ry + w.y)
        if (np.abs(a - b) > CHANGED_LEVEL).mean() <= SAME_SCREEN_SHARE and \
                patch_agrees(ev, np.asarray(frame.convert("L"), dtype=np.int16), point):
            return point
    return None
