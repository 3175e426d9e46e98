"""The fused decode layer (agent/backends/decode_kernels.py) on the 2B's shapes, on a GPU:
- the four GEMVs of 28 layers (FP8, 128x128 blocks, norms/residuals/SwiGLU folded in) in one CUDA
  graph, per launch configuration, against the FP8 Triton kernel the eager step uses and bf16 cuBLAS;
- one decode token through 28 layers at a 10K-token span, fused against the engine's eager ops
  (both in a CUDA graph, FP8 and bf16 weights), and their outputs against each other.

Usage: python benchmarks/gpu_fused_decode.py OUT.json"""
import json
import sys

import torch

from gpu_timing import graph_time

from agent.backends import decode_kernels as dk
from agent.backends.engine_ops import attend, post_attention, pre_attention
from agent.backends.fp8 import BLOCK, FP8Weight, fp8_matmul, quantize_blockwise

dev = torch.device("cuda")
BF = torch.bfloat16
L, HID, H, KV, D, INTER = 28, 2048, 16, 8, 128, 6144
SPAN, POS = 10240, 10100
r = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
print(r, flush=True)


torch.manual_seed(0)


def fp8w(n, k):
    q, s = quantize_blockwise(torch.randn(n, k, device=dev, dtype=BF) * k ** -0.5)
    return FP8Weight(q, s, (BLOCK, BLOCK), BF)


layers = []
for _ in range(L):
    layers.append(dict(ln=1 + 0.1 * torch.randn(HID, device=dev, dtype=BF), qkv=fp8w((H + 2 * KV) * D, HID),
                       qn=1 + 0.1 * torch.randn(D, device=dev, dtype=BF), kn=1 + 0.1 * torch.randn(D, device=dev, dtype=BF),
                       o=fp8w(HID, H * D), post=1 + 0.1 * torch.randn(HID, device=dev, dtype=BF), gu=fp8w(2 * INTER, HID),
                       down=fp8w(HID, INTER)))
bf16_layers = [{k: (v.dequantized() if isinstance(v, FP8Weight) else v) for k, v in w.items()} for w in layers]
fp8_bytes = sum(w[k].q.numel() for w in layers for k in ("qkv", "o", "gu", "down"))
r["fp8_weight_GB"] = fp8_bytes / 1e9

# ---- the GEMVs alone
fd = dk.FusedDecode(layers, heads=H, kv_heads=KV, head_dim=D, inter=INTER, hidden=HID, eps=1e-6,
                    max_context=32768, device=dev, dtype=BF)
x = torch.randn(HID, device=dev, dtype=BF)
xs = x.clone()


def gemvs():
    for i, w in enumerate(layers):
        ws = fd.weights[i]
        fd._gemv(x, ws["qkv"], fd.qkv, (H + 2 * KV) * D, norm=w["ln"])
        fd._gemv(fd.o, ws["o"], xs, HID, residual=xs)
        fd._gemv(x, ws["gu"], fd.a, INTER, norm=w["post"], swiglu=True)
        fd._gemv(fd.a, ws["down"], xs, HID, residual=xs)


sweep = {}
for bn, bk, warps in ((16, 512, 4), (8, 512, 4), (32, 512, 4), (16, 256, 4), (16, 1024, 8), (16, 512, 8)):
    dk.GEMV_BN, dk.GEMV_BK, dk.GEMV_WARPS = bn, bk, warps
    try:
        ms = graph_time(gemvs, 30)
    except Exception as e:  # a configuration that does not build
        sweep[f"{bn}/{bk}/{warps}"] = repr(e)[:100]
        continue
    sweep[f"{bn}/{bk}/{warps}"] = {"ms": round(ms, 4), "TBps": round(fp8_bytes / ms / 1e9, 3)}
best = min((v["ms"], k) for k, v in sweep.items() if isinstance(v, dict))
r["gemv_sweep"] = sweep
r["gemv_best"] = {"config": best[1], "ms": best[0], "TBps": fp8_bytes / best[0] / 1e9}
print("GEMV sweep (BN/BK/warps: ms, TB/s):", json.dumps(sweep), "\nbest", r["gemv_best"], flush=True)
dk.GEMV_BN, dk.GEMV_BK, dk.GEMV_WARPS = (int(v) for v in best[1].split("/"))

