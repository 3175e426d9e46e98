"""The fused decode layer (agent/backends/decode_kernels.py) on the 2B's shapes, on a GPU:
- each weight's GEMVs of 28 layers (FP8, 128x128 blocks, norms/residuals/SwiGLU folded in) in one
  CUDA graph, per launch configuration, with programmatic dependent launch (PDL) and without; the
  best per weight (written to /tmp/best_gemv.json for the product runs on the same machine); the
  four together against the FP8 Triton kernel the eager step uses and bf16 cuBLAS;
- one decode token through 28 layers at a 10K-token span, fused (PDL on and off) against the
  engine's eager ops (all in a CUDA graph, FP8 and bf16 weights), and their outputs against each
  other; the attention kernels alone;
- the decode step's end (final norm, the tied bf16 output head, the bitmask, the argmax): the eager ops
  against the fused head and pick kernels, per launch configuration.

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

# ---- the GEMVs alone: each weight's 28 GEMVs per launch configuration, with programmatic dependent
# launch (PDL: a kernel's programs start, and load their weights, while the kernel before ends) and without
fd = dk.FusedDecode(layers, heads=H, kv_heads=KV, head_dim=D, inter=INTER, hidden=HID, eps=1e-6,
                    max_context=32768, device=dev, dtype=BF, pdl=True)
fd_nopdl = dk.FusedDecode(layers, heads=H, kv_heads=KV, head_dim=D, inter=INTER, hidden=HID, eps=1e-6,
                          max_context=32768, device=dev, dtype=BF, pdl=False)
r["pdl_available"] = dk.pdl_available(dev)
x = torch.randn(HID, device=dev, dtype=BF)
xs = x.clone()
for f in (fd, fd_nopdl):  # never time on unwritten (or zero) inputs
    f.o.copy_(torch.randn_like(f.o))
    f.a.copy_(torch.randn_like(f.a))


def one_kind(name, f):
    def run():
        for i, w in enumerate(layers):
            ws = f.weights[i]
            if name == "qkv":
                f._gemv("qkv", x, ws["qkv"], f.qkv, (H + 2 * KV) * D, norm=w["ln"])
            elif name == "o":
                f._gemv("o", f.o, ws["o"], xs, HID, residual=xs)
            elif name == "gu":
                f._gemv("gu", x, ws["gu"], f.a, INTER, norm=w["post"], swiglu=True)
            else:
                f._gemv("down", f.a, ws["down"], xs, HID, residual=xs)
    return run


def gemvs(f=fd):
    for i, w in enumerate(layers):
        ws = f.weights[i]
        f._gemv("qkv", x, ws["qkv"], f.qkv, (H + 2 * KV) * D, norm=w["ln"])
        f._gemv("o", f.o, ws["o"], xs, HID, residual=xs)
        f._gemv("gu", x, ws["gu"], f.a, INTER, norm=w["post"], swiglu=True)
        f._gemv("down", f.a, ws["down"], xs, HID, residual=xs)


kind_bytes = {k: sum(w[k].q.numel() for w in layers) for k in ("qkv", "o", "gu", "down")}
CONFIGS = [(16, 512, 4), (16, 512, 8), (16, 1024, 8), (8, 1024, 8), (8, 512, 4), (8, 1024, 4), (4, 1024, 4), (32, 512, 8)]
V8 = (16, 1024, 8)  # v8's one launch for all four
committed = dict(dk.GEMV_CONFIG)
sweep, best = {}, {}
for name in ("qkv", "o", "gu", "down"):
    for pdl, f in ((True, fd), (False, fd_nopdl)):
        for cfg in (CONFIGS if pdl else sorted({V8, committed[name]})):
            key = f"{name} {'pdl' if pdl else 'nopdl'} {cfg[0]}/{cfg[1]}/{cfg[2]}"
            dk.GEMV_CONFIG[name] = cfg
            try:
                ms = graph_time(one_kind(name, f), 30)
            except Exception as e:  # a configuration that does not build
                sweep[key] = repr(e)[:100]
                continue
            sweep[key] = {"ms": round(ms, 4), "TBps": round(kind_bytes[name] / ms / 1e9, 3)}
            if pdl and (name not in best or ms < best[name][1]):
                best[name] = (cfg, ms)
    dk.GEMV_CONFIG[name] = committed[name]
    print(name, {k: v for k, v in sweep.items() if k.startswith(name + " ")}, flush=True)
r["gemv_sweep"] = sweep
r["best_configs"] = {k: list(v[0]) for k, v in best.items()}
print("best (PDL):", best, flush=True)
json.dump(r["best_configs"], open("/tmp/best_gemv.json", "w"))  # for the product runs of the same machine

four = {}
for label, cfgs, f in (("v8_config_nopdl", {k: V8 for k in committed}, fd_nopdl), ("committed_nopdl", committed, fd_nopdl),
                       ("committed_pdl", committed, fd), ("best_nopdl", {k: v[0] for k, v in best.items()}, fd_nopdl),
                       ("best_pdl", {k: v[0] for k, v in best.items()}, fd)):
    dk.GEMV_CONFIG.update(cfgs)
    ms = graph_time(lambda: gemvs(f), 30)
    four[label] = {"ms": round(ms, 4), "TBps": round(fp8_bytes / ms / 1e9, 3)}
r["gemv_28_layers"] = four
print("the four GEMVs of 28 layers:", four, flush=True)
dk.GEMV_CONFIG.update({k: v[0] for k, v in best.items()})

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
inv = 1.0 / (5e6 ** (torch.arange(0, D, 2, dtype=torch.float, device=dev) / D))  # the 2B's rotary frequencies
delta = torch.tensor([-2000], device=dev)  # rope position - slot (screenshots take fewer positions than tokens)
ang = (POS + delta).float() * inv
cos = torch.cat([ang.cos(), ang.cos()]).to(BF)  # the eager step's, as the rotary module computes them
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
        f.layer(hidden, i, w, k_cache[i], v_cache[i], pos, inv, delta, SPAN)


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


def attention_only(f=fd):
    for i, w in enumerate(layers):
        f.rope(w, k_cache[i], v_cache[i], pos, inv, delta)
        f.attend(f.q, k_cache[i], v_cache[i], pos, SPAN, 1, f.o)


step = {}
attn = {}
for cfg in ((64, 4), (64, 8), (32, 4), (128, 8), (32, 2)):
    dk.ATTENTION_CONFIG = cfg
    try:
        attn[f"{cfg[0]}/{cfg[1]}"] = round(graph_time(attention_only, 30), 4)
    except Exception as e:  # a configuration that does not build
        attn[f"{cfg[0]}/{cfg[1]}"] = repr(e)[:100]
best_attn = min((v, k) for k, v in attn.items() if isinstance(v, float))[1]
dk.ATTENTION_CONFIG = tuple(int(v) for v in best_attn.split("/"))
r["attention_sweep_ms"] = attn
r["best_configs"]["attention"] = list(dk.ATTENTION_CONFIG)
print("attention of 28 layers at 10K (tile/warps: ms):", attn, flush=True)
fd16 = dk.FusedDecode(bf16_layers, heads=H, kv_heads=KV, head_dim=D, inter=INTER, hidden=HID, eps=1e-6,
                      max_context=32768, device=dev, dtype=BF, pdl=True)
fd16_nopdl = dk.FusedDecode(bf16_layers, heads=H, kv_heads=KV, head_dim=D, inter=INTER, hidden=HID, eps=1e-6,
                            max_context=32768, device=dev, dtype=BF, pdl=False)
for name, fn in (("attention_only_pdl", attention_only), ("attention_only_nopdl", lambda: attention_only(fd_nopdl)),
                 ("fused_fp8", fused_step), ("fused_fp8_nopdl", lambda: fused_step(layers, fd_nopdl)), ("eager_fp8", eager_step),
                 ("fused_bf16", lambda: fused_step(bf16_layers, fd16)),
                 ("fused_bf16_nopdl", lambda: fused_step(bf16_layers, fd16_nopdl)), ("eager_bf16", lambda: eager_step(bf16_layers))):
    step[name + "_ms"] = graph_time(fn, 30)
    fn()
    torch.cuda.synchronize()
    step[name + "_out"] = hidden.float().clone()
for kind in ("fp8", "bf16"):
    a, b, c = step.pop(f"fused_{kind}_out"), step.pop(f"eager_{kind}_out"), step.pop(f"fused_{kind}_nopdl_out")
    step[f"{kind}_fused_vs_eager_rel"] = float((a - b).norm() / b.norm())
    step[f"{kind}_pdl_equals_nopdl"] = bool(torch.equal(a, c))
for k in ("attention_only_pdl_out", "attention_only_nopdl_out"):
    step.pop(k)
r["layers_at_10k"] = step
print("28 layers, one token, 10K span:", step, flush=True)

# the decode step's end with the tied output head (151936 x 2048, bf16 in Qwen's FP8 checkpoints too):
# the engine's eager ops (final norm, cuBLAS, float, bitmask, argmax, slot) against the fused head + pick
V = 151936
head_w = torch.randn(V, HID, device=dev, dtype=BF) * HID ** -0.5
norm_w = 1 + 0.1 * torch.randn(HID, device=dev, dtype=BF)
words = (V + 31) // 32
bitmask = torch.full((1, words), -1, dtype=torch.int32, device=dev)
bits = torch.arange(32, dtype=torch.int32, device=dev)
tok = torch.zeros((1, 1), dtype=torch.long, device=dev)
hpos = torch.zeros((1,), dtype=torch.long, device=dev)


def eager_choose():
    h = x.view(1, 1, -1).float()
    h = (norm_w * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6)).to(BF))
    logits = torch.nn.functional.linear(h, head_w).float().view(1, -1)
    allowed = ((bitmask.view(-1, 1) >> bits) & 1).view(-1)[:V].bool()
    tok.copy_(logits.masked_fill(~allowed.view(1, -1), float("-inf")).argmax(-1).view(1, 1))
    hpos.add_(1)


fdh = {p: dk.FusedDecode(layers[:1], heads=H, kv_heads=KV, head_dim=D, inter=INTER, hidden=HID, eps=1e-6,
                         max_context=1024, device=dev, dtype=BF, pdl=p, vocab=V) for p in (True, False)}
head = {"GB": head_w.numel() * 2 / 1e9, "cublas_gemv_ms": round(graph_time(lambda: torch.matmul(x.view(1, -1), head_w.t()), 30), 4),
        "eager_choose_ms": round(graph_time(eager_choose, 30), 4)}
eager_choose()
want = int(tok)
best_head = None
for cfg in ((16, 1024, 8), (16, 512, 4), (8, 1024, 4), (32, 512, 8), (16, 512, 8), (8, 512, 4)):
    dk.HEAD_CONFIG = cfg
    for p in (True, False):
        ms = graph_time(lambda: fdh[p].choose(x, norm_w, 1e-6, head_w, bitmask, tok, hpos), 30)
        head[f"fused_{cfg[0]}/{cfg[1]}/{cfg[2]}_{'pdl' if p else 'nopdl'}_ms"] = round(ms, 4)
        if p and (best_head is None or ms < best_head[1]):
            best_head = (cfg, ms)
dk.HEAD_CONFIG = best_head[0]
fdh[True].choose(x, norm_w, 1e-6, head_w, bitmask, tok, hpos)
head["fused_token_equals_eager"] = int(tok) == want
bitmask.zero_()
bitmask[0, 100] = 0b1011  # a constrained step: four allowed tokens in one word
head["fused_constrained_ms"] = round(graph_time(lambda: fdh[True].choose(x, norm_w, 1e-6, head_w, bitmask, tok, hpos), 30), 4)
head["eager_constrained_ms"] = round(graph_time(eager_choose, 30), 4)
head["best"] = list(best_head[0])
r["output_head"] = head
r["best_configs"]["head"] = list(best_head[0])
json.dump(r["best_configs"], open("/tmp/best_gemv.json", "w"))
print("output head:", head, flush=True)

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
