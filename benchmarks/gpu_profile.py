"""Where a decode step's time goes on the GPU (random 2B weights, bf16, ~10K tokens in the cache):
graph replay per token, and the kernels of one eager step (torch.profiler, summed by name).
Usage: python benchmarks/gpu_profile.py MODEL_DIR [compile]"""
import json
import os
import sys
import time

import torch
from transformers import Qwen3VLForConditionalGeneration

from agent.backends.engine import Engine

folder = sys.argv[1]
compile_ = len(sys.argv) > 2 and sys.argv[2] == "compile"
model = Qwen3VLForConditionalGeneration.from_pretrained(folder, dtype=torch.bfloat16, device_map="cuda").eval()
eng = Engine(model, max_context=16384, compile=compile_)
ids = [1000 + (i * 7919) % 140000 for i in range(10240)]
out = {"compile": compile_}
with torch.inference_mode():
    eng.generate(ids, [], max_new_tokens=4, min_new_tokens=4)
    for k in (1, 2):
        g = eng.generate(ids, [], max_new_tokens=129, min_new_tokens=129)
    out["replay_ms_per_token"] = g.timings.decode_ms / (g.timings.new_tokens - 1)
    span = eng._span(len(ids) + 10)
    for n in (1, 8):  # one token; a forced run of up to 8 in one replay
        if (span, n) not in eng._graphs:
            eng._pos.fill_(len(ids) + 10)
            eng._capture(span, n)
        graph = eng._graphs[(span, n)]
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(200):
            graph.replay()
        torch.cuda.synchronize()
        out[f"pure_replay_{n}_ms"] = (time.perf_counter() - t) / 200 * 1e3  # no host work between replays
    eng._pos.fill_(len(ids) + 5)
    for _ in range(3):
        eng._decode_step(span)
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(20):
        eng._decode_step(span)
    torch.cuda.synchronize()
    out["eager_step_ms"] = (time.perf_counter() - t) / 20 * 1e3
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            eng._decode_step(span)
        torch.cuda.synchronize()
    rows = {}
    for e in prof.key_averages():
        if e.device_type.name == "CUDA" or getattr(e, "self_device_time_total", 0):
            rows[e.key[:90]] = (getattr(e, "self_device_time_total", 0) / 5 / 1e3, e.count // 5)
    top = sorted(rows.items(), key=lambda kv: -kv[1][0])[:25]
    out["kernel_ms_per_step_total"] = sum(v[0] for v in rows.values())
    out["kernels_per_step"] = sum(v[1] for v in rows.values())
    out["top_kernels"] = [(k, round(v[0], 4), v[1]) for k, v in top]
    for n in (4, 8, 16):  # a run of forced tokens fed in one eager pass
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(5):
            eng._feed_many([11] * n, len(ids) + 20)
        torch.cuda.synchronize()
        out[f"feed_many_{n}_ms"] = (time.perf_counter() - t) / 5 * 1e3
torch.set_grad_enabled(False)
# Prefill of one step's new turn (a 1080p screenshot, ~2.1K tokens) after ~7.3K cached tokens,
# and the vision encoding of that screenshot: CUDA kernel time by kind.
from agent.backends.engine import EngineImage
cfg = model.config
vc = cfg.vision_config
grid = (1, 68, 120)  # 1920x1088 in 16 px patches
dim = vc.in_channels * vc.temporal_patch_size * vc.patch_size ** 2
img = EngineImage(torch.randn(grid[1] * grid[2], dim, device="cuda"), grid, key="p")
n_img = grid[1] * grid[2] // 4
turn = [cfg.vision_start_token_id] + [cfg.image_token_id] * n_img + [cfg.vision_end_token_id] + ids[:40]
base = ids[:7300]
eng.reset()
eng.generate(base, [], max_new_tokens=1)
def kinds(prof, reps):
    agg = {}
    for e in prof.key_averages():
        t = getattr(e, "self_device_time_total", 0) / reps / 1e3
        if t <= 0:
            continue
        k = e.key.lower()
        kind = ("attention" if "flash" in k or "fmha" in k or "attention" in k else
                "gemm" if "gemm" in k or "nvjet" in k or "cutlass" in k or "sm90" in k else "other")
        agg[kind] = agg.get(kind, 0) + t
    return {k: round(v, 2) for k, v in agg.items()}
for name, fn in (("vision", lambda: eng.encode(img)), ("prefill", lambda: eng.generate(base + turn, [img], max_new_tokens=1))):
    fn(); eng.vision.pop("p"); eng.reset(); eng.generate(base, [], max_new_tokens=1)
    if name == "prefill":
        eng.encode(img)
    torch.cuda.synchronize()
    t = time.perf_counter()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    out[f"{name}_wall_ms"] = (time.perf_counter() - t) * 1e3
    out[f"{name}_kernel_ms"] = kinds(prof, 1)
    if name == "vision":
        eng.vision.pop("p")
print(json.dumps(out, indent=1))
if os.environ.get("OUT"):
    with open(os.path.join(os.environ["OUT"], f"profile_{'compile' if compile_ else 'eager'}.json"), "w") as f:
        json.dump(out, f, indent=1)
