"""How Qwen3-VL's processor sizes a screenshot: the one place for that arithmetic, shared by the
local backend (token budget), the OpenAI-compatible backend (resizing before sending, token check)
and the budget planner. smart_resize is transformers' own, copied: importing it from transformers
imports its modeling stack (seconds of a cold start); a test holds the copy equal to it."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from agent.errors import BackendError

QWEN3_VL_IMAGE = {"patch_size": 16, "merge_size": 2, "min_pixels": 65_536, "max_pixels": 16_777_216}


def image_config(processor: Any, model: str) -> dict:
    """patch/merge size and pixel bounds of the Qwen3-VL image processor the server uses.

    `processor` may be a loaded processor or image processor, a folder or hub name to read it
    from, or None: then the model's own folder if `model` is one, else Qwen3-VL-2B's defaults."""
    if processor is None and Path(model, "preprocessor_config.json").is_file():
        processor = model
    if isinstance(processor, (str, Path)):
        path = Path(processor, "preprocessor_config.json")
        if not path.is_file():
            raise BackendError(f"no preprocessor_config.json in {processor}")
        data = json.loads(path.read_text(encoding="utf-8"))
        size = data.get("size") or {}
        return {"patch_size": data.get("patch_size", 16), "merge_size": data.get("merge_size", 2),
                "min_pixels": size.get("shortest_edge", data.get("min_pixels", QWEN3_VL_IMAGE["min_pixels"])),
                "max_pixels": size.get("longest_edge", data.get("max_pixels", QWEN3_VL_IMAGE["max_pixels"]))}
    if processor is not None:
        ip = getattr(processor, "image_processor", processor)
        return {"patch_size": ip.patch_size, "merge_size": ip.merge_size,
                "min_pixels": ip.size["shortest_edge"], "max_pixels": ip.size["longest_edge"]}
    return dict(QWEN3_VL_IMAGE)


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """(height, width): both multiples of `factor`, the pixel count within [min_pixels, max_pixels],
    the aspect ratio kept as closely as that allows (transformers' Qwen2-VL smart_resize)."""
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"absolute aspect ratio must be smaller than 200, got {max(height, width) / min(height, width)}")
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def resized_size(width: int, height: int, cfg: dict) -> tuple[int, int]:
    """(width, height) the Qwen3-VL processor resizes an image to."""
    h, w = smart_resize(height, width, factor=cfg["patch_size"] * cfg["merge_size"],
                        min_pixels=cfg["min_pixels"], max_pixels=cfg["max_pixels"])
    return w, h


def image_tokens(width: int, height: int, cfg: dict) -> int:
    """Prompt tokens for one image: one per merged patch, plus vision start and end."""
    w, h = resized_size(width, height, cfg)
    return (w // cfg["patch_size"]) * (h // cfg["patch_size"]) // cfg["merge_size"] ** 2 + 2
