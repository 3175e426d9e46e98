"""8-bit (FP8 e4m3) weights for the engine: load, quantise, run.

Two checkpoint layouts are read, as published:
- Qwen's fine-grained FP8 (the official `Qwen/Qwen3-VL-*-FP8` checkpoints; `quantization_config`
  `{"quant_method": "fp8", "fmt": "e4m3", "weight_block_size": [128, 128]}`): each linear's
  `weight` is e4m3 and `weight_scale_inv` holds one float32 scale per 128x128 block (weight =
  fp8 x scale, block by block).
- compressed-tensors (`{"quant_method": "compressed-tensors", "format": "float-quantized"}`, the
  third-party 2B versions): e4m3 `weight` with one `weight_scale` per output channel.
A bf16 checkpoint can also be quantised at load (`quantize_model`, 128x128 blocks).

Every quantised linear becomes an `FP8Weight`: the e4m3 matrix, its scales and the block they
cover (per channel = blocks of 1 row x all columns). `linear(x, w)` runs it:
- on a card with FP8 (compute capability >= 8.9: Ada, Hopper) a Triton kernel reads the e4m3
  weights (half the bytes of bf16: what bounds a decode step) and multiplies in bf16 with the
  block's scale applied to the partial sums;
- long inputs (prefill, the vision tower) run FP8 tensor-core GEMMs (`torch.nn.functional.scaled_mm`)
  with the activations quantised on the fly, one scale per row and 128 columns (per row for the
  per-channel layout): how vLLM and SGLang run these checkpoints ("activation_scheme": "dynamic").
  Where this torch or card has no such GEMM, or `gemm` is off (`VLAGENT_FP8_GEMM=0`), the weight is
  widened to bf16 per call, a slice of rows at a time, and cuBLAS multiplies in bf16;
- elsewhere (the CPU, older GPUs) the weights are dequantised to bf16 at load, once, with one
  line saying so: the numbers are the FP8 checkpoint's, the speed is bf16's.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

BLOCK = 128  # Qwen's weight_block_size
E4M3_MAX = 448.0
SMALL_M = 64  # rows up to which the FP8 kernel runs (decode steps, forced runs, server batches)


def fp8_supported(device) -> bool:
    """FP8 kernels need CUDA compute capability >= 8.9 (Ada, Hopper) and Triton."""
    import torch
    if getattr(device, "type", str(device)) != "cuda" or not torch.cuda.is_available():
        return False
    if torch.cuda.get_device_capability(device) < (8, 9):
        return False
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


# ---- quantise / dequantise

def quantize_blockwise(w, block: int = BLOCK):
    """(e4m3 weight, float32 scale_inv of shape (ceil(N/block), ceil(K/block))): w ~= q * scale per block."""
    import torch
    n, k = w.shape
    bn, bk = -(-n // block), -(-k // block)
    pad = torch.zeros((bn * block, bk * block), dtype=torch.float32, device=w.device)
    pad[:n, :k] = w.float()
    blocks = pad.view(bn, block, bk, block)
    amax = blocks.abs().amax(dim=(1, 3)).clamp(min=1e-12)
    scale = amax / E4M3_MAX
    q = (blocks / scale.view(bn, 1, bk, 1)).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)
    return q.view(bn * block, bk * block)[:n, :k].contiguous(), scale.contiguous()


def quantize_channelwise(w):
    """(e4m3 weight, float32 scale of shape (N, 1)): compressed-tensors' per-channel layout."""
    import torch
    scale = (w.float().abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / E4M3_MAX)
    q = (w.float() / scale).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)
    return q.contiguous(), scale.contiguous()


