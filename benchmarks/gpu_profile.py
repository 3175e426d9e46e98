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
    graph = eng._graphs[span]
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(200):
        graph.replay()
    torch.cuda.synchronize()
    out["pure_replay_ms"] = (time.perf_counter() - t) / 200 * 1e3  # no host work between replays
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
print(json.dumps(out, indent=1))
if os.environ.get("OUT"):
    with open(os.path.join(os.environ["OUT"], f"profile_{'compile' if compile_ else 'eager'}.json"), "w") as f:
        json.dump(out, f, indent=1)
