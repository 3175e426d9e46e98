"""Qwen3-VL's weights and vision tower without transformers' modeling code: the engine's fast load.

Importing transformers' Qwen3-VL modeling code (and its processor, which imports the same) imports
torch._dynamo, torch.distributed.tensor and SymPy for every model: on the H100 host, the load through
it took 11.0 s to the first action against 7.25 s for this one (docs/performance.md, v6). The engine (agent/backends/engine.py) already runs the language model
itself and only reads its weights; what it still took from transformers was the vision tower's
forward and the loading. This module has both, in plain torch:
- `read_config`: config.json as attributes (the new `rope_parameters` and the older `rope_scaling`
  layouts alike), the fields the engine and the budget planner read;
- `Qwen3VL`: the module tree under transformers' names (`model.visual...`, `model.language_model...`,
  `lm_head`), so checkpoint keys, FP8 attachment (agent/backends/fp8.py) and the engine's reads are
  unchanged; the vision tower's forward computes what transformers' Qwen3VLVisionModel computes
  (tests/backends/test_native_qwen3vl.py holds them equal on the tiny checkpoint), in less memory:
  the position-embedding resampling as four weighted gathers a slice of patches at a time instead
  of one (4, N, hidden) float32 temporary (~0.25 GiB at 1080p); the residual stream updated in
  place; keys and values first, then the queries, their attention and projection a slice of
  patches at a time (no fused q/k/v of the whole screenshot); the MLP over slices; the float32
  rotary in one fused kernel on a GPU (docs/performance.md, v7, has the figures);
- `load`: the safetensors files straight onto the device, into a model built on the meta device.
Only what the engine needs: no `generate`, no text forward (the engine's), images only.
"""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn
import torch.nn.functional as F

ACTIVATIONS = {"gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"), "gelu": F.gelu, "silu": F.silu}
VISION_ROWS = 2048  # patches per slice of the vision attention's queries and MLP: a 1080p screenshot is ~8.2K patches
VISION_THETA = 10000.0  # the vision rope's base when the config names none (transformers' default)


def _ns(d: dict) -> SimpleNamespace:
    return SimpleNamespace(**d)


def read_config(folder) -> SimpleNamespace:
    """config.json of a Qwen3-VL checkpoint as attributes (text_config, vision_config, token ids)."""
    raw = json.loads(Path(folder, "config.json").read_text(encoding="utf-8"))
    if raw.get("model_type") != "qwen3_vl":
        raise ValueError(f"not a Qwen3-VL checkpoint (model_type {raw.get('model_type')!r})")
    text, vision = dict(raw.get("text_config") or {}), dict(raw.get("vision_config") or {})
    rope = dict(text.get("rope_parameters") or text.get("rope_scaling") or {})
    rope.setdefault("rope_theta", text.get("rope_theta", 5_000_000.0))
    if rope.get("rope_type", rope.get("type", "default")) != "default" or not rope.get("mrope_interleaved", True):
        raise ValueError(f"unsupported text rope {rope}")
    text["rope_parameters"] = rope
    text.setdefault("head_dim", text["hidden_size"] // text["num_attention_heads"])
    text.setdefault("tie_word_embeddings", raw.get("tie_word_embeddings", False))
    vrope = dict(vision.get("rope_parameters") or {})
    vision["rope_theta"] = vrope.get("rope_theta", VISION_THETA)
    vision.setdefault("in_channels", 3)
    vision.setdefault("deepstack_visual_indexes", [])
    if vision.get("hidden_act", "gelu_pytorch_tanh") not in ACTIVATIONS:
        raise ValueError(f"unsupported vision activation {vision.get('hidden_act')!r}")
    cfg = {k: v for k, v in raw.items() if k not in ("text_config", "vision_config")}
    cfg.setdefault("vision_start_token_id", 151652)
    cfg.setdefault("vision_end_token_id", 151653)
    cfg["tie_word_embeddings"] = text["tie_word_embeddings"]
    return SimpleNamespace(**cfg, text_config=_ns(text), vision_config=_ns(vision))


def read_generation_config(folder, cfg) -> SimpleNamespace:
    """The ids generation stops at (generation_config.json, else the text config's)."""
    path = Path(folder, "generation_config.json")
    g = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    t = cfg.text_config
    return SimpleNamespace(eos_token_id=g.get("eos_token_id", getattr(t, "eos_token_id", None)),
                           pad_token_id=g.get("pad_token_id", getattr(t, "pad_token_id", None)),
                           bos_token_id=g.get("bos_token_id", getattr(t, "bos_token_id", None)))


def _embedding(n: int, dim: int) -> nn.Embedding:
    # Given its weight, an Embedding skips its random init: on the meta device that init goes through
    # torch._refs, which imports torch._dynamo (~1 s of the import this module exists to avoid).
    return nn.Embedding(n, dim, _weight=torch.empty(n, dim))


# ---- the language model: weights only (the engine runs the forward), plus the two pieces it calls

class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x):
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


