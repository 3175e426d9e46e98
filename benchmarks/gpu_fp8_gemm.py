"""FP8 GEMMs for long inputs (agent/backends/fp8.py `_scaled_linear`) against widening the weight to
bf16 and against bf16 weights, on the 2B's linear shapes, both checkpoint layouts.

For each shape and row count: the relative error of the FP8 GEMM (activations quantised per 1x128
group, or per row) against the FP8 weight's exact product (x @ dequantised weight) and against bf16,
and the time of each path (CUDA events, median of 20 after warm-up). Totals for one 2048-token
prefill chunk through the 28 layers and for a 1080p screenshot (8160 patches) through the 24 vision
blocks. Usage: python benchmarks/gpu_fp8_gemm.py [OUT.json]
"""
import json
import statistics
import sys

import torch

from agent.backends import fp8
from agent.backends.fp8 import FP8Weight, linear, quantize_blockwise, quantize_channelwise

dev = torch.device("cuda")
# (name, N, K, how many per pass): the 2B's language layer (fused q/k/v and gate/up) and vision block
LM = [("qkv", 4096, 2048, 28), ("o", 2048, 2048, 28), ("gate_up", 12288, 2048, 28), ("down", 2048, 6144, 28)]
VIS = [("v_qkv", 3072, 1024, 24), ("v_proj", 1024, 1024, 24), ("v_fc1", 4096, 1024, 24), ("v_fc2", 1024, 4096, 24)]


def timed(fn, n=20):
    for _ in range(3):
        fn()
    ts = []
    for _ in range(n):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        ts.append(a.elapsed_time(b))
    return statistics.median(ts)


def rel(a, b):
    return float((a.float() - b.float()).norm() / b.float().norm())


r = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "shapes": {}, "totals_ms": {}}
torch.manual_seed(0)
for layout in ("block", "channel"):
    for name, n, k, count in LM + VIS:
        w = torch.randn(n, k, device=dev, dtype=torch.bfloat16) * 0.02
        q, s = quantize_blockwise(w) if layout == "block" else quantize_channelwise(w)
        blk = (128, 128) if layout == "block" else (1, k)
        wg = FP8Weight(q, s, blk, torch.bfloat16, gemm=True)
        ww = FP8Weight(q, s, blk, torch.bfloat16, gemm=False)
        wd = wg.dequantized()
        rows = (2048, 8160) if name.startswith("v_") else (65, 512, 2048)
        for m in rows:
            x = torch.randn(m, k, device=dev, dtype=torch.bfloat16)
            exact = x @ wd.t()
            got = linear(x, wg)
            row = {"err_vs_fp8_weight": rel(got, exact), "err_vs_bf16": rel(got, x @ w.t()),
                   "widen_err_vs_bf16": rel(linear(x, ww), x @ w.t()),
                   "bf16_ms": timed(lambda: x @ w.t()), "widen_ms": timed(lambda: linear(x, ww)),
                   "gemm_ms": timed(lambda: linear(x, wg)),
                   "quant_ms": timed(lambda: fp8.quantize_rows(x, 128 if layout == "block" else k, 4))}
            r["shapes"][f"{layout}/{name}/m{m}"] = row
            print(layout, name, m, {a: round(b, 4) for a, b in row.items()}, flush=True)
            if (m == 2048 and not name.startswith("v_")) or (m == 8160 and name.startswith("v_")):
                part = "prefill_2048" if m == 2048 else "vision_8160"
                for path in ("bf16_ms", "widen_ms", "gemm_ms"):
                    key = f"{layout}/{part}/{path}"
                    r["totals_ms"][key] = r["totals_ms"].get(key, 0.0) + row[path] * count
r["gemm_refused"] = {str(d): v for d, v in fp8._gemm_state.items()}
print(json.dumps(r["totals_ms"], indent=1))
if len(sys.argv) > 1:
    json.dump(r, open(sys.argv[1], "w"), indent=1)
