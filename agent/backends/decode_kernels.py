"""One decode token through the language model in Triton kernels: seven a layer, two for the output
head (issue 23: decode at 10K context >= 600 tok/s with FP8 weights).

Why: the eager decode step ran ~30 kernels a layer (norms, rotary in five ops, the attention's
score matrix in float32, residual adds), ~900 a token for the 2B. In a CUDA graph each still costs
a launch and a gap, and together they took longer than reading the weights. Here a layer is:
- `gemv` x4: y = W h for one token, W in e4m3 with Qwen's 128x128 block scales or per-row scales
  (or bf16), no tensor cores (one token is one row). The RMS norm before q/k/v and before the MLP
  is folded in (each program recomputes it from the 4 KB hidden state), and so are the residual
  adds after o_proj and down_proj and SwiGLU after gate/up (a program pairs gate row j with up row
  inter + j). Each weight tile is loaded one tile ahead of its arithmetic;
- `qk_rope`: per head, q/k RMS norm and rotary (cos/sin computed from the slot, the rope delta and
  the frequencies, as the rotary module computes them); k and v written into the cache at the slot;
- `attention` + `combine`: split-K attention over the span (flash-decoding): a KV head's query heads
  are rows of one tile, each program keeps a running maximum and sum over its keys, a second kernel
  merges the splits. No float32 score matrix over the span, and each token of a forced run (the
  engine feeds up to 8 at once) attends over its own prefix.
and the step ends in `head` (final norm, the bf16 output head, the grammar's bitmask, each program's
best row; blocks of rows the grammar rules out read no weights) and `pick` (the first best row into
the token, the slot advanced): 199 kernels a token for the 2B with the embedding lookup, where the
torch ops around the fused layers (rotary, final norm, head, bitmask, argmax) had added ~30.

Programmatic dependent launch (PDL, Hopper and later): each kernel lets the next one's programs start
at once, and waits (griddepcontrol.wait) in every program before it reads what an earlier kernel
wrote or writes anything: so a kernel ends only after the one before it, stream order holds for all
but the weight loads, and those (which no kernel writes) overlap the previous kernel's end.

Measured on an H100 (docs/performance.md, v8, before PDL, the tile-ahead loads, the fused head and
the in-kernel rotary, none of which has run on a GPU yet): 28 layers for one token at a 10K span in
1.72 ms with FP8 weights against 3.84 ms for the eager ops, 197 kernels against 897.
Intermediate values are rounded to bf16 where the eager ops round them (the norms' outputs, the
projections' outputs, the rotary's cos/sin and products, the logits), so a step differs from the
eager one by summation order only. Kernels are built lazily (Triton imported on first use) and work
in Triton's interpreter on the CPU, which is how CI tests them (tests/backends/test_decode_kernels.py),
beside builds for sm_90 and sm_89 that check the PDL waits and the GEMVs' registers.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

CHUNK = 256  # keys per attention program (one split)
ATTENTION_CONFIG = (64, 4)  # keys per step inside a split, warps
ROWS = 16  # query rows of an attention tile (a KV head's query heads, padded: tl.dot wants 16)
# Each GEMV's launch, per weight: output rows per program (divides 128, so a program sits inside one
# scale block), input columns per step, warps. 16/1024/8 was the fastest of six on an H100 (v8, one
# launch for all four); gate/up reads two row sets, and with the next tiles loaded ahead 1024 columns
# spill registers (1714 bytes in Triton's sm_90 build), 512 do not. benchmarks/gpu_fused_decode.py
# sweeps these per weight.
GEMV_CONFIG = {"qkv": (16, 1024, 8), "o": (16, 1024, 8), "gu": (16, 512, 8), "down": (16, 1024, 8)}
HEAD_CONFIG = (16, 1024, 8)  # the output head's launch (rows per program, columns per step, warps)

_kernels = None
rms_rstd = None  # a Triton helper the kernels call, built by _build (a module global: the interpreter resolves names there)


def _build():
    import triton
    import triton.language as tl

    global rms_rstd

    @triton.jit
    def rms_rstd(x_ptr, K, eps, BK: tl.constexpr):
        # 1 / sqrt(mean(x^2) + eps) of the K-long bf16 hidden state, in float32
        ss = tl.zeros((BK,), dtype=tl.float32)
        for k0 in range(0, K, BK):
            rk = k0 + tl.arange(0, BK)
            xv = tl.load(x_ptr + rk, mask=rk < K, other=0.0).to(tl.float32)
            ss += xv * xv
        return tl.rsqrt(tl.sum(ss, 0) / K + eps)

    @triton.jit
    def gemv(x_ptr, g_ptr, w_ptr, s_ptr, r_ptr, y_ptr, N, K, HALF, ssn, ssk, eps,
             NORM: tl.constexpr, SCALE: tl.constexpr, RESIDUAL: tl.constexpr, SWIGLU: tl.constexpr,
             SBN: tl.constexpr, SBK: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, PDL: tl.constexpr):
        # SCALE: 0 none (bf16 weights), 1 blocks of SBN x SBK (BN divides SBN), 2 one per row group of SBN
        pid = tl.program_id(0)
        if PDL:  # let the next kernel's programs start (they wait for this one before reading its output)
            tl.extra.cuda.gdc_launch_dependents()
        rn = pid * BN + tl.arange(0, BN)
        nm = rn < N
        # The weights do not depend on the kernel before: each tile's loads are issued one tile ahead,
        # the first before waiting for that kernel, so they overlap its end.
        rk = tl.arange(0, BK)
        km = rk < K
        wm = nm[:, None] & km[None, :]
        w = tl.load(w_ptr + rn[:, None] * K + rk[None, :], mask=wm, other=0.0)
        w2 = w
        if SWIGLU:
            w2 = tl.load(w_ptr + (rn + HALF)[:, None] * K + rk[None, :], mask=wm, other=0.0)
        if PDL:
            tl.extra.cuda.gdc_wait()
        rstd = 1.0
        if NORM:
            rstd = rms_rstd(x_ptr, K, eps, BK)
        # Products accumulate per column and are summed across columns once, after the loop (a
        # reduction across threads per step would cost more than the multiply-adds).
        acc = tl.zeros((BN, BK), dtype=tl.float32)
        acc2 = tl.zeros((BN, BK), dtype=tl.float32)
        for k0 in range(0, K, BK):
            rk = k0 + tl.arange(0, BK)
            km = rk < K
            nk = rk + BK  # the next tile, loaded before this one's arithmetic (masked past K: no traffic)
            nwm = nm[:, None] & (nk < K)[None, :]
            wn = tl.load(w_ptr + rn[:, None] * K + nk[None, :], mask=nwm, other=0.0)
            wn2 = wn
            if SWIGLU:
                wn2 = tl.load(w_ptr + (rn + HALF)[:, None] * K + nk[None, :], mask=nwm, other=0.0)
            xv = tl.load(x_ptr + rk, mask=km, other=0.0).to(tl.float32)
            if NORM:  # as F.rms_norm: float32 inside, one rounding to bf16 after the weight
                gv = tl.load(g_ptr + rk, mask=km, other=0.0).to(tl.float32)
                xv = (xv * rstd * gv).to(tl.bfloat16).to(tl.float32)
            if SCALE == 1:  # the program's rows share one row block: the scales fold into x per column
                sv = tl.load(s_ptr + (pid * BN // SBN) * ssn + (rk // SBK) * ssk, mask=km, other=0.0)
                acc += w.to(tl.float32) * (xv * sv)[None, :]
            else:
                acc += w.to(tl.float32) * xv[None, :]
            if SWIGLU:
                if SCALE == 1:
                    sv2 = tl.load(s_ptr + ((pid * BN + HALF) // SBN) * ssn + (rk // SBK) * ssk, mask=km, other=0.0)
                    acc2 += w2.to(tl.float32) * (xv * sv2)[None, :]
                else:
                    acc2 += w2.to(tl.float32) * xv[None, :]
            w = wn
            w2 = wn2
        acc = tl.sum(acc, 1)
        acc2 = tl.sum(acc2, 1)
        if SCALE == 2:
            acc = acc * tl.load(s_ptr + (rn // SBN) * ssn, mask=nm, other=0.0)
            if SWIGLU:
                acc2 = acc2 * tl.load(s_ptr + ((rn + HALF) // SBN) * ssn, mask=nm, other=0.0)
        y = acc
        if SWIGLU:  # silu(gate) * up, each rounded to bf16 as the eager ops round them
            gt = acc.to(tl.bfloat16).to(tl.float32)
            up = acc2.to(tl.bfloat16).to(tl.float32)
            y = (gt / (1.0 + tl.exp(-gt))).to(tl.bfloat16).to(tl.float32) * up
        if RESIDUAL:
            y = y.to(tl.bfloat16).to(tl.float32) + tl.load(r_ptr + rn, mask=nm, other=0.0).to(tl.float32)
        tl.store(y_ptr + rn, y.to(tl.bfloat16), mask=nm)

    @triton.jit
    def qk_rope(qkv_ptr, qn_ptr, kn_ptr, inv_ptr, delta_ptr, q_ptr, kc_ptr, vc_ptr, pos_ptr, H, KV,
                sch, sct, eps, D: tl.constexpr, PDL: tl.constexpr):
        if PDL:  # start the next kernel's programs; wait for the kernel before (its output is read here)
            tl.extra.cuda.gdc_launch_dependents()
            tl.extra.cuda.gdc_wait()
        p = tl.program_id(0)
        d = tl.arange(0, D)
        slot = tl.load(pos_ptr)
        if p < H + KV:  # a query or key head: RMS norm, then rotary (q * cos + rotate_half(q) * sin)
            half: tl.constexpr = D // 2
            other = (d + half) % D  # rotate_half's partner: out[i] = -x[i + D/2] (i < D/2), x[i - D/2]
            # A decode token is text: its three M-RoPE positions are one (slot + the rope delta), so
            # cos/sin are plain rotary's, computed here as the rotary module does (float32, libdevice's
            # cosf/sinf, then bf16).
            ang = (slot + tl.load(delta_ptr)).to(tl.float32) * tl.load(inv_ptr + d % half)
            cos = tl.cos(ang).to(tl.bfloat16).to(tl.float32)
            sin = tl.sin(ang).to(tl.bfloat16).to(tl.float32)
            x = tl.load(qkv_ptr + p * D + d).to(tl.float32)
            xo = tl.load(qkv_ptr + p * D + other).to(tl.float32)
            is_q = p < H
            w = tl.where(is_q, tl.load(qn_ptr + d), tl.load(kn_ptr + d)).to(tl.float32)
            wo = tl.where(is_q, tl.load(qn_ptr + other), tl.load(kn_ptr + other)).to(tl.float32)
            rstd = tl.rsqrt(tl.sum(x * x, 0) / D + eps)
            y = (x * rstd * w).to(tl.bfloat16).to(tl.float32)
            yo = (xo * rstd * wo).to(tl.bfloat16).to(tl.float32)
            yo = tl.where(d < half, -yo, yo)
            a = (y * cos).to(tl.bfloat16).to(tl.float32)
            b = (yo * sin).to(tl.bfloat16).to(tl.float32)
            out = (a + b).to(tl.bfloat16)
            if is_q:
                tl.store(q_ptr + p * D + d, out)
            else:
                tl.store(kc_ptr + (p - H) * sch + slot * sct + d, out)
        else:
            tl.store(vc_ptr + (p - H - KV) * sch + slot * sct + d, tl.load(qkv_ptr + p * D + d))

    @triton.jit
    def attention(q_ptr, kc_ptr, vc_ptr, pos_ptr, m_ptr, l_ptr, o_ptr, sch, sct, NS, scale,
                  REP: tl.constexpr, NQ: tl.constexpr, D: tl.constexpr, R: tl.constexpr, CH: tl.constexpr,
                  BT: tl.constexpr, F32DOT: tl.constexpr, PDL: tl.constexpr):
        # Rows of the tile: the KV head's REP query heads x NQ tokens, q laid out (heads, NQ, D); token j
        # (at slot pos + j) sees keys at slots 0 .. pos + j.
        if PDL:  # start the next kernel's programs; wait for the kernel before (its output is read here)
            tl.extra.cuda.gdc_launch_dependents()
            tl.extra.cuda.gdc_wait()
        g = tl.program_id(0)
        s = tl.program_id(1)
        pos = tl.load(pos_ptr)
        length = pos + NQ
        start = s * CH
        if start < length:
            r = tl.arange(0, R)
            d = tl.arange(0, D)
            rm = r < REP * NQ
            row = g * REP * NQ + r  # = head * NQ + token
            last = pos + r % NQ
            q = tl.load(q_ptr + row[:, None] * D + d[None, :], mask=rm[:, None], other=0.0)
            m = tl.full((R,), float("-inf"), dtype=tl.float32)
            ls = tl.zeros((R,), dtype=tl.float32)
            acc = tl.zeros((R, D), dtype=tl.float32)
            end = tl.minimum(start + CH, length)
            for t0 in range(start, end, BT):
                t = t0 + tl.arange(0, BT)
                tm = t < end
                kv_off = g * sch + t[:, None] * sct + d[None, :]
                k = tl.load(kc_ptr + kv_off, mask=tm[:, None], other=0.0)
                if F32DOT:
                    sc = tl.dot(q.to(tl.float32), tl.trans(k.to(tl.float32)), input_precision="ieee") * scale
                else:
                    sc = tl.dot(q, tl.trans(k)) * scale
                sc = tl.where(t[None, :] <= last[:, None], sc, float("-inf"))
                mn = tl.maximum(m, tl.max(sc, 1))
                base = tl.where(mn == float("-inf"), 0.0, mn)  # a row with no key yet: no NaN from -inf - -inf
                p = tl.exp(sc - base[:, None])
                alpha = tl.exp(m - base)
                ls = ls * alpha + tl.sum(p, 1)
                v = tl.load(vc_ptr + kv_off, mask=tm[:, None], other=0.0)
                if F32DOT:
                    pv = tl.dot(p.to(v.dtype).to(tl.float32), v.to(tl.float32), input_precision="ieee")
                else:
                    pv = tl.dot(p.to(v.dtype), v)
                acc = acc * alpha[:, None] + pv
                m = mn
            tl.store(m_ptr + row * NS + s, m, mask=rm)
            tl.store(l_ptr + row * NS + s, ls, mask=rm)
            tl.store(o_ptr + (row * NS + s)[:, None] * D + d[None, :], acc, mask=rm[:, None])

    @triton.jit
    def combine(m_ptr, l_ptr, o_ptr, pos_ptr, out_ptr, NS, NQ: tl.constexpr, D: tl.constexpr, CH: tl.constexpr,
                BS: tl.constexpr, PDL: tl.constexpr):
        if PDL:  # start the next kernel's programs; wait for the kernel before (its output is read here)
            tl.extra.cuda.gdc_launch_dependents()
            tl.extra.cuda.gdc_wait()
        row = tl.program_id(0)
        n = (tl.load(pos_ptr) + NQ - 1 + CH) // CH  # the splits that ran: ceil((pos + NQ) / CH)
        s = tl.arange(0, BS)
        sm = s < n
        m = tl.load(m_ptr + row * NS + s, mask=sm, other=float("-inf"))
        wt = tl.where(sm, tl.exp(m - tl.max(m, 0)), 0.0)  # split 0 holds keys for every row: the max is finite
        total = tl.sum(wt * tl.load(l_ptr + row * NS + s, mask=sm, other=0.0), 0)
        d = tl.arange(0, D)
        parts = tl.load(o_ptr + (row * NS + s)[:, None] * D + d[None, :], mask=sm[:, None], other=0.0)
        tl.store(out_ptr + row * D + d, (tl.sum(parts * wt[:, None], 0) / total).to(out_ptr.dtype.element_ty))

    @triton.jit
    def head(x_ptr, g_ptr, w_ptr, bits_ptr, val_ptr, idx_ptr, N, K, eps, BN: tl.constexpr, BK: tl.constexpr,
             PDL: tl.constexpr):
        # The output head for the grammar's choice: the final norm (as the module computes it: rounded
        # to bf16, then times its weight), logits = W h rounded to bf16, the bitmask applied, and each
        # program's first largest logit. A block of rows the grammar rules out reads no weights.
        pid = tl.program_id(0)
        if PDL:
            tl.extra.cuda.gdc_launch_dependents()
        rn = pid * BN + tl.arange(0, BN)
        nm = rn < N
        word = tl.load(bits_ptr + rn // 32, mask=nm, other=0)  # copied in before the step, not by a kernel of it
        ok = (((word >> (rn % 32)) & 1) != 0) & nm
        logit = tl.full((BN,), float("-inf"), dtype=tl.float32)
        if tl.max(ok.to(tl.int32), 0) > 0:
            rk = tl.arange(0, BK)
            w = tl.load(w_ptr + rn[:, None] * K + rk[None, :], mask=nm[:, None] & (rk < K)[None, :], other=0.0)
            if PDL:
                tl.extra.cuda.gdc_wait()
            rstd = rms_rstd(x_ptr, K, eps, BK)
            acc = tl.zeros((BN, BK), dtype=tl.float32)
            for k0 in range(0, K, BK):
                rk = k0 + tl.arange(0, BK)
                km = rk < K
                nk = rk + BK
                wn = tl.load(w_ptr + rn[:, None] * K + nk[None, :], mask=nm[:, None] & (nk < K)[None, :], other=0.0)
                xv = tl.load(x_ptr + rk, mask=km, other=0.0).to(tl.float32)
                gv = tl.load(g_ptr + rk, mask=km, other=0.0).to(tl.float32)
                xv = ((xv * rstd).to(tl.bfloat16).to(tl.float32) * gv).to(tl.bfloat16).to(tl.float32)
                acc += w.to(tl.float32) * xv[None, :]
                w = wn
            logit = tl.where(ok, tl.sum(acc, 1).to(tl.bfloat16).to(tl.float32), float("-inf"))
        elif PDL:  # every program waits, so the kernel ends after the one before it (and so after all before)
            tl.extra.cuda.gdc_wait()
        tl.store(val_ptr + pid, tl.max(logit, 0))
        tl.store(idx_ptr + pid, pid * BN + tl.argmax(logit, 0))

    @triton.jit
    def pick(val_ptr, idx_ptr, tok_ptr, pos_ptr, NP, BS: tl.constexpr, PDL: tl.constexpr):
        # The head's programs' bests -> the first largest logit's row into tok (as torch.argmax picks,
        # 0 when every row is ruled out); the slot advanced.
        if PDL:
            tl.extra.cuda.gdc_launch_dependents()
            tl.extra.cuda.gdc_wait()
        best = float("-inf")
        at = 0
        for s0 in range(0, NP, BS):
            o = s0 + tl.arange(0, BS)
            v = tl.load(val_ptr + o, mask=o < NP, other=float("-inf"))
            m = tl.max(v, 0)
            if m > best:  # a later block wins only when strictly larger: ties go to the first row
                best = m
                at = tl.load(idx_ptr + s0 + tl.argmax(v, 0))
        tl.store(tok_ptr, at.to(tl.int64))
        tl.store(pos_ptr, tl.load(pos_ptr) + 1)

    return gemv, qk_rope, attention, combine, head, pick


def kernels():
    global _kernels
    if _kernels is None:
        _kernels = _build()
    return _kernels


def pdl_available(device) -> bool:
    """Programmatic dependent launch (a kernel's programs start while the one before it ends): Hopper
    and later, a Triton that exposes it, a driver that captures it in CUDA graphs (12.3), not in
    Triton's interpreter."""
    import torch
    if os.environ.get("TRITON_INTERPRET") == "1" or torch.device(device).type != "cuda":
        return False
    try:
        from triton.language.extra.cuda import gdc_wait  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.get_device_capability(device) >= (9, 0) and _driver_version() >= 12030


def _driver_version() -> int:
    """The CUDA driver's version (12030 for 12.3), 0 where it cannot be read."""
    import ctypes
    try:
        v = ctypes.c_int()
        return v.value if ctypes.CDLL("libcuda.so.1").cuDriverGetVersion(ctypes.byref(v)) == 0 else 0
    except (OSError, AttributeError):
        return 0


def _pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


@dataclass
class _Weight:
    """A linear's weight as the GEMV kernel reads it: e4m3 or bf16 (N, K), and its scales."""
    w: object
    scale: object  # a 1-element dummy where there are none
    mode: int  # 0 none, 1 blocks, 2 per row group
    sbn: int
    sbk: int


def gemv_weight(w):
    """The kernel's view of a weight (a bf16 tensor or agent.backends.fp8.FP8Weight), or None where
    the layout is one the kernel does not read (blocks a program's 16 rows would straddle)."""
    import torch
    q = getattr(w, "q", None)
    if q is None:
        ok = w.dim() == 2 and w.stride(-1) == 1 and w.stride(0) == w.shape[1]
        return _Weight(w, w.new_zeros(1, dtype=torch.float32), 0, 1, 1) if ok else None
    bn, bk = w.block
    if q.stride(-1) != 1 or q.stride(0) != q.shape[1]:
        return None
    if bk >= q.shape[1]:  # one scale per row group across all columns (the per-channel layout)
        return _Weight(q, w.scale, 2, bn, bk)
    if bn % max(c[0] for c in GEMV_CONFIG.values()) or bk % 16:
        return None
    return _Weight(q, w.scale, 1, bn, bk)


def head_weight(w) -> bool:
    """Whether the output head kernel reads this weight: plain bf16 rows (Qwen's FP8 checkpoints keep
    the tied head in bf16)."""
    import torch
    return (isinstance(w, torch.Tensor) and w.dtype == torch.bfloat16 and w.dim() == 2
            and w.stride(-1) == 1 and w.stride(0) == w.shape[1])


class FusedDecode:
    """The kernels for one decode token (`layer`: seven a layer; `choose`: the step's end; `attend`:
    the split-K attention, also for forced runs) with their scratch buffers, allocated once so that a
    captured CUDA graph reads and writes the same memory on every replay."""

    def __init__(self, layers: list[dict], *, heads: int, kv_heads: int, head_dim: int, inter: int,
                 hidden: int, eps: float, max_context: int, device, dtype, width: int = 8,
                 pdl: bool | None = None, vocab: int = 0):
        import torch
        self.H, self.KV, self.D, self.inter, self.eps = heads, kv_heads, head_dim, inter, float(eps)
        self.rep = heads // kv_heads
        self.width = width  # the most tokens one attention call takes (the engine's forced runs)
        if head_dim & (head_dim - 1) or head_dim < 16:
            raise ValueError(f"fused decode: {heads} heads over {kv_heads} KV heads of {head_dim} are not supported")
        if dtype != torch.bfloat16:  # the kernels round where bf16 ops round
            raise ValueError(f"fused decode: {dtype} activations (the kernels are written for bf16)")
        self.weights = []
        for w in layers:
            ws = {k: gemv_weight(w[k]) for k in ("qkv", "o", "gu", "down")}
            if any(v is None for v in ws.values()) or (ws["gu"].mode == 1 and inter % ws["gu"].sbn):
                raise ValueError("fused decode: a weight layout the GEMV kernel does not read")
            self.weights.append(ws)
        self.ns = -(-max_context // CHUNK)
        f32 = dict(dtype=torch.float32, device=device)
        self.m = torch.empty((heads * width, self.ns), **f32)
        self.l = torch.empty((heads * width, self.ns), **f32)
        self.parts = torch.empty((heads * width, self.ns, head_dim), **f32)
        e = dict(dtype=dtype, device=device)
        self.qkv = torch.empty((heads + 2 * kv_heads) * head_dim, **e)
        self.q = torch.empty(heads * head_dim, **e)
        self.o = torch.empty(heads * head_dim, **e)
        self.a = torch.empty(inter, **e)
        self.hidden = hidden
        # The output head's per-program bests (sized for the fewest rows a program takes).
        self.best_val = torch.empty(-(-vocab // 4), **f32)
        self.best_idx = torch.empty(-(-vocab // 4), dtype=torch.int32, device=device)
        self.gemv, self.qk_rope, self.attention, self.combine, self.head, self.pick = kernels()
        # Triton's CPU interpreter (tests) multiplies bf16 tiles wrongly: there the dots run in float32.
        self.interpreted = os.environ.get("TRITON_INTERPRET") == "1"
        # In a CUDA graph each kernel otherwise starts only after the one before has drained: with
        # PDL its programs are placed during that kernel's last wave and load their weights there.
        self.pdl = pdl_available(device) if pdl is None else bool(pdl)
        self._launch = {"launch_pdl": True} if self.pdl else {}

    def _gemv(self, name: str, x, wt: _Weight, y, n: int, *, norm=None, residual=None, swiglu: bool = False):
        k = x.numel()
        bn, bk, warps = GEMV_CONFIG[name]
        self.gemv[(-(-n // bn),)](
            x, norm if norm is not None else x, wt.w, wt.scale, residual if residual is not None else y, y,
            n, k, self.inter, wt.scale.stride(0) if wt.scale.dim() else 0,
            wt.scale.stride(1) if wt.scale.dim() > 1 else 0, self.eps,
            NORM=norm is not None, SCALE=wt.mode, RESIDUAL=residual is not None, SWIGLU=swiglu,
            SBN=wt.sbn, SBK=wt.sbk, BN=bn, BK=min(bk, _pow2(k)), PDL=self.pdl, num_warps=warps,
            **self._launch)

    def layer(self, x, i: int, w: dict, k_cache, v_cache, pos, inv_freq, delta, span: int):
        """x (hidden,) bf16, updated in place to the layer's output; k_cache/v_cache (kv_heads,
        context, head_dim) this layer's cache, the token's slot read from `pos` on the device, its
        rotary position pos + delta (inv_freq: the head_dim / 2 float32 frequencies); attention over
        slots [0, pos] within the first `span`."""
        ws = self.weights[i]
        H, KV, D = self.H, self.KV, self.D
        self._gemv("qkv", x, ws["qkv"], self.qkv, (H + 2 * KV) * D, norm=w["ln"])
        self.rope(w, k_cache, v_cache, pos, inv_freq, delta)
        self.attend(self.q, k_cache, v_cache, pos, span, 1, self.o)
        self._gemv("o", self.o, ws["o"], x, self.hidden, residual=x)
        self._gemv("gu", x, ws["gu"], self.a, self.inter, norm=w["post"], swiglu=True)
        self._gemv("down", self.a, ws["down"], x, self.hidden, residual=x)
        return x

    def rope(self, w: dict, k_cache, v_cache, pos, inv_freq, delta):
        """The fused q/k/v (self.qkv) -> q/k normed and rotated: q into self.q, k and v into the
        cache at the slot `pos`, rotary position pos + delta."""
        H, KV = self.H, self.KV
        self.qk_rope[(H + 2 * KV,)](self.qkv, w["qn"], w["kn"], inv_freq, delta, self.q, k_cache, v_cache, pos,
                                    H, KV, k_cache.stride(0), k_cache.stride(1), self.eps, D=self.D, PDL=self.pdl,
                                    num_warps=1, **self._launch)

    def choose(self, x, norm, eps: float, head, bitmask, tok, pos):
        """The decode step's end: the final norm of x (hidden,), the logits of `head` (vocab, hidden)
        bf16, the grammar's bitmask (int32 words, bit i of word j allowing row 32 j + i), the first
        largest allowed logit's row into tok (1, 1) int64 and pos advanced, in two kernels. The
        caller checks `head` with head_weight first."""
        bn, bk, warps = HEAD_CONFIG
        n, k = head.shape
        np_ = -(-n // bn)
        if np_ > self.best_val.numel():
            raise ValueError(f"fused head: {n} rows, scratch for {self.best_val.numel() * 4}")
        self.head[(np_,)](x, norm, head, bitmask, self.best_val, self.best_idx, n, k, float(eps), BN=bn,
                          BK=min(bk, _pow2(k)), PDL=self.pdl, num_warps=warps, **self._launch)
        self.pick[(1,)](self.best_val, self.best_idx, tok, pos, np_, BS=1024, PDL=self.pdl, num_warps=4, **self._launch)

    def attend(self, q, k_cache, v_cache, pos, span: int, n: int = 1, out=None):
        """Attention of n tokens (at slots pos .. pos+n-1, their K/V already in the cache) over slots
        [0, pos + j] each, within the first `span`: q contiguous (heads, n, head_dim) -> (heads, n, head_dim)."""
        import torch
        if n > self.width or -(-span // CHUNK) > self.ns:  # the scratch is sized for these
            raise ValueError(f"fused attention: {n} tokens over {span} slots, at most {self.width} over {self.ns * CHUNK}")
        out = torch.empty((self.H, n, self.D), dtype=q.dtype, device=q.device) if out is None else out
        rows = max(ROWS, _pow2(self.rep * n))
        self.attention[(self.KV, -(-span // CHUNK))](
            q, k_cache, v_cache, pos, self.m, self.l, self.parts, k_cache.stride(0), k_cache.stride(1), self.ns,
            self.D ** -0.5, REP=self.rep, NQ=n, D=self.D, R=rows, CH=CHUNK, BT=ATTENTION_CONFIG[0],
            F32DOT=self.interpreted, PDL=self.pdl, num_warps=ATTENTION_CONFIG[1], **self._launch)
        self.combine[(self.H * n,)](self.m, self.l, self.parts, pos, out, self.ns, NQ=n, D=self.D, CH=CHUNK,
                                    BS=_pow2(self.ns), PDL=self.pdl, num_warps=4, **self._launch)  # one build for every span
        return out
