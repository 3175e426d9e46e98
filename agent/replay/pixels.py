"""Comparing screenshots (replay and the flow cache): what changed between two frames (a blinking caret is no
change), whether a recorded change shows on a frame, and whether a target's neighbourhood looks as
recorded. Gray levels, cv2 on uint8."""
from __future__ import annotations

import numpy as np
from PIL import Image

from agent.backends.image_cache import PerImage

CHANGED_PX, CHANGED_LEVEL = 20, 24  # pixels differing by more than the level: "the screen changed"
CARET_W, CARETS_PX = 3, 400  # a change no wider than this is a caret; more changed pixels than that are not only carets

_GRAYS = PerImage()  # an image's gray levels while it lives: a replayed frame is compared several times


def _gray(image: Image.Image) -> np.ndarray:
    return _GRAYS.get(image, lambda im: np.asarray(im.convert("L")))


def _differs(a: Image.Image, b: Image.Image) -> np.ndarray:
    import cv2

    return cv2.absdiff(_gray(a), _gray(b)) > CHANGED_LEVEL


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


def as_after(before: Image.Image, after: Image.Image, now: Image.Image) -> float | None:
    """Of the pixels that changed from `before` to `after`, the share that look in `now` as in `after`
    (None when nothing changed or the sizes differ)."""
    mask = changed(before, after)
    if mask is None or mask.shape != (now.height, now.width):
        return None
    return 1.0 - float(_differs(now, after)[mask].mean())


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


def alike_around(ev: dict, recorded: Image.Image | None, frame: Image.Image, pixel) -> bool:
    """Does `frame` around `pixel` look as `recorded` around the evidence's point (a caret aside)?
    The neighbourhood is the evidence's context (locate.CONTEXT_HALF: the target, its label, its
    neighbours), kept inside the target's window and both images."""
    from agent.replay.locate import CONTEXT_HALF

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
