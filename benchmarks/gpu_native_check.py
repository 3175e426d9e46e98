"""The native Qwen3-VL load (agent/backends/qwen3vl_model.py, qwen3vl_processor.py) against the load
through transformers' modeling code, on the GPU with the real 2B architecture (bf16): the patches of a
1080p screenshot (PIL resize against the torchvision processor), the vision tower's outputs on the same
patches and its time, the peak memory of one encoding, and the replies of a few prompts.

Usage (GPU machine): python benchmarks/gpu_native_check.py CHECKPOINT OUT.json"""
from __future__ import annotations

import json
import statistics
import sys
import time

import torch
from PIL import Image, ImageDraw

from agent.backends.options import EngineOptions
from agent.backends.transformers import TransformersBackend


def screenshot(seed: int) -> Image.Image:
    img = Image.new("RGB", (1920, 1080), (236, 236, 236))
    d = ImageDraw.Draw(img)
    g = torch.Generator().manual_seed(seed)
    for i in range(60):
        x, y, w, h = (int(v) for v in torch.randint(0, 1800, (4,), generator=g))
        y, h = y % 1000, 20 + h % 60
        d.rectangle([x, y, x + 40 + w % 300, y + h], fill=tuple(int(v) for v in torch.randint(0, 255, (3,), generator=g)))
        d.text((x + 4, y + 4), f"Button {seed}-{i}", fill=(0, 0, 0))
    return img


def rel(a, b) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm().clamp(min=1e-12))


def vision(backend, px, grid, n=5):
    vis = backend.model.model.visual
    times, out = [], None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    for _ in range(n):
        torch.cuda.synchronize()
        t = time.perf_counter()
        with torch.inference_mode():
            out = vis(px.to(vis.dtype if hasattr(vis, "dtype") else torch.bfloat16), grid_thw=grid)
        torch.cuda.synchronize()
        times.append((time.perf_counter() - t) * 1e3)
    peak = (torch.cuda.max_memory_allocated() - base) / 2 ** 30
    embeds, deep = (out[0], out[1]) if isinstance(out, tuple) else (out.pooler_output, out.deepstack_features)
    return embeds, deep, statistics.median(times[1:]), peak


def main(ckpt: str, out_path: str):
    shots = [screenshot(i) for i in range(3)]
    msgs = [[{"role": "system", "content": [{"type": "text", "text": "You operate a desktop. Click the Save button."}]},
             {"role": "user", "content": [{"type": "image", "image": s}]}] for s in shots]
    res = {"device": torch.cuda.get_device_name(0)}
    runs = {}
    for name, native in (("transformers", False), ("native", True)):
        b = TransformersBackend(ckpt, engine=True, options=EngineOptions(native=native))
        assert b.native == native
        ref = b.reference_processor().image_processor
        hf_px = ref(images=[shots[0]], return_tensors="pt", device="cuda")  # torchvision's path where installed
        grid = hf_px["image_grid_thw"].to("cuda")
        px = hf_px["pixel_values"].to("cuda")
        embeds, deep, ms, peak = vision(b, px, grid)
        replies = [b.generate(m) for m in msgs]
        mine = b._device_pixels(shots[0]) if native else None
        runs[name] = dict(embeds=embeds.float().cpu(), deep=[d.float().cpu() for d in deep], px=px.float().cpu(),
                          mine=None if mine is None else mine.float().cpu(), replies=replies)
        res[name] = {"vision_ms_p50": ms, "vision_peak_gib": peak, "load_timings": b.load_timings,
                     "processor": type(ref).__name__}
        print(name, json.dumps(res[name]), flush=True)
        del b
        torch.cuda.empty_cache()
    n, t = runs["native"], runs["transformers"]
    res["vision_rel_err"] = rel(n["embeds"], t["embeds"])
    res["deepstack_rel_err"] = [rel(a, b) for a, b in zip(n["deep"], t["deep"])]
    res["pixels_native_vs_processor"] = {"max_abs": float((n["mine"] - t["px"]).abs().max()), "rel": rel(n["mine"], t["px"])}
    res["replies_equal"] = [a == b for a, b in zip(n["replies"], t["replies"])]
    res["replies"] = {"native": n["replies"], "transformers": t["replies"]}
    print(json.dumps({k: v for k, v in res.items() if k not in ("native", "transformers", "replies")}))
    with open(out_path, "w") as f:
        json.dump(res, f, indent=1, default=str)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
