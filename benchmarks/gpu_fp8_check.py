"""FP8 checkpoints of the random 2B in both published layouts: saved, loaded (FP8 kernels where the
card has them), and their error against the bf16 model layer by layer on the same input (a 1080p
screenshot and text), plus the load time of each.

Usage: python benchmarks/gpu_fp8_check.py BF16_DIR OUT.json [block,channel]"""
import json
import os
import sys
import time

import torch
from transformers import Qwen3VLForConditionalGeneration

from agent.backends import fp8

src, out = sys.argv[1], sys.argv[2]
r = {"device": torch.cuda.get_device_name(), "fp8_kernels": fp8.fp8_supported(torch.device("cuda"))}
ref = Qwen3VLForConditionalGeneration.from_pretrained(src, dtype=torch.bfloat16, device_map="cuda").eval()
cfg = ref.config
g = torch.Generator(device="cuda").manual_seed(0)
grid = torch.tensor([[1, 68, 120]], device="cuda")
pv = torch.randn(68 * 120, 3 * 2 * 16 * 16, device="cuda", generator=g)
text = torch.randint(1000, 150000, (1, 300), device="cuda", generator=g)
ids = torch.cat([text[:, :200], torch.tensor([[cfg.vision_start_token_id] + [cfg.image_token_id] * 2040
                                               + [cfg.vision_end_token_id]], device="cuda"), text[:, 200:]], 1)
for layout in (sys.argv[3].split(",") if len(sys.argv) > 3 else ("block", "channel")):
    dst = f"/tmp/r2b_fp8_{layout}"
    t = time.perf_counter()
    if not os.path.exists(f"{dst}/config.json"):
        fp8.save_fp8_checkpoint(src, dst, layout)
    save_s = time.perf_counter() - t
    # gemm: long inputs through FP8 GEMMs, activations quantised (the default); widen: the weight alone is FP8
    for how, gemm in (("gemm", True), ("widen", False)):
        torch.cuda.synchronize()
        t = time.perf_counter()
        m = fp8.load_fp8(dst, torch.bfloat16, "cuda", gemm=gemm)
        torch.cuda.synchronize()
        load_s = time.perf_counter() - t
        errs = fp8.layer_errors(ref, m, ids, pv, grid)
        key = layout if gemm else f"{layout}_widen"
        r[key] = {"save_s": save_s, "load_s": load_s, "layers": errs,
                  "max_layer_rel_err": max(e["rel_err"] for e in errs[:-1]), "logits": errs[-1]}
        print(key, json.dumps(r[key]["logits"]), "max layer", r[key]["max_layer_rel_err"], flush=True)
        del m
        torch.cuda.empty_cache()
json.dump(r, open(out, "w"), indent=1)
