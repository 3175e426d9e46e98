"""Qwen3-VL's 0..1000 relative coordinates to pixels of the captured frame."""
from __future__ import annotations

SCALE = 1000
CORNER_NUDGE_PX = 2  # pyautogui's fail-safe fires on the exact corner pixels; stay clear of them


def to_pixels(coord: tuple[float, float], size: tuple[int, int]) -> tuple[int, int]:
    """Map [x, y] in 0..1000 to a pixel of a frame of `size` (w, h).

    Clamped into the frame; a point on a corner is nudged inward so that the model can never trip
    the fail-safe, which stays armed for a person pushing the mouse into a corner."""
    w, h = size
    x = min(max(round(coord[0] / SCALE * w), 0), w - 1)
    y = min(max(round(coord[1] / SCALE * h), 0), h - 1)
    if x in (0, w - 1) and y in (0, h - 1):
        x = min(max(x, CORNER_NUDGE_PX), w - 1 - CORNER_NUDGE_PX)
        y = min(max(y, CORNER_NUDGE_PX), h - 1 - CORNER_NUDGE_PX)
    return x, y


def to_relative(px: tuple[float, float], size: tuple[int, int]) -> tuple[int, int]:
    """Pixel -> 0..1000 (used when recording a person's clicks as native actions)."""
    w, h = size
    return (min(max(round(px[0] / w * SCALE), 0), SCALE), min(max(round(px[1] / h * SCALE), 0), SCALE))
