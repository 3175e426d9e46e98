"""FP8 on this card: the Triton e4m3 kernel of agent/backends/fp8.py against bf16, on the 2B's
decode shapes (one CUDA graph of the 28 layers' q/k/v, o, gate/up and down products), its error
against the dequantised weights, and which torch._scaled_mm variants run here.

Usage: python benchmarks/gpu_fp8_probe.py [OUT.json]"""
import json
import sys
import time

import torch

from gpu_timing import graph_time

from agent.backends.fp8 import BLOCK, FP8Weight, fp8_matmul, fp8_supported, quantize_blockwise, quantize_channelwise

dev = torch.device("cuda")
r = {"device": torch.cuda.get_device_name(), "capability": list(torch.cuda.get_device_capability()),
     "torch": torch.__version__, "fp8_supported": fp8_supported(dev)}
print(r, flush=True)
SHAPES = {"qkv": (4096, 2048), "o": (2048, 2048), "gate_up": (12288, 2048), "down": (2048, 6144)}
torch.manual_seed(0)
ws = {k: torch.randn(n, kk, device=dev, dtype=torch.bfloat16) * 0.02 for k, (n, kk) in SHAPES.items()}
errs = {}
fp8 = {}
for layout in ("block", "channel"):
    for k, w in ws.items():
        if layout == "block":
            q, s = quantize_blockwise(w)
            f = FP8Weight(q, s, (BLOCK, BLOCK), torch.bfloat16)
        else:
            q, s = quantize_channelwise(w)
            f = FP8Weight(q, s, (1, w.shape[1]), torch.bfloat16)
        fp8[(layout, k)] = f
        deq = f.dequantized()
        for m in (1, 16, 64):
            x = torch.randn(m, w.shape[1], device=dev, dtype=torch.bfloat16)
            t = time.perf_counter()
            y = fp8_matmul(x, f)
            torch.cuda.synchronize()
            ref = (x.float() @ deq.float().t())
            errs[f"{layout}/{k}/m{m}"] = dict(kernel_vs_dequant=float((y.float() - ref).norm() / ref.norm()),
                                               dequant_vs_bf16=float((x.float() @ w.float().t() - ref).norm() / ref.norm()),
                                               first_call_s=time.perf_counter() - t)
r["errors"] = errs
print(json.dumps(errs, indent=0)[:3000], flush=True)


# 28 layers of distinct weights (so L2 does not hold them), batch-1 and batch-8 products
L = 28
big = {k: [torch.randn(n, kk, device=dev, dtype=torch.bfloat16) * 0.02 for _ in range(L)] for k, (n, kk) in SHAPES.items()}
timing = {}
for m in (1, 8):
    xs = {k: torch.randn(m, kk, device=dev, dtype=torch.bfloat16) for k, (n, kk) in SHAPES.items()}

    def bf16():
        for i in range(L):
            for k in SHAPES:
                xs[k] @ big[k][i].t()
    timing[f"bf16_m{m}_ms"] = graph_time(bf16)
    for layout in ("block", "channel"):
        qs = {}
        for k in SHAPES:
            lst = []
            for i in range(L):
                if layout == "block":
                    q, s = quantize_blockwise(big[k][i])
                    lst.append(FP8Weight(q, s, (BLOCK, BLOCK), torch.bfloat16))
                else:
                    q, s = quantize_channelwise(big[k][i])
                    lst.append(FP8Weight(q, s, (1, q.shape[1]), torch.bfloat16))
            qs[k] = lst

        def f8():
            for i in range(L):
                for k in SHAPES:
                    fp8_matmul(xs[k], qs[k][i])
        f8()  # autotune outside the graph
        torch.cuda.synchronize()
        timing[f"fp8_{layout}_m{m}_ms"] = graph_time(f8)
    print(timing, flush=True)
bytes_bf16 = sum(n * k for n, k in SHAPES.values()) * L * 2
timing["bf16_bytes_GB"] = bytes_bf16 / 1e9
timing["bf16_m1_TBps"] = bytes_bf16 / timing["bf16_m1_ms"] / 1e9
timing["fp8_block_m1_TBps"] = bytes_bf16 / 2 / timing["fp8_block_m1_ms"] / 1e9
r["timing"] = timing

# torch._scaled_mm variants (prefill-sized and decode-sized)
sm = {}
for m in (16, 2048):
    k, n = 2048, 12288
    a = torch.randn(m, k, device=dev, dtype=torch.bfloat16)
    b = torch.randn(n, k, device=dev, dtype=torch.bfloat16) * 0.02
    a8, b8 = a.to(torch.float8_e4m3fn), b.to(torch.float8_e4m3fn)
    for name, sa, sb in (("tensorwise", torch.tensor(1.0, device=dev), torch.tensor(1.0, device=dev)),
                         ("rowwise", torch.ones(m, 1, device=dev), torch.ones(1, n, device=dev)),
                         ("block_1x128_128x128", torch.ones(k // 128, m, device=dev).t(), torch.ones(k // 128, n // 128, device=dev))):
        try:
            out = torch._scaled_mm(a8, b8.t(), scale_a=sa, scale_b=sb, out_dtype=torch.bfloat16)
            torch.cuda.synchronize()
            t = time.perf_counter()
            for _ in range(50):
                torch._scaled_mm(a8, b8.t(), scale_a=sa, scale_b=sb, out_dtype=torch.bfloat16)
            torch.cuda.synchronize()
            sm[f"{name}_m{m}_ms"] = (time.perf_counter() - t) / 50 * 1e3
        except Exception as e:  # noqa: BLE001
            sm[f"{name}_m{m}"] = f"fails: {str(e).splitlines()[0][:200]}"
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(50):
        a @ b.t()
    torch.cuda.synchronize()
    sm[f"bf16_m{m}_ms"] = (time.perf_counter() - t) / 50 * 1e3
r["scaled_mm"] = sm
print(sm, flush=True)
if len(sys.argv) > 1:
    json.dump(r, open(sys.argv[1], "w"), indent=1)
