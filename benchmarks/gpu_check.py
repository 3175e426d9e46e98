"""GPU check of agent/backends/engine.py on the real Qwen3-VL-2B architecture (random weights, bf16):
correctness against transformers and against a full re-prefill, then decode variants.
Usage: python benchmarks/gpu_check.py OUT.json   (prints a short table last)"""
import gc
import json
import sys
import time

import torch

from engine_bench import build_model, frames
from agent.backends.engine import Engine, EngineImage, image_key

out_path = sys.argv[1] if len(sys.argv) > 1 else "gpu_check.json"
R = {"torch": torch.__version__, "device": torch.cuda.get_device_name()}
t0 = time.perf_counter()
model, improc, _, _ = build_model(None, False, "cuda")
R["build_s"] = time.perf_counter() - t0
cfg = model.config
IMG, VS, VE = cfg.image_token_id, cfg.vision_start_token_id, cfg.vision_end_token_id
g = torch.Generator().manual_seed(0)


def text(n):
    return torch.randint(0, 150000, (n,), generator=g).tolist()


def shot(img):
    o = improc(images=[img], return_tensors="pt")
    grid = tuple(int(v) for v in o["image_grid_thw"][0])
    return EngineImage(o["pixel_values"].cuda(), grid, key=image_key(img))


