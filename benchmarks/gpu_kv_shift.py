"""KV moved after an eviction against a fresh prefill, on the real 2B architecture (random weights,
bf16, GPU): an agent history of 1080p screenshots (2,040 tokens each), 4 in view, 2 evicted.

Measured: the last position's logits of the eviction step with the moved KV against a fresh
prefill of the same prompt (relative deviation, max |diff|, same top-1), beside the bf16 noise
floor (the same prompt prefilled fresh vs. through prefix reuse in two parts: both exact methods,
different rounding); layer 0's moved keys against the fresh ones; the eviction step's time with
and without the move.

Usage: python benchmarks/gpu_kv_shift.py MODEL_DIR|random [OUT.json]"""
import json
import random
import sys
import time

import torch
from transformers import Qwen3VLForConditionalGeneration

from agent.backends.engine import Engine, EngineImage

folder = sys.argv[1]
if folder == "random":  # the 2B built in memory (no checkpoint on disk needed)
    sys.path.insert(0, __file__.rsplit("/", 1)[0])
    from engine_bench import build_model
    model = build_model(None, False, "cuda")[0]
else:
    model = Qwen3VLForConditionalGeneration.from_pretrained(folder, dtype=torch.bfloat16, device_map="cuda").eval()
cfg = model.config
IMG, VS, VE = cfg.image_token_id, cfg.vision_start_token_id, cfg.vision_end_token_id
rng = random.Random(0)
GRID = (1, 68, 120)  # 1920x1088 in 16 px patches
dim = 3 * 2 * 16 * 16


def words(seed, n):
    r = random.Random(seed)
    return [r.randrange(1000, 150000) for _ in range(n)]


ims = {}


def shot(s):
    if s not in ims:
        g = torch.Generator(device="cuda").manual_seed(s)
        ims[s] = EngineImage(torch.randn(GRID[1] * GRID[2], dim, device="cuda", generator=g), GRID, key=f"shot{s}")
    return ims[s]


def prompt(first, last, lines):
    ids = words(1, 1500) + words(2, 40) + [t for i in range(lines) for t in words(300 + i, 30)]
    images = []
    for s in range(first, last + 1):
        ids += words(400 + s, 4) + [VS] + [IMG] * 2040 + [VE] + words(100 + s, 20)
        images.append(shot(s))
        if s < last:
            ids += words(200 + s, 36)
    return ids, images


def logits_of(eng):
    return eng.last_logits.float().view(-1)


r = {"device": torch.cuda.get_device_name()}
before, after = prompt(1, 4, 0), prompt(3, 5, 2)
fresh = Engine(model, max_context=16384, graphs=False)
shifted = Engine(model, max_context=16384, graphs=False, kv_shift=True)
with torch.inference_mode():
    fresh.generate(*after, max_new_tokens=1)
    ref = logits_of(fresh).clone()
    k0 = fresh.k_cache[0].clone()
    # noise floor: the same prompt through prefix reuse (first the prompt less its last 500 tokens)
    floor_eng = Engine(model, max_context=16384, graphs=False)
    cut = max(i for i, x in enumerate(after[0]) if x == VS) - 4  # before the current screenshot's turn
    floor_eng.generate(after[0][:cut], after[1][:-1], max_new_tokens=1)
    floor_eng.generate(*after, max_new_tokens=1)
    floor = logits_of(floor_eng)
    shifted.generate(*before, max_new_tokens=4)
    g = shifted.generate(*after, max_new_tokens=1)
    mine = logits_of(shifted)
    n = len(after[0]) - 1


def dev(x, y):
    return {"rel": float((x - y).norm() / y.norm()), "max_abs": float((x - y).abs().max()),
            "top1_same": bool(x.argmax() == y.argmax()),
            "top5_overlap": len(set(x.topk(5).indices.tolist()) & set(y.topk(5).indices.tolist()))}


r["prompt_tokens"] = len(after[0])
r["shifted_tokens"] = g.timings.shifted_tokens
r["reused_tokens"] = g.timings.reused_tokens
r["shifted_vs_fresh"] = dev(mine, ref)
r["noise_floor_reuse_vs_fresh"] = dev(floor, ref)
r["layer0_keys_rel"] = float((shifted.k_cache[0][:, :n] - k0[:, :n]).float().norm() / k0[:, :n].float().norm())
r["last_layer_keys_rel"] = float((shifted.k_cache[-1][:, :n] - fresh.k_cache[-1][:, :n]).float().norm()
                                 / fresh.k_cache[-1][:, :n].float().norm())
print(json.dumps(r, indent=1), flush=True)

# time of the eviction step, with and without the move (3 rounds each)
times = {}
for name, eng in (("shift", shifted), ("reprefill", fresh)):
    eng.kv_shift = name == "shift"
    ts = []
    with torch.inference_mode():
        for _ in range(3):
            eng.generate(*before, max_new_tokens=4)
            torch.cuda.synchronize()
            t = time.perf_counter()
            gg = eng.generate(*after, max_new_tokens=1)
            torch.cuda.synchronize()
            ts.append((time.perf_counter() - t) * 1e3)
    times[name] = {"ms": sorted(ts)[1], "prefill_ms": gg.timings.prefill_ms, "vision_ms": gg.timings.vision_ms,
                   "shifted_tokens": gg.timings.shifted_tokens}
r["eviction_step"] = times
print(json.dumps(times, indent=1))
if len(sys.argv) > 2:
    json.dump(r, open(sys.argv[2], "w"), indent=1)
