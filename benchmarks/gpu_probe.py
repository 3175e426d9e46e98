"""Where do prefill time and peak memory go? A 3-step 1080p episode, then a profiled append step.
Usage: python benchmarks/gpu_probe.py OUT_DIR"""
import json
import sys
import time

import torch

from engine_bench import build_model, frames
from agent.backends.engine import Engine, EngineImage, image_key

out = sys.argv[1] if len(sys.argv) > 1 else "."
R = {}
gib = lambda: torch.cuda.memory_allocated() / 2 ** 30  # noqa: E731
model, improc, _, _ = build_model(None, False, "cuda")
R["mem_model_gib"] = gib()
R["vision_attn"] = model.config.vision_config._attn_implementation
R["text_attn"] = model.config.text_config._attn_implementation
eng = Engine(model, max_context=32768)
R["mem_engine_gib"] = gib()
cfg = model.config
fr = frames(1920, 1080)
g = torch.Generator().manual_seed(0)
text = lambda n: torch.randint(0, 150000, (n,), generator=g).tolist()  # noqa: E731
ids, ims = text(1000), []
steps = []
for step in range(4):
    img = next(fr)
    o = improc(images=[img], return_tensors="pt")
    im = EngineImage(o["pixel_values"].cuda(), tuple(int(v) for v in o["image_grid_thw"][0]), key=image_key(img))
    ims.append(im)
    ids = ids + [cfg.vision_start_token_id] + [cfg.image_token_id] * (im.grid_thw[1] * im.grid_thw[2] // 4) + [cfg.vision_end_token_id] + text(40)
    if step == 3:
        from torch.profiler import ProfilerActivity, profile
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            gen = eng.generate(ids, ims, max_new_tokens=2, min_new_tokens=2)
        avg = prof.key_averages()
        open(f"{out}/probe_profile_cuda.txt", "w").write(avg.table(sort_by="cuda_time_total", row_limit=30, max_name_column_width=80))
        open(f"{out}/probe_profile_cpu.txt", "w").write(avg.table(sort_by="cpu_time_total", row_limit=30, max_name_column_width=80))
        print(avg.table(sort_by="cpu_time_total", row_limit=18, max_name_column_width=60), flush=True)
    else:
        gen = eng.generate(ids, ims, max_new_tokens=25, min_new_tokens=25)
    steps.append(vars(gen.timings))
    ids = ids + gen.tokens + text(5)
R["gqa_native"] = eng._gqa_native
R["steps"] = steps
# Vision alone: memory and time of one 1080p encode.
eng.vision.clear()
torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats(); base = gib(); t = time.perf_counter()
with torch.inference_mode():
    eng.encode(ims[0])
torch.cuda.synchronize()
R["vision_encode_ms"] = (time.perf_counter() - t) * 1e3
R["vision_transient_gib"] = torch.cuda.max_memory_allocated() / 2 ** 30 - base
json.dump(R, open(f"{out}/probe.json", "w"), indent=1, default=str)
for k, v in R.items():
    if k != "steps":
        print(f"{k:28s} {v}")
for s_ in steps:
    print({k: round(v, 2) if isinstance(v, float) else v for k, v in s_.items()})