def placeholders(im):
    t, h, w = im.grid_thw
    return [VS] + [IMG] * (t * h * w // 4) + [VE]


def free(eng):
    del eng
    gc.collect()
    torch.cuda.empty_cache()


fr = frames(1280, 720)
ims = [shot(next(fr)) for _ in range(6)]

# 1. Engine vs transformers' forward on one prompt (bf16: compare logits and greedy tokens).
try:
    ids = text(50) + placeholders(ims[0]) + text(30)
    eng = Engine(model, max_context=4096)
    gen = eng.generate(ids, [ims[0]], max_new_tokens=16, min_new_tokens=16)
    full = ids + gen.tokens
    kw = dict(pixel_values=ims[0].pixel_values, image_grid_thw=torch.tensor([ims[0].grid_thw], device="cuda"))
    x = torch.tensor([full], device="cuda")
    with torch.inference_mode():
        try:
            logits = model(input_ids=x, mm_token_type_ids=(x == IMG).int(), **kw).logits[0].float()
        except TypeError:
            logits = model(input_ids=x, **kw).logits[0].float()
    ref = logits[len(ids) - 1:-1].argmax(-1).tolist()
    agree = sum(a == b for a, b in zip(ref, gen.tokens))
    R["hf_teacher_forced_agreement"] = f"{agree}/{len(ref)}"
    # first-token logits, engine vs transformers
    eng.reset()
    with torch.inference_mode():
        eng.generate(ids, [ims[0]], max_new_tokens=1)
        R["hf_first_token_equal"] = gen.tokens[0] == int(logits[len(ids) - 1].argmax())
    free(eng)
except Exception as e:  # keep going: the numbers below still matter
    R["hf_compare_error"] = repr(e)[:400]
    print("hf compare failed", repr(e)[:400], flush=True)

# 2. Prefix reuse vs full re-prefill: a rolling-history episode, replies must be equal.
def episode(eng, reuse, steps=6, history=3):
    gg = torch.Generator().manual_seed(5)
    system, turns, replies = torch.randint(0, 150000, (300,), generator=gg).tolist(), [], []
    for s in range(steps):
        turns.append((ims[s], torch.randint(0, 150000, (20,), generator=gg).tolist()))
        ids, imgs = list(system), []
        first = max(0, len(turns) - history)
        for i, (im, t) in enumerate(turns):
            if i >= first:
                ids += placeholders(im); imgs.append(im)
            ids += t
            if i < len(replies):
                ids += replies[i]
        if not reuse:
            eng.reset()
        replies.append(eng.generate(ids, imgs, max_new_tokens=12, min_new_tokens=12).tokens)
    return replies

eng = Engine(model, max_context=16384)
a = episode(eng, True)
b = episode(eng, False)
R["reuse_equals_full_prefill_bf16"] = a == b
R["reuse_token_mismatches_bf16"] = sum(x != y for ra, rb in zip(a, b) for x, y in zip(ra, rb))
free(eng)
# The same in float32: differences in bf16 are rounding (decode GEMV vs prefill GEMM), not logic.
model.float()
eng = Engine(model, max_context=16384)
a = episode(eng, True)
b = episode(eng, False)
R["reuse_equals_full_prefill_fp32"] = a == b
R["reuse_token_mismatches_fp32"] = sum(x != y for ra, rb in zip(a, b) for x, y in zip(ra, rb))
free(eng)
model.to(torch.bfloat16)
print({k: v for k, v in R.items() if k.startswith("reuse")}, flush=True)

# Baseline cases (../shared/reference/baseline-h100.json): a fresh prompt, TTFT and 64-token decode.
def baseline_case(w, h, shots, text_tokens, ctx=16384):
    eng = Engine(model, max_context=ctx)
    fr = frames(w, h)
    rows = []
    for rep in range(4):
        shots_ = [shot(next(fr)) for _ in range(shots)]
        ids = text(text_tokens)
        for im in shots_:
            ids += placeholders(im)
        ids += text(10)
        eng.reset()
        gen = eng.generate(ids, shots_, max_new_tokens=64, min_new_tokens=64)
        rows.append(gen.timings)
    free(eng)
    t = sorted(rows[1:], key=lambda r: r.ttft_ms)[1]
    return dict(ctx_tokens=t.prompt_tokens, vision_ms=t.vision_ms, ttft_ms=t.ttft_ms,
                decode_tok_s=63 / (t.decode_ms / 1e3), gen_ms=t.ttft_ms + t.decode_ms)

for name, args in {"1080p_1shot_300text": (1920, 1080, 1, 300), "720p_1shot": (1280, 720, 1, 0),
                   "1080p_4shots": (1920, 1080, 4, 0)}.items():
    try:
        R["baseline_case_" + name] = baseline_case(*args)
        print(name, R["baseline_case_" + name], flush=True)
    except Exception as e:
        R["baseline_case_" + name] = repr(e)[:300]

# 3. Decode speed variants at two contexts (text-only prompt, 128 tokens).
def decode_speed(eng, ctx, n=128):
    ids = text(ctx)
    eng.reset()
    eng.generate(ids, [], max_new_tokens=8, min_new_tokens=8)  # capture graphs
    eng.reset()
    eng.generate(ids[:-1], [], max_new_tokens=1)  # prefill all but the last token
    best = None
    for _ in range(3):
        gen = eng.generate(ids, [], max_new_tokens=n, min_new_tokens=n)  # reuses the prefix
        ms = gen.timings.decode_ms / (n - 1)
        best = ms if best is None else min(best, ms)
    return best

def profile(eng, n=20):
    from torch.profiler import ProfilerActivity, profile as prof_ctx
    ids = text(10240)
    eng.reset()
    eng.generate(ids, [], max_new_tokens=4, min_new_tokens=4)
    with prof_ctx(activities=[ProfilerActivity.CUDA]) as prof:
        eng.generate(ids, [], max_new_tokens=n + 1, min_new_tokens=n + 1)
    avg = prof.key_averages()
    tab = avg.table(sort_by="cuda_time_total", row_limit=25, max_name_column_width=90)
    open(out_path.replace(".json", "_profile.txt"), "w").write(tab)
    kernels = sum(e.count for e in avg if e.device_type.name == "CUDA")
    gpu_us = sum(e.self_device_time_total for e in avg if e.device_type.name == "CUDA")
    R["profile_kernels_per_token"] = kernels / n
    R["profile_gpu_us_per_token"] = gpu_us / n
    print(tab[:6000], flush=True)


variants = [("bmm", True), ("bmm", "max-autotune-no-cudagraphs")]
for attn, comp in variants:
    name = f"{attn}{'+compile' if comp is True else ('+' + comp if comp else '')}"
    try:
        t = time.perf_counter()
        eng = Engine(model, max_context=16384, attention=attn, compile=comp)
        for ctx in (2048, 10240):
            ms = decode_speed(eng, ctx)
            R[f"decode_ms_{name}_{ctx}"] = ms
            print(f"{name} ctx {ctx}: {ms:.3f} ms/token = {1000 / ms:.0f} tok/s", flush=True)
        R[f"variant_s_{name}"] = time.perf_counter() - t
        if comp == "max-autotune-no-cudagraphs":
            profile(eng)
        free(eng)
    except Exception as e:
        R[f"decode_error_{name}"] = repr(e)[:400]
        print(name, "failed", repr(e)[:400], flush=True)

# 4. Vision alone on one 1920x1080 shot (encode only, cache bypassed).
fr2 = frames(1920, 1080)
big = shot(next(fr2))
eng = Engine(model, max_context=4096)
times = []
for i in range(5):
    eng.vision.clear()
    torch.cuda.synchronize(); t = time.perf_counter()
    with torch.inference_mode():
        eng.encode(big)
    torch.cuda.synchronize(); times.append((time.perf_counter() - t) * 1e3)
R["vision_ms_1080p"] = sorted(times)[2]
free(eng)

json.dump(R, open(out_path, "w"), indent=1, default=str)
for k, v in R.items():
    print(f"{k:40s} {v}")
