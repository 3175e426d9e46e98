"""Qwen3-VL's processor for the engine's fast load, without transformers' processing code.

transformers' processors import its modeling code (processing_utils imports modeling_utils), which
is what the native load (agent/backends/qwen3vl_model.py) avoids. What the backend needs from a
processor is small, and here it is with the same results (tests/backends/test_native_qwen3vl.py
holds them equal to Qwen3VLProcessor's image-only path on the tiny checkpoint):
- the tokenizer: the checkpoint's own tokenizer class, imported from its module rather than through
  AutoTokenizer (whose auto-class machinery imports the modeling stack); the same object
  AutoTokenizer returns, so the grammar (xgrammar) and decoding see no difference;
- the chat template: the processor's (chat_template.jinja or .json), else the tokenizer's;
- images: resized as transformers' processors resize them (PIL's bicubic on the CPU, torchvision's
  antialiased bicubic on a GPU), then rescaled, normalised and cut into patches on the target device.
"""
from __future__ import annotations

import importlib
import json
from pathlib import Path

from agent.backends.qwen_images import smart_resize

# tokenizer_class -> its module, for the classes Qwen3-VL checkpoints name (transformers 5: one
# tokenizers-backed Qwen2Tokenizer, which AutoTokenizer returns for both names)
TOKENIZER_MODULES = {"Qwen2Tokenizer": "transformers.models.qwen2.tokenization_qwen2",
                     "Qwen2TokenizerFast": "transformers.models.qwen2.tokenization_qwen2"}
IMAGE_TOKEN = "<|image_pad|>"


def tokenizer_class(folder):
    """The class of the checkpoint's tokenizer, imported directly; AutoTokenizer for other classes.
    (The import is most of a native load's CPU time: the load times it apart.)"""
    cfg_path = Path(folder, "tokenizer_config.json")
    name = json.loads(cfg_path.read_text(encoding="utf-8")).get("tokenizer_class") if cfg_path.is_file() else None
    module = TOKENIZER_MODULES.get(name or "")
    if module is None:
        from transformers import AutoTokenizer
        return AutoTokenizer
    return getattr(importlib.import_module(module), "Qwen2Tokenizer")


def processor_chat_template(folder) -> str | None:
    """The processor's own chat template, as AutoProcessor finds it (chat_template.jinja, else
    chat_template.json), which may differ from the tokenizer's."""
    jinja = Path(folder, "chat_template.jinja")
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    js = Path(folder, "chat_template.json")
    if js.is_file():
        return json.loads(js.read_text(encoding="utf-8")).get("chat_template")
    return None


class ImageProcessor:
    """Qwen2-VL's image preprocessing (preprocessor_config.json): resize to the grid, rescale,
    normalise, patches in merge-block order with the frame repeated temporal_patch_size times."""

    def __init__(self, folder):
        path = Path(folder, "preprocessor_config.json")
        c = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        size = c.get("size") or {}
        self.patch_size = int(c.get("patch_size", 16))
        self.merge_size = int(c.get("merge_size", 2))
        self.temporal_patch_size = int(c.get("temporal_patch_size", 2))
        self.size = {"shortest_edge": size.get("shortest_edge", c.get("min_pixels", 65_536)),
                     "longest_edge": size.get("longest_edge", c.get("max_pixels", 16_777_216))}
        self.image_mean = list(c.get("image_mean", [0.5, 0.5, 0.5]))
        self.image_std = list(c.get("image_std", [0.5, 0.5, 0.5]))
        self.rescale_factor = float(c.get("rescale_factor", 1 / 255))
        self.resample = int(c.get("resample", 3))  # PIL's BICUBIC

    def __call__(self, images, return_tensors: str = "pt", device=None) -> dict:
        import torch
        pixels, grids = [], []
        for image in images:
            px, grid = self.one(image, device)
            pixels.append(px)
            grids.append(grid)
        return {"pixel_values": torch.cat(pixels), "image_grid_thw": torch.tensor(grids, dtype=torch.long)}

    def one(self, image, device=None, resize_on_device: bool | None = None):
        """(patches (grid_h*grid_w, C*T*P*P) float32 on `device`, [1, grid_h, grid_w]). On a GPU the
        resize runs there as the torchvision processor runs it (bicubic, antialiased, rounded back to
        whole levels); on the CPU with PIL's bicubic as the PIL processor does. The two differ by a few
        levels at sharp edges. Resizing on the CPU for a GPU cost the H100 host's steps ~10 ms."""
        import numpy as np
        import torch
        image = image.convert("RGB") if image.mode != "RGB" else image
        factor = self.patch_size * self.merge_size
        h, w = smart_resize(image.height, image.width, factor, self.size["shortest_edge"], self.size["longest_edge"])
        device = torch.device(device or "cpu")
        on_device = device.type != "cpu" if resize_on_device is None else resize_on_device
        if (w, h) != image.size and not on_device:
            image = image.resize((w, h), resample=self.resample)
        x = torch.from_numpy(np.array(image)).to(device).permute(2, 0, 1).float()
        if (w, h) != (x.shape[2], x.shape[1]):
            import torch.nn.functional as F
            x = F.interpolate(x[None], size=(h, w), mode="bicubic", align_corners=False, antialias=True)[0]
            x = x.clamp_(0, 255).round_()
        mean = torch.tensor(self.image_mean, device=x.device).view(3, 1, 1)
        std = torch.tensor(self.image_std, device=x.device).view(3, 1, 1)
        x = (x * self.rescale_factor - mean) / std
        p, m, t = self.patch_size, self.merge_size, self.temporal_patch_size
        gh, gw = h // p, w // p
        x = x.reshape(3, gh // m, m, p, gw // m, m, p).permute(1, 4, 2, 5, 0, 3, 6)
        x = x.unsqueeze(5).expand(*x.shape[:5], t, p, p)
        return x.reshape(gh * gw, 3 * t * p * p), [1, gh, gw]


class Processor:
    """The parts of Qwen3VLProcessor the backend and the server use."""

    def __init__(self, folder):
        self.tokenizer = tokenizer_class(folder).from_pretrained(folder)
        self.image_processor = ImageProcessor(folder)
        self.chat_template = processor_chat_template(folder) or self.tokenizer.chat_template
        if not self.chat_template:
            raise ValueError(f"{folder} has no chat template")
        self.image_token = IMAGE_TOKEN
        self.image_token_id = self.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)

    def apply_chat_template(self, messages, add_generation_prompt: bool = True, tokenize: bool = False, **kw):
        if tokenize:
            raise NotImplementedError("the native processor renders text only (load transformers' processor to tokenize)")
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt,
                                                  tokenize=False, chat_template=self.chat_template)