xm = {k: torch.randn(1, n, device=dev, dtype=BF) for k, n in (("qkv", HID), ("o", H * D), ("gu", HID), ("down", INTER))}


def eager_fp8():
    for w in layers:
        for k in ("qkv", "o", "gu", "down"):
            fp8_matmul(xm[k], w[k])


def eager_bf16():
    for w in bf16_layers:
        for k in ("qkv", "o", "gu", "down"):
            xm[k] @ w[k].t()


eager_fp8()
r["gemv_eager_fp8_kernel_ms"] = graph_time(eager_fp8, 30)
r["gemv_bf16_cublas_ms"] = graph_time(eager_bf16, 30)
print({k: r[k] for k in ("gemv_eager_fp8_kernel_ms", "gemv_bf16_cublas_ms")}, flush=True)

# ---- one decode token through 28 layers at a 10K span
k_cache = torch.randn(L, KV, 32768, D, device=dev, dtype=BF)
v_cache = torch.randn(L, KV, 32768, D, device=dev, dtype=BF)
pos = torch.tensor([POS], device=dev)
ang = torch.randn(D // 2, device=dev)
cos = torch.cat([ang.cos(), ang.cos()]).to(BF)
sin = torch.cat([ang.sin(), ang.sin()]).to(BF)
x0 = torch.randn(HID, device=dev, dtype=BF)
hidden = torch.empty(HID, device=dev, dtype=BF)
rep = H // KV
bias = torch.zeros(1, SPAN, device=dev)
bias[0, POS + 1:] = float("-inf")
bias = bias.repeat(rep, 1).view(1, 1, rep, SPAN)


def fused_step(ws=layers, f=fd):
    hidden.copy_(x0)
    for i, w in enumerate(ws):
        f.layer(hidden, i, w, k_cache[i], v_cache[i], pos, cos, sin, SPAN)


def eager_step(ws=layers):
    h = x0.view(1, 1, -1)
    for i, w in enumerate(ws):
        q, k, v = pre_attention(h, w["ln"], w["qkv"], w["qn"], w["kn"], cos.view(1, 1, -1), sin.view(1, 1, -1), 1e-6, H, KV, D)
        k_cache[i].index_copy_(1, pos, k[0])
        v_cache[i].index_copy_(1, pos, v[0])
        o = attend(q.reshape(1, KV, rep, D), k_cache[i, :, :SPAN][None], v_cache[i, :, :SPAN][None], bias, D ** -0.5)
        o = o.view(1, H, 1, D).transpose(1, 2).reshape(1, 1, H * D)
        h = post_attention(h, o, w["o"], w["post"], w["gu"], w["down"], 1e-6, INTER)
    hidden.copy_(h.view(-1))


step = {}
fd16 = dk.FusedDecode(bf16_layers, heads=H, kv_heads=KV, head_dim=D, inter=INTER, hidden=HID, eps=1e-6,
                      max_context=32768, device=dev, dtype=BF)
for name, fn in (("fused_fp8", fused_step), ("eager_fp8", eager_step),
                 ("fused_bf16", lambda: fused_step(bf16_layers, fd16)), ("eager_bf16", lambda: eager_step(bf16_layers))):
    step[name + "_ms"] = graph_time(fn, 30)
    fn()
    torch.cuda.synchronize()
    step[name + "_out"] = hidden.float().clone()
for kind in ("fp8", "bf16"):
    a, b = step.pop(f"fused_{kind}_out"), step.pop(f"eager_{kind}_out")
    step[f"{kind}_fused_vs_eager_rel"] = float((a - b).norm() / b.norm())
r["layers_at_10k"] = step
print("28 layers, one token, 10K span:", step, flush=True)

# kernels per step, counted with the profiler
for name, fn in (("fused", fused_step), ("eager", eager_step)):
    try:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            fn()
            torch.cuda.synchronize()
        r[f"{name}_kernels_per_28_layers"] = sum(1 for e in prof.events() if str(e.device_type).endswith("CUDA"))
    except Exception as e:  # the count is a detail: keep the timings
        r[f"{name}_kernels_per_28_layers"] = repr(e)[:100]
print({k: v for k, v in r.items() if "kernels_per" in k}, flush=True)
json.dump(r, open(sys.argv[1] if len(sys.argv) > 1 else "/tmp/fused_decode.json", "w"), indent=1)