class TextRotary(nn.Module):
    """M-RoPE, interleaved: cos/sin for (3, batch, n) positions (t, h, w), as transformers computes them."""

    def __init__(self, cfg):
        super().__init__()
        self.dim, self.theta = cfg.head_dim, float(cfg.rope_parameters["rope_theta"])
        self.section = list(cfg.rope_parameters.get("mrope_section", [24, 20, 20]))
        self._inv = {}

    def inv_freq(self, device):
        inv = self._inv.get(device)
        if inv is None:  # made on first use, on the device asked: no buffer to materialise after a meta build
            inv = 1.0 / (self.theta ** (torch.arange(0, self.dim, 2, dtype=torch.float, device=device) / self.dim))
            self._inv[device] = inv
        return inv

    def forward(self, x, position_ids):
        pos = position_ids.expand(3, -1, -1)
        freqs = pos[..., None].float() * self.inv_freq(x.device)
        out = []
        for f in (freqs.cos(), freqs.sin()):
            thw = f[0]
            for axis, offset in ((1, 1), (2, 2)):
                idx = slice(offset, self.section[axis] * 3, 3)
                thw[..., idx] = f[axis, ..., idx]
            out.append(torch.cat((thw, thw), dim=-1).to(x.dtype))
        return out[0], out[1]


class TextAttention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        hd, h, kv = cfg.head_dim, cfg.num_attention_heads, cfg.num_key_value_heads
        bias = bool(getattr(cfg, "attention_bias", False))
        self.q_proj = nn.Linear(cfg.hidden_size, h * hd, bias=bias)
        self.k_proj = nn.Linear(cfg.hidden_size, kv * hd, bias=bias)
        self.v_proj = nn.Linear(cfg.hidden_size, kv * hd, bias=bias)
        self.o_proj = nn.Linear(h * hd, cfg.hidden_size, bias=bias)
        self.q_norm = RMSNorm(hd, cfg.rms_norm_eps)
        self.k_norm = RMSNorm(hd, cfg.rms_norm_eps)


class TextMLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)


