"""The one change detector: did the screen change, and where. The desktop's settle, the agent loop's
"nothing happened", replay and the flow cache all ask it. Gray levels differing by more than
CHANGED_LEVEL are a change; a blinking caret is none (it blinks with or without an action).

    changed(a, b)                 the mask of what changed, or None (a caret aside)
    differs(a, b)                 the screen changed from a to b
    as_after(before, after, now)  the share of a recorded change that shows on `now`
    change_point(mask, near)      where a change is (to describe what it looked like)
"""
from __future__ import annotations

import numpy as np
from PIL import Image

from agent.backends.image_cache import PerImage

CHANGED_PX, CHANGED_LEVEL = 20, 24  # pixels differing by more than the level: "the screen changed"
CARET_W, CARETS_PX = 3, 400  # a change no wider than this is a caret; more changed pixels than that are not only carets
SHIFT_PX = 2  # as_after: how far a recorded change may have moved and still be the same
SHARE_SAMPLE = 50_000  # as_after: at most this many of the changed pixels are compared

_GRAYS = PerImage()  # an image's gray levels while it lives: a replayed frame is compared several times


def gray(image: Image.Image) -> np.ndarray:
    return _GRAYS.get(image, lambda im: np.asarray(im.convert("L")))


def _differs(a: Image.Image, b: Image.Image) -> np.ndarray:
    import cv2

    return cv2.absdiff(gray(a), gray(b)) > CHANGED_LEVEL


def differs(a: Image.Image, b: Image.Image) -> bool:
    """The screen changed from a to b (a blinking caret is no change)."""
    return changed(a, b) is not None


def changed(a: Image.Image, b: Image.Image) -> np.ndarray | None:
    """The mask of pixels that changed from a to b, or None when too few did. A text caret that
    blinked is no change: it blinks with or without the action, so it cannot tell whether one acted."""
    if a.size != b.size:
        return np.ones((b.height, b.width), dtype=bool)
    mask = _differs(a, b)
    n = int(np.count_nonzero(mask))
    if CHANGED_PX <= n <= CARETS_PX:
        import cv2

        x0, y0, w, h = cv2.boundingRect(mask.view(np.uint8))  # (of the changed pixels)
        count, labels, stats, _ = cv2.connectedComponentsWithStats(mask[y0:y0 + h, x0:x0 + w].view(np.uint8),
                                                                   connectivity=8)
        carets = stats[:, cv2.CC_STAT_WIDTH] <= CARET_W  # thin upright bars
        carets[0] = False  # (the background)
        if carets.any():
            mask = mask.copy()
            mask[y0:y0 + h, x0:x0 + w] &= ~carets[labels]
            n = int(np.count_nonzero(mask))
    return mask if n >= CHANGED_PX else None


def as_after(before: Image.Image, after: Image.Image, now: Image.Image, shift: int = SHIFT_PX) -> float | None:
    """Of the pixels that changed from `before` to `after`, the share that look in `now` as in `after`,
    at the best offset of up to `shift` pixels each way (None when nothing changed or the sizes differ).
    The offset: the same window a pixel away, or an app laid out a pixel otherwise on another launch
    (GTK 4 does at times), moves a checkbox's tick too; a tick that is not there is not found by it."""
    mask = changed(before, after)
    if mask is None or mask.shape != (now.height, now.width):
        return None
    ys, xs = np.nonzero(mask)
    if len(ys) > SHARE_SAMPLE:  # a whole new screen: a sample of its pixels says as much
        keep = np.linspace(0, len(ys) - 1, SHARE_SAMPLE).astype(np.intp)
        ys, xs = ys[keep], xs[keep]
    want, got = gray(after)[ys, xs].astype(np.int16), gray(now).astype(np.int16)
    h, w = mask.shape
    best = 0.0
    for dy, dx in sorted(((dy, dx) for dy in range(-shift, shift + 1) for dx in range(-shift, shift + 1)),
                         key=lambda d: abs(d[0]) + abs(d[1])):  # in place first: most screens stop there
        at = got[np.clip(ys + dy, 0, h - 1), np.clip(xs + dx, 0, w - 1)]
        best = max(best, 1.0 - float((np.abs(at - want) > CHANGED_LEVEL).mean()))
        if best >= 0.99:
            break
    return best


def change_point(mask: np.ndarray, near: tuple[int, int] | None) -> tuple[int, int]:
    """The centre of the changed region that holds (or is nearest to) `near`, else of the largest one."""
    import cv2

    grown = cv2.dilate(mask.astype(np.uint8), np.ones((9, 9), np.uint8))
    n, _labels, stats, _ = cv2.connectedComponentsWithStats(grown, connectivity=8)
    boxes = [tuple(int(v) for v in stats[k][:4]) for k in range(1, n)]
    if near is not None:
        def dist(b):
            x, y, w, h = b
            return max(x - near[0], 0, near[0] - x - w) + max(y - near[1], 0, near[1] - y - h)
        box = min(boxes, key=dist)
    else:
        box = max(boxes, key=lambda b: b[2] * b[3])
    x, y, w, h = box
    return x + w // 2, y + h // 2