def dequantize(q, scale, block: tuple[int, int], dtype, rows: tuple[int, int] | None = None):
    """The weight (or its output rows [a, b), a on a block boundary) as `dtype`: q x its block's scale,
    multiplied in float32."""
    a, b = rows or (0, q.shape[0])
    q = q[a:b]
    n, k = q.shape
    bn, bk = block
    if n % bn == 0 and k % bk == 0:  # whole blocks: the scales broadcast, no weight-sized copy of them
        w = q.float().view(n // bn, bn, k // bk, bk)
        w.mul_(scale[a // bn:a // bn + n // bn].float().view(n // bn, 1, k // bk, 1))
        return w.view(n, k).to(dtype)
    s = scale[a // bn:].float().repeat_interleave(bn, 0)[:n].repeat_interleave(min(bk, k), 1)[:, :k]
    return (q.float() * s).to(dtype)


@dataclass
class FP8Weight:
    """One linear's weight in e4m3 with its scales; `block` = (rows, columns) one scale covers."""
    q: object  # (N, K) float8_e4m3fn
    scale: object  # (ceil(N/bn), ceil(K/bk)) float32
    block: tuple[int, int]
    dtype: object  # the activations' dtype (bf16)
    gemm: bool = True  # long inputs through FP8 GEMMs where the card has them (else the weight widened per call)

    @property
    def shape(self):
        return self.q.shape

    def t(self):  # so that code written for `x @ w.t()` fails loudly instead of multiplying bytes
        raise TypeError("FP8Weight: use agent.backends.fp8.linear(x, w)")

    def dequantized(self):
        return dequantize(self.q, self.scale, self.block, self.dtype)

    def apply(self, x):
        """x @ this weight's transpose (`linear`), for callers that hold an FP8Weight without importing this module."""
        return linear(x, self)

    def rows(self, a: int, b: int) -> "FP8Weight":
        """Output rows [a, b) as a view (a and b on block boundaries)."""
        bn = self.block[0]
        return FP8Weight(self.q[a:b], self.scale[a // bn:-(-b // bn)], self.block, self.dtype, self.gemm)

    @staticmethod
    def cat(parts: list["FP8Weight"]) -> "FP8Weight | None":
        """Concatenate along the output rows (fused q/k/v, gate/up); None when the blocks do not line up."""
        import torch
        b = parts[0].block
        if any(p.block != b or p.q.shape[0] % b[0] for p in parts[:-1]) or any(p.block != b for p in parts):
            return None
        return FP8Weight(torch.cat([p.q for p in parts]).contiguous(), torch.cat([p.scale for p in parts]).contiguous(),
                         b, parts[0].dtype, parts[0].gemm)


WIDEN_ROWS = 2048  # output rows of an FP8 weight widened at a time for a long input...
WIDEN_BYTES = 24 * 2 ** 20  # ...at most this much float32 + bf16 at once (the 2B's down projection: 4 slices)


def linear(x, w):
    """x @ w.T for a bf16 tensor or an FP8Weight."""
    if not isinstance(w, FP8Weight):
        return x @ w.t()
    rows = x.numel() // x.shape[-1]
    if rows <= SMALL_M and x.is_cuda:
        return fp8_matmul(x, w)
    if w.gemm and x.is_cuda and _gemm_fits(w):
        y = _scaled_linear(x, w)
        if y is not None:
            return y
    # Long inputs (prefill, vision; the CPU in tests): the weight widened per call a slice of output
    # rows at a time, so the float32 and bf16 copies of a whole fused weight (~0.25 GiB for the 2B's
    # gate/up) never exist at once (part of the FP8 peak at 32K). Each output column is the same dot product.
    n, k = w.q.shape
    rows = min(WIDEN_ROWS, WIDEN_BYTES // (6 * k))  # float32 and bf16 copies of a slice within WIDEN_BYTES
    step = max(w.block[0], rows // w.block[0] * w.block[0])
    if n <= step:
        return x @ w.dequantized().to(x.dtype).t()
    y = x.new_empty(*x.shape[:-1], n)
    for a in range(0, n, step):
        b = min(n, a + step)
        y[..., a:b] = x @ dequantize(w.q, w.scale, w.block, x.dtype, (a, b)).t()
    return y


# ---- long inputs: FP8 GEMMs on activations quantised per row group

_gemm_state: dict = {}  # device -> False once the card's/torch's scaled_mm refused (one warning)


def _gemm_fits(w: FP8Weight) -> bool:
    """The recipes cuBLAS runs: 128x128 weight blocks with 1x128 activation groups (K in whole groups
    of four blocks, as its scale layout wants), or per-channel weights with per-row activations."""
    n, k = w.q.shape
    if w.block == (BLOCK, BLOCK):
        return k % (4 * BLOCK) == 0 and n % BLOCK == 0
    return w.block == (1, k) and k % 16 == 0 and n % 16 == 0


def quantize_rows(x2, group: int, pad_to: int = 1):
    """Dynamic activation quantisation: (e4m3 (M', K), float32 scales (M', K // group) in column-major
    order, as scaled_mm reads them) of x2 (M, K), one scale per row and `group` columns; M' is M rounded
    up to pad_to, the padding rows zero. One Triton kernel: no float32 copy of x2."""
    import torch
    import triton
    global _quant
    if _quant is None:
        _quant = _build_quant_kernel()
    m, k = x2.shape
    mp = -(-m // pad_to) * pad_to
    q = torch.empty((mp, k), dtype=torch.float8_e4m3fn, device=x2.device)
    s = torch.empty((k // group, mp), dtype=torch.float32, device=x2.device).t()
    bm = 16
    _quant[(triton.cdiv(mp, bm), k // group)](x2, q, s, m, mp, k, x2.stride(0), q.stride(0), s.stride(0), s.stride(1),
                                              G=group, BM=bm, BK=min(group, 128))
    return q, s


_quant = None


def _build_quant_kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def kernel(x_ptr, q_ptr, s_ptr, M, MP, K, sxm, sqm, ssm, ssg, G: tl.constexpr, BM: tl.constexpr, BK: tl.constexpr):
        rm = tl.program_id(0) * BM + tl.arange(0, BM)
        g0 = tl.program_id(1) * G
        amax = tl.zeros((BM,), dtype=tl.float32)
        for k0 in range(0, G, BK):
            rk = g0 + k0 + tl.arange(0, BK)
            x = tl.load(x_ptr + rm[:, None] * sxm + rk[None, :], mask=(rm[:, None] < M) & (rk[None, :] < K), other=0.0)
            amax = tl.maximum(amax, tl.max(tl.abs(x.to(tl.float32)), axis=1))
        s = tl.maximum(amax, 1e-12) / 448.0
        for k0 in range(0, G, BK):
            rk = g0 + k0 + tl.arange(0, BK)
            x = tl.load(x_ptr + rm[:, None] * sxm + rk[None, :], mask=(rm[:, None] < M) & (rk[None, :] < K), other=0.0)
            q = x.to(tl.float32) / s[:, None]
            tl.store(q_ptr + rm[:, None] * sqm + rk[None, :], q.to(q_ptr.dtype.element_ty),
                     mask=(rm[:, None] < MP) & (rk[None, :] < K))
        tl.store(s_ptr + rm * ssm + tl.program_id(1) * ssg, s, mask=rm < MP)

    return kernel


def _scaled_linear(x, w: FP8Weight):
    """x @ w.T through scaled_mm, or None where this torch/card refuses the recipe (then one warning,
    and the caller widens the weight as before, for the rest of the process)."""
    import torch
    dev = x.device
    if _gemm_state.get(dev) is False:
        return None
    import torch.nn.functional as F
    shape = x.shape
    x2 = x.reshape(-1, shape[-1])
    if x2.stride(-1) != 1 or x2.stride(0) != shape[-1]:
        x2 = x2.contiguous()
    m, k = x2.shape
    n = w.q.shape[0]
    try:
        kinds = F.ScalingType
        if w.block == (BLOCK, BLOCK):
            q, s = quantize_rows(x2, BLOCK, pad_to=4)  # cuBLAS wants the scales' rows in fours
            y = F.scaled_mm(q, w.q.t(), s, kinds.BlockWise1x128, w.scale.t(), kinds.BlockWise128x128,
                            output_dtype=x.dtype)[:m]
        else:
            q, s = quantize_rows(x2, k)
            y = F.scaled_mm(q, w.q.t(), s, kinds.RowWise, w.scale.view(1, n), kinds.RowWise, output_dtype=x.dtype)
    except torch.OutOfMemoryError:
        raise  # not a missing recipe: the widening path would need more
    except Exception as e:  # noqa: BLE001 (no scaled_mm, a refused recipe, a Triton that cannot build the kernel)
        _gemm_state[dev] = False
        log.warning("FP8 weights: no FP8 GEMM for long inputs here (%s); their weights are widened to bf16 per call",
                    str(e).splitlines()[0][:160] if str(e) else type(e).__name__)
        return None
    return y.view(*shape[:-1], n)


# ---- the Triton kernel: y = x @ (q * scale).T, e4m3 weights read once, bf16 tensor-core dots

_kernel = None


def _build_kernel():
    import triton
    import triton.language as tl

    configs = [triton.Config({"BN": bn, "BK": bk}, num_warps=w, num_stages=s)
               for bn, bk, w, s in ((16, 128, 4, 4), (32, 128, 4, 4), (64, 128, 4, 3), (32, 64, 2, 6),
                                    (16, 64, 2, 8), (64, 64, 4, 4))]  # BK <= 128: a K-step never spans two scale blocks

    try:  # the tuning's results kept in Triton's disk cache: a second start does not tune again
        tune = triton.autotune(configs=configs, key=["M_BUCKET", "N", "K"], cache_results=True)
    except TypeError:  # Triton before 3.2
        tune = triton.autotune(configs=configs, key=["M_BUCKET", "N", "K"])

    @tune
    @triton.jit
    def kernel(x_ptr, w_ptr, s_ptr, y_ptr, M, N, K, M_BUCKET, sxm, swn, ssn, ssk, sym,
               SBN: tl.constexpr, SBK: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
        pid_n = tl.program_id(0)
        pid_m = tl.program_id(1)
        rm = pid_m * BM + tl.arange(0, BM)
        rn = pid_n * BN + tl.arange(0, BN)
        acc = tl.zeros((BM, BN), dtype=tl.float32)
        for k0 in range(0, K, BK):
            rk = k0 + tl.arange(0, BK)
            x = tl.load(x_ptr + rm[:, None] * sxm + rk[None, :], mask=(rm[:, None] < M) & (rk[None, :] < K), other=0.0)
            w = tl.load(w_ptr + rn[:, None] * swn + rk[None, :], mask=(rn[:, None] < N) & (rk[None, :] < K), other=0.0)
            part = tl.dot(x, tl.trans(w.to(tl.bfloat16)))
            s = tl.load(s_ptr + (rn // SBN) * ssn + (k0 // SBK) * ssk, mask=rn < N, other=0.0)  # one per row and K-step
            acc += part * s[None, :]
        tl.store(y_ptr + rm[:, None] * sym + rn[None, :], acc.to(y_ptr.dtype.element_ty),
                 mask=(rm[:, None] < M) & (rn[None, :] < N))

    return kernel


def fp8_matmul(x, w: FP8Weight):
    """x (..., K) bf16 @ w.T on the GPU through the Triton kernel."""
    import torch
    import triton
    global _kernel
    if _kernel is None:
        _kernel = _build_kernel()
    shape = x.shape
    x2 = x.reshape(-1, shape[-1])
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    m, k = x2.shape
    n = w.q.shape[0]
    y = torch.empty((m, n), dtype=x.dtype, device=x.device)
    bm = 16 if m <= 16 else (32 if m <= 32 else 64)
    sbn, sbk = w.block
    if sbk < 128:
        raise ValueError("FP8 kernel: scale blocks narrower than 128 columns")
    grid = lambda meta: (triton.cdiv(n, meta["BN"]), triton.cdiv(m, bm))  # noqa: E731
    _kernel[grid](x2, w.q, w.scale, y, m, n, k, bm, x2.stride(0), w.q.stride(0), w.scale.stride(0),
                  w.scale.stride(1), y.stride(0), SBN=sbn, SBK=sbk, BM=bm)
    return y.view(*shape[:-1], n)


def warm_kernels(weights, device) -> None:
    """Run the kernel once per row bucket (16, 32, 64) and per integer specialisation on each distinct
    weight shape, so that its autotuning and compilation happen at load and not mid-run (on the H100, the first eviction step of an FP8 run
    spent 2.8-4.2 s tuning the 32/64-row buckets its short prefill chunk needed)."""
    import torch
    seen = set()
    for w in weights:
        key = (tuple(w.q.shape), w.block)
        if key in seen:
            continue
        seen.add(key)
        for m in (1, 5, 16, 20, 32, 33, 64):  # each row bucket, M == 1, M % 16 == 0 and neither (Triton specialises on these)
            fp8_matmul(torch.zeros(m, w.q.shape[1], dtype=w.dtype, device=device), w)
        if w.gemm and _gemm_fits(w):  # the activations' quantisation kernel, for long inputs
            for m in (65, 77, 80):  # rows and padded rows: neither, only the padded, both multiples of 16
                linear(torch.zeros(m, w.q.shape[1], dtype=w.dtype, device=device), w)


# ---- modules and checkpoints

class FP8Linear:
    """Stand-in for nn.Linear.forward with an FP8Weight (set as the module's forward). The bias is
    read from the module at each call (a checkpoint's load assigns it after this is set up)."""

    def __init__(self, w: FP8Weight, module=None):
        self.w, self.module = w, module

    def __call__(self, x):
        y = linear(x, self.w)
        bias = getattr(self.module, "bias", None) if self.module is not None else None
        return y + bias if bias is not None else y


def _linear_names(model, skip=("lm_head", "embed")):
    import torch
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear) and not any(s in name for s in skip):
            yield name, mod


def attach(mod, w: FP8Weight, kernels: bool):
    """Give an nn.Linear its FP8 weight: kernels on: it keeps the e4m3 weight and runs the FP8
    path (its bf16 `weight` parameter dropped); off: the dequantised weight replaces `weight`."""
    import torch
    if kernels:
        mod.fp8 = w
        mod.weight = None
        mod.forward = FP8Linear(w, mod)
    else:
        mod.weight = torch.nn.Parameter(w.dequantized(), requires_grad=False)


def quantize_model(model, layout: str = "block", kernels: bool | None = None, block: int = BLOCK,
                   gemm: bool = True) -> int:
    """Quantise every linear of the language model and the vision tower (not the embedding/lm_head)
    to e4m3 in place; returns how many. kernels None: where the device has FP8 kernels. gemm: long
    inputs through FP8 GEMMs (activations quantised per row group) where the card has them."""
    dev = next(model.parameters()).device
    kernels = fp8_supported(dev) if kernels is None else kernels
    if not kernels:
        warn_no_kernels(dev)
    n = 0
    for _, mod in list(_linear_names(model)):
        if layout == "block":
            q, s = quantize_blockwise(mod.weight.data, block)
            w = FP8Weight(q, s, (block, block), mod.weight.dtype, gemm)
        else:
            q, s = quantize_channelwise(mod.weight.data)
            w = FP8Weight(q, s, (1, mod.weight.shape[1]), mod.weight.dtype, gemm)
        attach(mod, w, kernels)
        n += 1
    model.fp8_kernels = kernels
    return n


_warned = False


def warn_no_kernels(device):
    global _warned
    if not _warned:
        log.warning("FP8 weights: no FP8 kernels on %s (needs a CUDA card of compute capability >= 8.9); "
                    "dequantised to bf16 at load", device)
        _warned = True


def fp8_weight_of(mod):
    return getattr(mod, "fp8", None)


# ---- checkpoints: detect, save, load

def checkpoint_layout(folder) -> str | None:
    """'block' (Qwen's fine-grained FP8), 'channel' (compressed-tensors) or None (not FP8)."""
    cfg = Path(folder) / "config.json"
    if not cfg.is_file():
        return None
    qc = json.loads(cfg.read_text()).get("quantization_config") or {}
    method = qc.get("quant_method")
    if method == "fp8":
        return "block"
    if method == "compressed-tensors":
        return "channel"
    return None


QWEN_FP8_CONFIG = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                   "weight_block_size": [BLOCK, BLOCK], "modules_to_not_convert": ["lm_head"]}
COMPRESSED_TENSORS_CONFIG = {
    "quant_method": "compressed-tensors", "format": "float-quantized", "quantization_status": "compressed",
    "config_groups": {"group_0": {
        "targets": ["Linear"],
        "weights": {"num_bits": 8, "type": "float", "strategy": "channel", "symmetric": True, "dynamic": False},
        "input_activations": {"num_bits": 8, "type": "float", "strategy": "token", "symmetric": True, "dynamic": True}}},
    "ignore": ["lm_head"]}


def save_fp8_checkpoint(src, dst, layout: str = "block") -> None:
    """Write an FP8 copy of a bf16 checkpoint folder in one of the published layouts (random-weight
    checkpoints for tests and benchmarks): linears quantised, everything else as it was."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file
    src, dst = Path(src), Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.is_file() and not f.name.endswith(".safetensors") and f.name != "model.safetensors.index.json":
            shutil.copy(f, dst / f.name)
    tensors = {}
    for f in sorted(src.glob("*.safetensors")):
        tensors.update(load_file(f))
    out = {}
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    for name, t in tensors.items():
        if _quantizable(name, t):
            t = t.to(dev)
            if layout == "block":
                q, s = quantize_blockwise(t)
                out[name], out[name[:-len("weight")] + "weight_scale_inv"] = q, s
            else:
                q, s = quantize_channelwise(t)
                out[name], out[name[:-len("weight")] + "weight_scale"] = q, s.to(torch.bfloat16)
            out[name] = out[name].cpu()
            for k in (name[:-len("weight")] + "weight_scale_inv", name[:-len("weight")] + "weight_scale"):
                if k in out:
                    out[k] = out[k].cpu()
        else:
            out[name] = t.contiguous()
    save_file(out, str(dst / "model.safetensors"), metadata={"format": "pt"})
    cfg = json.loads((src / "config.json").read_text())
    cfg["quantization_config"] = QWEN_FP8_CONFIG if layout == "block" else COMPRESSED_TENSORS_CONFIG
    (dst / "config.json").write_text(json.dumps(cfg, indent=1))


def _quantizable(name: str, t) -> bool:
    return (name.endswith(".weight") and t.dim() == 2 and "lm_head" not in name and "embed" not in name
            and "pos_embed" not in name and ("proj" in name or "qkv" in name or "linear_fc" in name or "fc" in name))


def load_fp8(folder, dtype, device, attn_implementation: str = "sdpa", kernels: bool | None = None,
             native: bool = False, tensors: dict | None = None, gemm: bool = True):
    """A Qwen3-VL model from an FP8 checkpoint folder (either layout): the model is built on the meta
    device from its config without the quantisation section, the non-quantised tensors load as they
    are, and each quantised linear gets its FP8Weight (kernels where the card has them, else
    dequantised once). native: the engine's own module tree (agent/backends/qwen3vl_model.py) instead
    of transformers' Qwen3VLForConditionalGeneration. tensors: the files read already. gemm: as
    quantize_model's."""
    import torch

    folder = Path(folder)
    layout = checkpoint_layout(folder)
    if layout is None:
        raise ValueError(f"{folder} is not an FP8 checkpoint")
    dev = torch.device(device)
    if native:
        from agent.backends import qwen3vl_model
        cfg = qwen3vl_model.read_config(folder)
        qc = cfg.quantization_config
        del cfg.quantization_config
        model = qwen3vl_model.build_meta(cfg, dtype)
    else:
        from transformers import AutoConfig, Qwen3VLForConditionalGeneration
        cfg = AutoConfig.from_pretrained(folder)
        qc = cfg.quantization_config
        del cfg.quantization_config
        cfg._attn_implementation = attn_implementation
        old = torch.get_default_dtype()
        torch.set_default_dtype(dtype)
        try:
            with torch.device("meta"):
                model = Qwen3VLForConditionalGeneration(cfg)
        finally:
            torch.set_default_dtype(old)
    block = tuple(qc.get("weight_block_size", (BLOCK, BLOCK))) if layout == "block" else None
    kernels = fp8_supported(dev) if kernels is None else kernels  # kernels=True on the CPU: e4m3 kept, widened per call (tests)
    if not kernels:
        warn_no_kernels(dev)
    if tensors is None:
        from agent.backends.qwen3vl_model import read_tensors
        tensors = read_tensors(folder, dev)
    modules = dict(model.named_modules())
    state = {}
    fp8 = {}
    for name, t in tensors.items():
        if name.endswith(("weight_scale_inv", "weight_scale", "input_scale")):
            continue
        if t.dtype == torch.float8_e4m3fn:
            mod_name = name[:-len(".weight")]
            if layout == "block":
                s = tensors[mod_name + ".weight_scale_inv"].float()
                fp8[mod_name] = FP8Weight(t, s.contiguous(), block, dtype, gemm)
            else:
                s = tensors[mod_name + ".weight_scale"].float().view(-1, 1)
                fp8[mod_name] = FP8Weight(t, s.contiguous(), (1, t.shape[1]), dtype, gemm)
        else:
            state[_model_key(name, modules)] = t.to(device=dev, dtype=dtype) if t.is_floating_point() else t.to(dev)
    tensors.clear()  # what is kept is referenced above; the caller's dict lets go of the rest
    held = set()  # modules whose weight the FP8Weight holds
    for mod_name, w in fp8.items():
        key = _model_key(mod_name + ".weight", modules)[:-len(".weight")]
        mod = modules[key]
        if kernels:
            state.pop(key + ".weight", None)
            mod.weight = None
            attach(mod, w, True)
            held.add(key)
        else:
            state[key + ".weight"] = w.dequantized()
    if native:
        model = qwen3vl_model.finish(model, state, folder, skip=held)
    else:
        missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
        tied = getattr(cfg, "tie_word_embeddings", False) or getattr(cfg.text_config, "tie_word_embeddings", False)
        missing = [m for m in missing if not (tied and m == "lm_head.weight") and m[:-len(".weight")] not in held]
        if missing or unexpected:
            raise ValueError(f"FP8 checkpoint does not match the model: missing {missing[:3]}, unexpected {unexpected[:3]}")
        if tied:
            model.lm_head.weight = model.model.language_model.embed_tokens.weight
        _materialize_buffers(model, cfg, dev)
        model.to(dev)
        model.eval()
        from transformers import GenerationConfig
        try:
            model.generation_config = GenerationConfig.from_pretrained(folder)
        except OSError:
            pass
    model.fp8_kernels = kernels
    model.fp8_layout = layout
    return model


def _model_key(name: str, modules: dict) -> str:
    """A checkpoint key as this transformers version names it (older checkpoints: model.visual... vs visual...)."""
    mod = name.rsplit(".", 1)[0]
    if mod in modules:
        return name
    for a, b in (("model.visual.", "visual."), ("visual.", "model.visual."), ("model.language_model.", "model."),
                 ("model.", "model.language_model.")):
        if name.startswith(a) and (b + name[len(a):]).rsplit(".", 1)[0] in modules:
            return b + name[len(a):]
    return name


def _materialize_buffers(model, cfg, device):
    """Buffers made in __init__ (the rotary embeddings' inverse frequencies) are on the meta device:
    take them from a fresh module of the same class built on the CPU from its own config."""
    import torch
    for name, mod in model.named_modules():
        metas = [b for b, buf in mod.named_buffers(recurse=False) if buf is not None and buf.is_meta]
        if not metas:
            continue
        with torch.device("cpu"):
            fresh = type(mod)(mod.config)
        for bname in metas:
            val = getattr(fresh, bname)
            mod.register_buffer(bname, val.to(device), persistent=False)
        if hasattr(fresh, "attention_scaling"):
            mod.attention_scaling = fresh.attention_scaling


def layer_errors(ref_model, fp8_model, ids, pixel_values=None, grid=None) -> list[dict]:
    """Relative error of each decoder layer's output (and the logits) of the FP8 model against the
    bf16 one on the same inputs: ||fp8 - ref|| / ||ref||, and top-1 agreement of the logits."""
    import torch
    outs = {}

    def grab(tag):
        def hook(_m, _i, o):
            outs.setdefault(tag, []).append((o[0] if isinstance(o, tuple) else o).float())
        return hook

    res = []
    hs = []
    for tag, model in (("ref", ref_model), ("fp8", fp8_model)):
        for i, layer in enumerate(model.model.language_model.layers):
            hs.append(layer.register_forward_hook(grab(f"{tag}{i}")))
    try:
        with torch.inference_mode():
            kw = dict(input_ids=ids)
            if pixel_values is not None:
                kw.update(pixel_values=pixel_values, image_grid_thw=grid,
                          mm_token_type_ids=(ids == ref_model.config.image_token_id).int())
            lr = ref_model(**kw).logits.float()
            lf = fp8_model(**kw).logits.float()
    finally:
        for h in hs:
            h.remove()
    for i in range(len(ref_model.model.language_model.layers)):
        a, b = outs[f"ref{i}"][0], outs[f"fp8{i}"][0]
        res.append({"layer": i, "rel_err": float((b - a).norm() / a.norm())})
    res.append({"layer": "logits", "rel_err": float((lf - lr).norm() / lr.norm()),
                "top1_agree": float((lf.argmax(-1) == lr.argmax(-1)).float().mean())})
    return res


def linear_params(config) -> int:
    """Weights of the linears FP8 covers (language model and vision tower; not the embedding/lm_head),
    from the config's shapes."""
    t, v = config.text_config, config.vision_config
    h, d = t.hidden_size, getattr(t, "head_dim", None) or t.hidden_size // t.num_attention_heads
    q, kv = t.num_attention_heads * d, t.num_key_value_heads * d
    text = t.num_hidden_layers * (h * q + 2 * h * kv + q * h + 3 * h * t.intermediate_size)
    vh, vi = v.hidden_size, v.intermediate_size
    merged = vh * v.spatial_merge_size ** 2
    mergers = 1 + len(getattr(v, "deepstack_visual_indexes", []) or [])
    vision = v.depth * (4 * vh * vh + 2 * vh * vi) + mergers * (merged * merged + merged * v.out_hidden_size)
    return text + vision


def fp8_weight_bytes(config, params: int, dtype_bytes: int = 2) -> int:
    """Bytes of the weights with FP8 linears: 1 byte per linear weight (+ a float32 scale per
    128x128 block), the rest (embedding, norms, vision patch embedding) at dtype_bytes."""
    lin = linear_params(config)
    return (params - lin) * dtype_bytes + lin + lin // (BLOCK * BLOCK) * 4