class TextLayer(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.self_attn = TextAttention(cfg)
        self.mlp = TextMLP(cfg)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class TextModel(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.embed_tokens = _embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(TextLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.rotary_emb = TextRotary(cfg)


# ---- the vision tower

class VisionAttention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.heads = cfg.num_heads
        self.qkv = nn.Linear(cfg.hidden_size, cfg.hidden_size * 3)
        self.proj = nn.Linear(cfg.hidden_size, cfg.hidden_size)

    def _rows(self, x, a: int, b: int):
        """x @ qkv.weight[a:b].T + its bias: the query, or the key and value, part of the fused projection."""
        w8 = getattr(self.qkv, "fp8", None)  # an FP8Weight (agent/backends/fp8.py attaches it)
        bias = None if self.qkv.bias is None else self.qkv.bias[a:b]
        if w8 is None:
            return F.linear(x, self.qkv.weight[a:b], bias)
        if a % w8.block[0] or b % w8.block[0]:  # not on scale blocks (tiny test models): all rows, then the part
            y = w8.apply(x)[:, a:b]
        else:
            y = w8.rows(a, b).apply(x)
        return y if bias is None else y + bias

    def forward(self, x, norm, cos, sin, lengths: list[int]):
        """x += attention over norm(x), in place, as transformers' sdpa path computes it (one image at a
        time, rotary in float32). Keys and values of every patch first; then the queries VISION_ROWS
        patches at a time, each slice's output projected and added to its rows: the fused q/k/v of a
        1080p screenshot (48 MiB) and its copies were the tower's largest transients. A slice's rows
        change only after its queries were read, and no later slice reads them."""
        n, hid = x.shape
        d = hid // self.heads
        k = x.new_empty(1, self.heads, n, d)
        v = x.new_empty(1, self.heads, n, d)
        for a in range(0, n, VISION_ROWS):
            kv = self._rows(norm(x[a:a + VISION_ROWS]), hid, 3 * hid).view(-1, 2, self.heads, d)
            k[0, :, a:a + VISION_ROWS] = _rotate(kv[:, 0], cos[a:a + VISION_ROWS], sin[a:a + VISION_ROWS]).transpose(0, 1)
            v[0, :, a:a + VISION_ROWS] = kv[:, 1].transpose(0, 1)
        start = 0
        for length in lengths:
            ks, vs = k[:, :, start:start + length], v[:, :, start:start + length]
            for a in range(start, start + length, VISION_ROWS):
                b = min(start + length, a + VISION_ROWS)
                q = _rotate(self._rows(norm(x[a:b]), 0, hid).view(b - a, self.heads, d), cos[a:b], sin[a:b])
                o = F.scaled_dot_product_attention(q.transpose(0, 1).unsqueeze(0), ks, vs)
                x[a:b] += self.proj(o[0].transpose(0, 1).reshape(b - a, hid))
            start += length
        return x


ROTARY_ROWS = 2048  # patches rotated at a time by the torch path (bounds its float32 temporaries; fewer launches than smaller slices)


def _rotate(x, cos, sin):
    """Rotary in float32 written back into x (n, heads, dim), as transformers computes it: on a GPU one
    fused kernel (no temporaries, one launch instead of ~7 a slice), else ROTARY_ROWS patches at a time."""
    if x.is_cuda and x.stride(-1) == 1 and x.shape[-1] & (x.shape[-1] - 1) == 0 and _rotary_kernel() is not None:
        n, heads, dim = x.shape
        try:
            _ROTARY[0][(n,)](x, cos, sin, x.stride(0), x.stride(1), cos.stride(0), H=heads, D=dim,
                             BH=1 << (heads - 1).bit_length(), enable_fp_fusion=False)  # no FMA: the same roundings
            return x
        except Exception as e:  # noqa: BLE001 (a Triton that cannot build it: the torch path, said once)
            import logging
            logging.getLogger(__name__).warning("vision rotary: no fused kernel (%s); torch ops instead",
                                                str(e).splitlines()[0][:160] if str(e) else type(e).__name__)
            _ROTARY[0] = None
    half = x.shape[-1] // 2
    for a in range(0, x.shape[0], ROTARY_ROWS):
        part = x[a:a + ROTARY_ROWS].float()
        rot = torch.cat((-part[..., half:], part[..., :half]), dim=-1)
        x[a:a + ROTARY_ROWS] = part * cos[a:a + ROTARY_ROWS].unsqueeze(-2) + rot * sin[a:a + ROTARY_ROWS].unsqueeze(-2)
    return x


_ROTARY: list = []


def _rotary_kernel():
    """The Triton kernel of `_rotate` (None without Triton)."""
    if not _ROTARY:
        try:
            import triton
            import triton.language as tl
        except ImportError:
            _ROTARY.append(None)
            return None

        @triton.jit
        def rotary(x_ptr, c_ptr, s_ptr, sxr, sxh, scr, H: tl.constexpr, D: tl.constexpr, BH: tl.constexpr):
            r = tl.program_id(0)
            h = tl.arange(0, BH)[:, None]
            j = tl.arange(0, D)[None, :]
            keep = (h < H) & (j < D)
            x = tl.load(x_ptr + r * sxr + h * sxh + j, mask=keep, other=0.0).to(tl.float32)
            turned = tl.load(x_ptr + r * sxr + h * sxh + (j + D // 2) % D, mask=keep, other=0.0).to(tl.float32)
            turned = tl.where(j < D // 2, -turned, turned)  # rotate_half
            c = tl.load(c_ptr + r * scr + j)
            s = tl.load(s_ptr + r * scr + j)
            tl.store(x_ptr + r * sxr + h * sxh + j, (x * c + turned * s).to(x_ptr.dtype.element_ty), mask=keep)

        _ROTARY.append(rotary)
    return _ROTARY[0]


class VisionMLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.linear_fc1 = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.linear_fc2 = nn.Linear(cfg.intermediate_size, cfg.hidden_size)
        self.act = ACTIVATIONS[getattr(cfg, "hidden_act", "gelu_pytorch_tanh")]

    def forward(self, x):
        return self.linear_fc2(self.act(self.linear_fc1(x)))


class VisionBlock(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.hidden_size, eps=1e-6)
        self.norm2 = nn.LayerNorm(cfg.hidden_size, eps=1e-6)
        self.attn = VisionAttention(cfg)
        self.mlp = VisionMLP(cfg)

    def forward(self, x, cos, sin, lengths: list[int]):
        """x updated in place (the tower's own tensor): attention, then the MLP VISION_ROWS patches at a time."""
        x = self.attn(x, self.norm1, cos, sin, lengths)
        for a in range(0, x.shape[0], VISION_ROWS):
            x[a:a + VISION_ROWS] += self.mlp(self.norm2(x[a:a + VISION_ROWS]))
        return x


class PatchEmbed(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.shape = (cfg.in_channels, cfg.temporal_patch_size, cfg.patch_size, cfg.patch_size)
        self.proj = nn.Conv3d(cfg.in_channels, cfg.hidden_size, kernel_size=self.shape[1:], stride=self.shape[1:])

    def forward(self, x):
        return self.proj(x.view(-1, *self.shape).to(self.proj.weight.dtype)).view(x.shape[0], -1)


class PatchMerger(nn.Module):
    def __init__(self, cfg, postshuffle: bool):
        super().__init__()
        self.size = cfg.hidden_size * cfg.spatial_merge_size ** 2
        self.postshuffle = postshuffle
        self.norm = nn.LayerNorm(self.size if postshuffle else cfg.hidden_size, eps=1e-6)
        self.linear_fc1 = nn.Linear(self.size, self.size)
        self.act_fn = nn.GELU()
        self.linear_fc2 = nn.Linear(self.size, cfg.out_hidden_size)

    def forward(self, x):
        x = self.norm(x.view(-1, self.size) if self.postshuffle else x).view(-1, self.size)
        return self.linear_fc2(self.act_fn(self.linear_fc1(x)))


class VisionModel(nn.Module):
    """Qwen3VLVisionModel's forward: patches (N, C*T*P*P) and their grids in, (merged embeddings,
    [deepstack features]) out."""

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.merge = cfg.spatial_merge_size
        self.patch_embed = PatchEmbed(cfg)
        self.pos_embed = _embedding(cfg.num_position_embeddings, cfg.hidden_size)
        self.side = int(cfg.num_position_embeddings ** 0.5)
        self.blocks = nn.ModuleList(VisionBlock(cfg) for _ in range(cfg.depth))
        self.merger = PatchMerger(cfg, postshuffle=False)
        self.deepstack_visual_indexes = list(cfg.deepstack_visual_indexes)
        self.deepstack_merger_list = nn.ModuleList(PatchMerger(cfg, postshuffle=True)
                                                   for _ in self.deepstack_visual_indexes)
        head = cfg.hidden_size // cfg.num_heads
        self.spatial_dim, self.theta = head // 2, float(cfg.rope_theta)

    @property
    def dtype(self):
        return self.blocks[0].norm1.weight.dtype

    def _rows_cols(self, grids, device):
        """(row, col) of every patch, in the processor's merge-block order."""
        rows, cols = [], []
        m = self.merge
        for t, h, w in grids:
            r = torch.arange(h, device=device).view(h // m, m, 1, 1).expand(h // m, m, w // m, m)
            c = torch.arange(w, device=device).view(1, 1, w // m, m).expand(h // m, m, w // m, m)
            rows.append(r.permute(0, 2, 1, 3).reshape(-1).repeat(t))
            cols.append(c.permute(0, 2, 1, 3).reshape(-1).repeat(t))
        return torch.cat(rows), torch.cat(cols)

    def _add_pos_embeds(self, x, grids, rows, cols):
        """x += the learned square table resampled bilinearly (align_corners) to each grid, in float32
        and VISION_ROWS patches at a time (a 1080p screenshot's float32 resampling was ~0.1 GiB)."""
        side = self.side
        hs = torch.cat([torch.full((t * h * w,), h, device=rows.device) for t, h, w in grids])
        ws = torch.cat([torch.full((t * h * w,), w, device=rows.device) for t, h, w in grids])
        taps = []
        for idx, size in ((rows, hs), (cols, ws)):
            src = idx.float() * (side - 1) / torch.clamp(size - 1, min=1).float()
            lo = torch.floor(src)
            frac = src - lo
            lo = lo.long().clamp(0, side - 1)
            hi = (lo + 1).clamp(0, side - 1)
            taps.append(((lo, 1 - frac), (hi, frac)))
        for a in range(0, x.shape[0], VISION_ROWS):
            out = None
            for (ri, rw) in taps[0]:
                for (ci, cw) in taps[1]:
                    ri_, ci_ = ri[a:a + VISION_ROWS], ci[a:a + VISION_ROWS]
                    part = self.pos_embed(ri_ * side + ci_) * (rw[a:a + VISION_ROWS] * cw[a:a + VISION_ROWS])[:, None]
                    out = part if out is None else out + part
            x[a:a + VISION_ROWS] += out.to(x.dtype)
        return x

    def _rotary(self, rows, cols, device):
        inv = 1.0 / (self.theta ** (torch.arange(0, self.spatial_dim, 2, dtype=torch.float, device=device)
                                    / self.spatial_dim))
        f = torch.cat([rows[:, None].float() * inv, cols[:, None].float() * inv], dim=-1)
        f = torch.cat([f, f], dim=-1)
        return f.cos(), f.sin()

    def forward(self, pixel_values, grid_thw):
        grids = [tuple(int(v) for v in g) for g in grid_thw.tolist()]
        lengths = [h * w for t, h, w in grids for _ in range(t)]
        x = self.patch_embed(pixel_values)
        rows, cols = self._rows_cols(grids, x.device)
        x = self._add_pos_embeds(x, grids, rows, cols)
        cos, sin = self._rotary(rows, cols, x.device)
        deep = []
        for i, blk in enumerate(self.blocks):
            x = blk(x, cos, sin, lengths)
            if i in self.deepstack_visual_indexes:
                deep.append(self.deepstack_merger_list[self.deepstack_visual_indexes.index(i)](x))
        return self.merger(x), deep


class Inner(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.visual = VisionModel(cfg.vision_config)
        self.language_model = TextModel(cfg.text_config)


class Qwen3VL(nn.Module):
    """The weights of a Qwen3-VL checkpoint under transformers' names, for the engine."""

    def __init__(self, cfg):
        super().__init__()
        self.config = cfg
        self.model = Inner(cfg)
        t = cfg.text_config
        self.lm_head = nn.Linear(t.hidden_size, t.vocab_size, bias=False)


def build_meta(cfg, dtype) -> Qwen3VL:
    """The model with no storage (the load assigns the checkpoint's tensors)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device("meta"):
            return Qwen3VL(cfg)
    finally:
        torch.set_default_dtype(old)


def read_tensors(folder, device) -> dict:
    """Every tensor of the checkpoint's safetensors files, on `device`."""
    from safetensors import safe_open
    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        raise OSError(f"no *.safetensors files in {folder}")
    out = {}
    for f in files:
        with safe_open(str(f), framework="pt", device=str(device)) as fh:
            for k in fh.keys():
                out[k] = fh.get_tensor(k)
    return out


def canonical_key(name: str) -> str:
    """A checkpoint key under this tree's names (older checkpoints: visual.* and model.layers.*)."""
    if name.startswith("visual."):
        return "model." + name
    if name.startswith("model.") and not name.startswith(("model.visual.", "model.language_model.")):
        return "model.language_model." + name[len("model."):]
    return name


def load(folder, dtype, device, tensors: dict | None = None) -> Qwen3VL:
    """A bf16/fp32 checkpoint folder onto `device` in `dtype` (`tensors`: read already, e.g. in a
    thread beside the imports; emptied). Raises ValueError when the checkpoint and the config disagree."""
    cfg = read_config(folder)
    model = build_meta(cfg, dtype)
    tensors = read_tensors(folder, device) if tensors is None else tensors
    state = {canonical_key(k): (t.to(device=device, dtype=dtype) if t.is_floating_point() else t.to(device))
             for k, t in tensors.items()}
    tensors.clear()  # the caller's dict lets go too: quantising at load (fp8.py) frees each bf16 weight as it goes
    return finish(model, state, folder)


def finish(model: Qwen3VL, state: dict, folder, skip=()) -> Qwen3VL:
    """Assign `state` into a meta-built model and tie the head; every parameter must be assigned
    (none left on the meta device). `skip`: module names whose weight is held elsewhere (FP8 linears)."""
    tied = model.config.tie_word_embeddings
    if tied:
        state.pop("lm_head.weight", None)
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    missing = [m for m in missing if not (tied and m == "lm_head.weight") and m.rsplit(".", 1)[0] not in skip]
    if missing or unexpected:
        raise ValueError(f"checkpoint does not match the model: missing {missing[:3]}, unexpected {unexpected[:3]}")
    if tied:
        model.lm_head.weight = model.model.language_model.embed_tokens.weight
    model.generation_config = read_generation_config(folder, model.config)
    return model.eval().requires_grad_(False)
