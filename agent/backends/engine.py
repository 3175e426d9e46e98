"""A fast decode path for Qwen3VLForConditionalGeneration, for one agent conversation at a time.

What makes a step fast, and why each piece exists:
- One static KV cache owned here (layers x kv_heads x max_context x head_dim), so decoding never
  reallocates and a CUDA graph can replay the decode step with its buffers in place.
- Prefix reuse: the cache keeps the tokens of the previous call (prompt + reply). A new call
  prefills only from the first token (or image, compared by content key) that differs, so an
  append-only history pays only for the new screenshot and text.
- Images are encoded one at a time and cached by content key: an unchanged screenshot is never
  re-encoded, and encoding is identical whichever call first saw it.
- Decoding reads the cache only up to the next KV_BUCKET tokens and does grouped-query attention
  without copying K/V (the query heads of a KV head act as extra query rows). On CUDA each bucket's
  decode step is captured once as a CUDA graph: one replay per token, no Python per layer.
- Grammar: an xgrammar GrammarMatcher fills a token bitmask on the CPU; the mask is copied to the
  GPU and applied inside the graph, so constraining costs one small copy per token.
- The language model's forward is written here (same math as transformers' Qwen3-VL text model)
  so prefill and decode share one code path and the cache layout is ours; `tests/backends/test_engine.py`
  checks it against transformers' own forward.

- After an eviction (older screenshots leave the prompt, the task text above them changes) the KV of
  the turns that stay can be moved to their new slots instead of recomputed (`kv_shift`, off by
  default): keys are stored rotated, and a block of tokens that moves keeps its relative M-RoPE
  positions (text and images shift by the same amount in all three sections), so one rotation by
  the position delta gives the keys a prefill at the new positions would write from the same
  hidden states. Those hidden states saw the old context (the evicted screenshots), so the moved
  KV is not what a fresh prefill computes: see docs/performance.md for how far the logits move.

Use: `Engine(model, max_context)` then `generate(ids, images, max_new_tokens, matcher=...)`,
where `images` are `EngineImage`s in the order their placeholders appear in `ids`.

Public surface for a server that keeps one KV region per conversation (agent/serve/batch.py):
`KVState` (what a region's KV holds), `Engine.attach` (use a region's cache and record),
`Engine.prefix_len` (tokens of a prompt a record already holds), `Engine.take_forced` (tokens the
grammar forces), `Engine.rope_delta`, and `VisionCache` (encoded screenshots, shareable).
"""
from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from agent.backends.budget import KV_BUCKET, PREFILL_CHUNK, VISION_CACHE_SIZE, plan  # the sizes the planner plans with
from agent.backends.engine_ops import (attend, chunks, image_key, image_spans, mrope_positions,  # noqa: F401
                               post_attention, pre_attention, rms_norm, tensor_key)
from agent.backends.image_cache import PerImage
from agent.errors import VlagentError

WARMUP_REPLAYS = 2  # eager runs before capturing a graph (cuBLAS handles, lazy inits)
LOAD_TOKENS = 10240  # decode graphs captured at load up to this context (~0.65 s on the H100)
WARM_TOKENS = 16384  # decode graphs captured ahead (warm_up, capture_pending) up to this context (a 4-shot 1440p history fits; VLAGENT_WARM_TOKENS)
FEED_WIDTH = 8  # a run of up to this many forced tokens is fed in one (graph) step
FORCED_BATCH_MIN = FEED_WIDTH + 1  # longer runs go in one eager pass (it costs ~5 replays)
SHIFT_MIN = 64  # tokens: a shorter block of kept KV is recomputed rather than moved
SHIFT_CHUNK = 4096  # tokens moved per pass (bounds the temporaries)


def sdpa_backends(choice: str = "cudnn"):
    """Attention kernels for prefill and the vision tower, in order of preference. "flash" skips
    cuDNN's (the default tries it first: on Hopper it is the faster one where it applies)."""
    from torch.nn.attention import SDPBackend
    order = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]
    if choice != "flash":
        order.insert(0, SDPBackend.CUDNN_ATTENTION)
    return order


def compile_cache_dir():
    from agent.backends.options import cache_dir
    return cache_dir() / "inductor"


class Cancelled(VlagentError):
    """An engine call stopped by Engine.cancel()."""


@dataclass
class EngineImage:
    """One image of the prompt as the processor made it: its patches, grid (t, h, w) and a content key."""
    pixel_values: Any  # (t*h*w, C*T*P*P) float tensor, or a function returning it (made only if encoded)
    grid_thw: tuple[int, int, int]
    key: str = ""  # same key = same image; empty: hashed from pixel_values

    def __post_init__(self):
        self.grid_thw = tuple(int(v) for v in self.grid_thw)
        if not self.key:
            self.key = tensor_key(self.pixel_values)


class VisionCache:
    """Encoded images by content key; the least recently used goes past `size` entries."""

    def __init__(self, size: int = VISION_CACHE_SIZE):
        self.size = size
        self._items: OrderedDict[str, tuple] = OrderedDict()

    def get(self, key: str):
        hit = self._items.get(key)
        if hit is not None:
            self._items.move_to_end(key)
        return hit

    def put(self, key: str, value) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.size:
            self._items.popitem(last=False)

    def pop(self, key: str) -> None:
        self._items.pop(key, None)

    def clear(self) -> None:
        self._items.clear()

    def __contains__(self, key) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)


@dataclass(eq=False)
class KVState:
    """What a KV cache (or a server's region of one) holds: the tokens whose KV is in slots 0..n-1,
    and the content key and grid of each image among them, in order."""
    ids: list[int] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    grids: list[tuple[int, int, int]] = field(default_factory=list)

    def clear(self) -> None:
        self.ids, self.keys, self.grids = [], [], []

    def cut(self, m: int, image_token: int) -> None:
        """Keep the first m tokens (and the images wholly inside them)."""
        self.ids = self.ids[:m]
        n = sum(1 for _, e in image_spans(self.ids, image_token) if e <= m)
        self.keys, self.grids = self.keys[:n], self.grids[:n]


@dataclass
class Timings:
    vision_ms: float = 0.0  # preprocessing included
    preprocess_ms: float = 0.0  # making patches of images given as functions
    prefill_ms: float = 0.0
    ttft_ms: float = 0.0  # call start to the first token chosen (vision + prefill + sampling)
    decode_ms: float = 0.0  # after the first token
    total_ms: float = 0.0
    prompt_tokens: int = 0
    reused_tokens: int = 0  # prompt tokens whose KV came from the previous call
    shifted_tokens: int = 0  # prompt tokens whose KV was moved to new slots (kv_shift), not recomputed
    new_tokens: int = 0
    decode_steps: int = 0  # passes after the first token (one replay per chosen token or forced run)
    images_encoded: int = 0
    peak_vision_gib: float = 0.0  # device memory high-water marks per phase (CUDA only)
    peak_prefill_gib: float = 0.0
    peak_decode_gib: float = 0.0


@dataclass
class Generation:
    tokens: list[int]
    timings: Timings = field(default_factory=Timings)


class Engine:
    """Owns the KV cache and the decode graphs of one model; serves one conversation at a time."""

    def __init__(self, model, max_context: int = 32768, *, graphs: bool | None = None,
                 compile: bool | str = False, attention: str = "bmm", kv_shift: bool = False,
                 vision_cache: VisionCache | None = None, compile_vision: bool = True,
                 sdpa: str = "cudnn", fused_decode: bool | None = None, pdl: bool | None = None):
        import torch

        self.torch = torch
        self.model = model
        cfg = model.config
        self.tcfg = tcfg = cfg.text_config
        self.device = next(model.parameters()).device
        self.dtype = next(model.model.language_model.parameters()).dtype
        self.lm = model.model.language_model
        self.visual = model.model.visual
        self.merge = cfg.vision_config.spatial_merge_size
        self.image_token = cfg.image_token_id
        self.heads, self.kv_heads = tcfg.num_attention_heads, tcfg.num_key_value_heads
        self.head_dim = getattr(tcfg, "head_dim", None) or tcfg.hidden_size // self.heads
        self.eps = tcfg.rms_norm_eps
        self.inter = tcfg.intermediate_size
        self.vocab = tcfg.vocab_size
        self.max_context = int(max_context)
        self.attention = attention  # decode attention: "bmm" (two GEMVs, fastest on H100) or "sdpa"
        self.use_graphs = (self.device.type == "cuda") if graphs is None else graphs
        self._fuse_weights()
        n_layers = len(self.lm.layers)
        shape = (n_layers, self.kv_heads, self.max_context, self.head_dim)
        self.k_cache = torch.zeros(shape, dtype=self.dtype, device=self.device)
        self.v_cache = torch.zeros(shape, dtype=self.dtype, device=self.device)
        # Static decode buffers: the graph reads and writes these in place.
        self._tok = torch.zeros((1, 1), dtype=torch.long, device=self.device)
        self._pos = torch.zeros((1,), dtype=torch.long, device=self.device)  # cache slot of _tok
        self._delta = torch.zeros((1,), dtype=torch.long, device=self.device)  # rope pos - slot
        self._arange = torch.arange(self.max_context, device=self.device)
        self._toks = torch.zeros((1, FEED_WIDTH), dtype=torch.long, device=self.device)  # a forced run, padded
        self._last = torch.zeros((1,), dtype=torch.long, device=self.device)  # its last real row
        words = (self.vocab + 31) // 32
        self._bitmask = torch.full((1, words), -1, dtype=torch.int32, device=self.device)
        self._bitmask_host = torch.full((1, words), -1, dtype=torch.int32,
                                        pin_memory=self.device.type == "cuda")
        self._bits = torch.arange(32, dtype=torch.int32, device=self.device)
        self._graphs: dict[int, Any] = {}
        self._warmed: set[tuple[int, int]] = set()  # (thread, width) pairs whose lazy inits ran
        self._pending: list[tuple[int, int]] = []  # (span, width) graphs to capture between steps (warm_up)
        self._pool = None
        self._pre, self._post, self._attend = pre_attention, post_attention, attend
        # One decode token in seven Triton kernels a layer (agent/backends/decode_kernels.py), by
        # default on CUDA: the eager step's ~900 small kernels cost more than reading the weights.
        if fused_decode is None:
            fused_decode = self.device.type == "cuda"
        self._fused = self._make_fused(pdl) if fused_decode else None
        self._fused_head = False
        if self._fused is not None:
            from agent.backends.decode_kernels import head_weight
            self._fused_head = head_weight(model.lm_head.weight) and model.lm_head.weight.shape[0] == self.vocab
        self._pre_n, self._post_n = pre_attention, post_attention
        if compile and self.fp8:
            import logging
            logging.getLogger(__name__).warning("engine: FP8 weights run eager (torch.compile is not used with them)")
            compile = False
        if compile:  # one compile each, shared by all layers (weights are arguments); artefacts cached on disk
            os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(compile_cache_dir()))
            mode = compile if isinstance(compile, str) else None  # e.g. "max-autotune-no-cudagraphs"
            self._pre = torch.compile(pre_attention, dynamic=False, fullgraph=True, mode=mode)
            self._post = torch.compile(post_attention, dynamic=False, fullgraph=True, mode=mode)
            self._attend = torch.compile(attend, dynamic=True, fullgraph=True)  # the span varies
            # Prefill: the same math over n tokens; fusing the float32 norms and rotary matters there.
            self._pre_n = torch.compile(pre_attention, dynamic=True, fullgraph=True)
            self._post_n = torch.compile(post_attention, dynamic=True, fullgraph=True)
            if compile_vision:
                for blk in getattr(self.visual, "blocks", []):  # one compile shared by the blocks
                    blk.compile(dynamic=False)
        self._gqa_native: bool | None = None  # learnt on the first prefill
        self.jump_forward = True  # feed grammar-forced tokens in one pass instead of one by one
        self.tokenize = None  # text -> token ids: lets jump-forward take forced strings, not only lone tokens
        self.kv_shift = kv_shift  # move kept KV after an eviction instead of recomputing it (see the module doc)
        self.sdpa = sdpa
        self.vision = vision_cache if vision_cache is not None else VisionCache()
        self.state = KVState()  # what the cache holds
        # One call at a time: a second caller (another thread, or the loop's next step while a call
        # abandoned at its deadline still runs) waits here until the first is done.
        self._lock = threading.Lock()
        self._cancel = threading.Event()
        self._preprocess_s = 0.0
        self._stops: set[int] = set()

    # ---- set-up

    def _fuse_weights(self):
        """Concatenate q/k/v and gate/up weights, and point the model's parameters at views of them,
        so one GEMM replaces three (and two) without holding the weights twice."""
        torch = self.torch
        self.layers = []
        self.fp8 = any(getattr(mod, "fp8", None) is not None for mod in self.lm.modules())
        if self.fp8:
            self._fuse_fp8()
            return
        with torch.no_grad():
            for layer in self.lm.layers:
                a, m = layer.self_attn, layer.mlp
                qkv = torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]).contiguous()
                gu = torch.cat([m.gate_proj.weight, m.up_proj.weight]).contiguous()
                nq, nk = a.q_proj.weight.shape[0], a.k_proj.weight.shape[0]
                a.q_proj.weight = torch.nn.Parameter(qkv[:nq], requires_grad=False)
                a.k_proj.weight = torch.nn.Parameter(qkv[nq:nq + nk], requires_grad=False)
                a.v_proj.weight = torch.nn.Parameter(qkv[nq + nk:], requires_grad=False)
                m.gate_proj.weight = torch.nn.Parameter(gu[:self.inter], requires_grad=False)
                m.up_proj.weight = torch.nn.Parameter(gu[self.inter:], requires_grad=False)
                if a.q_proj.bias is not None:
                    raise VlagentError("engine: attention biases are not supported (Qwen3-VL has none)")
                self.layers.append(dict(ln=layer.input_layernorm.weight, qkv=qkv, qn=a.q_norm.weight,
                                        kn=a.k_norm.weight, o=a.o_proj.weight,
                                        post=layer.post_attention_layernorm.weight, gu=gu,
                                        down=m.down_proj.weight))

    def _fuse_fp8(self):
        """The same fusion for FP8 linears (agent/backends/fp8.py): q/k/v and gate/up concatenated in
        e4m3 with their scales, the modules pointed at row views of the fused weights."""
        from agent.backends.fp8 import FP8Linear, FP8Weight
        for layer in self.lm.layers:
            a, m = layer.self_attn, layer.mlp
            mods = [a.q_proj, a.k_proj, a.v_proj, a.o_proj, m.gate_proj, m.up_proj, m.down_proj]
            if any(getattr(x, "fp8", None) is None for x in mods) or a.q_proj.bias is not None:
                raise VlagentError("engine: FP8 weights on some linears of a layer only")
            qkv = FP8Weight.cat([a.q_proj.fp8, a.k_proj.fp8, a.v_proj.fp8])
            gu = FP8Weight.cat([m.gate_proj.fp8, m.up_proj.fp8])
            if qkv is None or gu is None:
                raise VlagentError("engine: FP8 blocks do not line up with the q/k/v or gate/up split")
            cuts = [0]
            for x in (a.q_proj, a.k_proj, a.v_proj):
                cuts.append(cuts[-1] + x.fp8.q.shape[0])
            for x, lo, hi in zip((a.q_proj, a.k_proj, a.v_proj), cuts, cuts[1:]):
                x.fp8 = qkv.rows(lo, hi)
                x.forward = FP8Linear(x.fp8, x)
            m.gate_proj.fp8, m.up_proj.fp8 = gu.rows(0, self.inter), gu.rows(self.inter, 2 * self.inter)
            m.gate_proj.forward, m.up_proj.forward = FP8Linear(m.gate_proj.fp8, m.gate_proj), FP8Linear(m.up_proj.fp8, m.up_proj)
            self.layers.append(dict(ln=layer.input_layernorm.weight, qkv=qkv, qn=a.q_norm.weight,
                                    kn=a.k_norm.weight, o=a.o_proj.fp8,
                                    post=layer.post_attention_layernorm.weight, gu=gu, down=m.down_proj.fp8))

    def reset(self):
        """Forget the cached prefix (the next call prefills everything)."""
        with self._lock:
            self.state.clear()

    # ---- the public surface a server uses (agent/serve/batch.py)

    def attach(self, k_cache, v_cache, state: KVState, context: int) -> None:
        """Work on another KV cache (a server's region): its tensors (layers, kv_heads, slots, head_dim),
        its record, and how many of its slots a conversation may use."""
        self.k_cache, self.v_cache, self.state, self.max_context = k_cache, v_cache, state, context

    def prefix_len(self, ids: list[int], keys: list[str]) -> int:
        """Tokens of `ids` (with these image keys) whose KV the current record already holds."""
        if not self.state.ids:
            return 0
        return self._common_prefix(ids, image_spans(ids, self.image_token), keys)

    def take_forced(self, matcher, out: list[int], done, stops=None, pending: list[int] | None = None) -> None:
        """Accept the tokens the grammar forces from here (lone tokens, forced strings, a stop when
        nothing else is allowed), appending them to out (and pending); see _take_forced."""
        if stops is not None:
            self._stops = stops
        self._take_forced(matcher, out, done, pending)

    @property
    def rope_delta(self) -> int:
        """Rope position minus cache slot of the next token of the last call (images make them differ)."""
        return int(self._delta)

    def cancel(self):
        """Ask the call in progress (if any) to stop at its next token or prefill pass; it raises
        Cancelled. What it leaves in the cache is recorded only as far as it is valid."""
        self._cancel.set()

    def _check_cancel(self):
        if self._cancel.is_set():
            raise Cancelled("engine call cancelled")

    # ---- vision

    def encode(self, image: EngineImage):
        """(embeds, [deepstack...]) of one image, from the cache when seen before."""
        hit = self.vision.get(image.key)
        if hit is not None:
            return hit, False
        torch = self.torch
        px = image.pixel_values
        if callable(px):  # made on demand (the backend preprocesses a screenshot only when it is encoded)
            t = time.perf_counter()
            px = px()
            self._sync()
            self._preprocess_s += time.perf_counter() - t
        px = px.to(self.device, self.visual.dtype if hasattr(self.visual, "dtype") else self.dtype)
        grid = torch.tensor([image.grid_thw], device=self.device)
        if self.device.type == "cuda":  # the tower's own attention calls go through the same kernel choice
            from torch.nn.attention import SDPBackend, sdpa_kernel
            with sdpa_kernel(sdpa_backends(self.sdpa) + [SDPBackend.MATH], set_priority=True):
                out = self.visual(px, grid_thw=grid)
        else:
            out = self.visual(px, grid_thw=grid)
        if isinstance(out, tuple):  # older transformers: (merged, deepstack list)
            embeds, deep = out[0], out[1]
        else:
            embeds, deep = out.pooler_output, out.deepstack_features
        hit = (embeds.to(self.dtype), [d.to(self.dtype) for d in deep])
        self.vision.put(image.key, hit)
        return hit, True

    # ---- the language model

    def _make_fused(self, pdl: bool | None):
        import logging
        try:
            from agent.backends.decode_kernels import FusedDecode
            self._inv_freq = self._text_rotary()
            if self._inv_freq is None:
                raise ValueError("the model's rotary embedding is not plain rotary for text positions")
            return FusedDecode(self.layers, heads=self.heads, kv_heads=self.kv_heads, head_dim=self.head_dim,
                               inter=self.inter, hidden=self.tcfg.hidden_size, eps=self.eps,
                               max_context=self.max_context, device=self.device, dtype=self.dtype,
                               width=FEED_WIDTH, pdl=pdl, vocab=self.vocab)
        except (ImportError, ValueError) as e:
            logging.getLogger(__name__).warning("engine: fused decode kernels unavailable, decoding with torch ops: %s", e)
            return None

    def decode_info(self) -> dict:
        """How decode tokens run now (for result files: a fused kernel that failed shows here as the
        torch ops it fell back to): fused or not, PDL, the fused head, the kernels' launches."""
        if self._fused is None:
            return {"fused": False}
        from agent.backends import decode_kernels as dk
        return {"fused": True, "pdl": self._fused.pdl, "fused_head": self._fused_head,
                "gemv": {k: list(v) for k, v in dk.GEMV_CONFIG.items()}, "head": list(dk.HEAD_CONFIG),
                "attention": list(dk.ATTENTION_CONFIG)}

    def _text_rotary(self):
        """The rotary frequencies the fused kernels compute a decode token's cos/sin from (its three
        M-RoPE positions are one), if the model's rotary module gives exactly that; else None."""
        torch = self.torch
        rot = self.lm.rotary_emb
        inv = getattr(rot, "inv_freq", None)
        inv = inv(self.device) if callable(inv) else inv
        if not isinstance(inv, torch.Tensor) or inv.numel() * 2 != self.head_dim:
            return None
        inv = inv.to(device=self.device, dtype=torch.float32).contiguous()
        p = torch.tensor([0, 1, 37, 4099, 30011], device=self.device)
        cos, sin = rot(torch.zeros(1, 1, 1, dtype=self.dtype, device=self.device), p.view(1, 1, -1).expand(3, 1, -1))
        ang = p.float()[:, None] * inv
        same = all(torch.equal(got.reshape(len(p), -1), torch.cat([f, f], -1).to(self.dtype))
                   for got, f in ((cos, ang.cos()), (sin, ang.sin())))
        return inv if same else None

    def _rope(self, x, pos3):
        return self.lm.rotary_emb(x, pos3.view(3, 1, -1))

    def _layers(self, x, cos, sin, start: int, vis_rows=None, deepstack=None):
        """Prefill: run tokens [start, start+n) through all layers, writing their KV. Returns hidden of the last.
        vis_rows: the (start, end) rows of x that are image tokens, which the first layers add deepstack
        features to (in that order): slices, not a boolean mask, which would sync with the GPU."""
        n = x.shape[1]
        end = start + n
        for i, w in enumerate(self.layers):
            q, k, v = self._pre_n(x, w["ln"], w["qkv"], w["qn"], w["kn"], cos, sin,
                                  self.eps, self.heads, self.kv_heads, self.head_dim)
            self.k_cache[i, :, start:end] = k[0]
            self.v_cache[i, :, start:end] = v[0]
            o = self._prefill_attention(q, self.k_cache[i, :, :end][None], self.v_cache[i, :, :end][None], start)
            o = o.transpose(1, 2).reshape(1, n, -1)
            x = self._post_n(x, o, w["o"], w["post"], w["gu"], w["down"], self.eps, self.inter)
            if deepstack is not None and i < len(deepstack) and vis_rows:  # x is this layer's own output
                o = 0
                for a, b in vis_rows:
                    x[0, a:b] += deepstack[i][o:o + b - a]
                    o += b - a
        return x[:, -1:]

    def _prefill_attention(self, q, k, v, start: int):
        """Causal attention of n new queries over the cache [0, start+n): query i sees keys up to
        start+i (the causal diagonal at the lower right). GQA-native flash attention where the GPU
        has it (no copy of K/V); else K/V expanded per query head, with a materialised mask."""
        torch = self.torch
        import torch.nn.functional as F
        from torch.nn.attention import sdpa_kernel
        n, end = q.shape[2], k.shape[2]
        if self._gqa_native is not False and self.device.type == "cuda":
            try:
                if start == 0:
                    with sdpa_kernel(sdpa_backends(self.sdpa), set_priority=True):
                        out = F.scaled_dot_product_attention(q, k, v, enable_gqa=True, is_causal=True)
                else:
                    # Flash's causal mask is aligned at the lower right. This is the op that
                    # torch.nn.attention.bias.causal_lower_right dispatches to; that module is not
                    # used because importing it imports torch._dynamo (seconds of a cold start).
                    out = torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, 0.0, True, False)[0]
                self._gqa_native = True
                return out
            except RuntimeError:  # no flash kernel for these inputs: expand below
                self._gqa_native = False
        rep = self.heads // self.kv_heads
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        if start == 0:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
        mask = torch.ones(n, end, dtype=torch.bool, device=q.device).tril(diagonal=start)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)

    def _logits(self, h):
        return self.model.lm_head(self.lm.norm(h)).float().view(1, -1)

    def _mask_logits(self, logits):
        """Apply the token bitmask (all ones when unconstrained); runs inside the decode graph."""
        allowed = ((self._bitmask.view(-1, 1) >> self._bits) & 1).view(-1)[: logits.shape[-1]].bool()
        return logits.masked_fill(~allowed.view(1, -1), float("-inf"))

    def _decode_step(self, span: int, n: int = 1):
        """Feed n tokens (_tok, or the first n of _toks) at slots _pos.._pos+n-1, attend to slots < span,
        write the token chosen after row _last (row 0 when n == 1) into _tok. One token is the plain
        decode step; n > 1 feeds a run of grammar-forced tokens for about the cost of one (the weights
        are read once), padded past the run's end (those slots are rewritten before anything reads them)."""
        torch = self.torch
        if self._fused is not None:
            try:
                return self._fused_step(span) if n == 1 else self._step(span, n)
            except Exception as e:  # Triton cannot build or run a kernel here: one warning, then torch ops
                if isinstance(e, torch.OutOfMemoryError) or (self.device.type == "cuda" and torch.cuda.is_current_stream_capturing()):
                    raise
                import logging
                logging.getLogger(__name__).warning("engine: fused decode failed, decoding with torch ops: %s", e)
                self._fused = None
        self._step(span, n)

    def _step(self, span: int, n: int):
        torch = self.torch
        x = self.lm.embed_tokens(self._tok if n == 1 else self._toks[:, :n])
        slots = self._pos + self._arange[:n]
        rp = (slots + self._delta).view(1, 1, n).expand(3, 1, n)
        cos, sin = self.lm.rotary_emb(x, rp)
        rep, d = self.heads // self.kv_heads, self.head_dim
        fused = self._fused is not None and n <= self._fused.width  # split-K attention: no score matrix
        if not fused:
            keep = self._arange[:span].view(1, span) <= slots.view(n, 1)
            # One additive mask per step, shared by all layers (cheaper than a bool mask per layer); rows
            # ordered (query head within its KV group, token) like the grouped queries below.
            bias = torch.zeros((n, span), dtype=torch.float32, device=self.device).masked_fill(~keep, float("-inf"))
            bias = bias.repeat(rep, 1).view(1, 1, rep * n, span)
        for i, w in enumerate(self.layers):
            q, k, v = self._pre(x, w["ln"], w["qkv"], w["qn"], w["kn"], cos, sin,
                                self.eps, self.heads, self.kv_heads, d)
            self.k_cache[i].index_copy_(1, slots, k[0])
            self.v_cache[i].index_copy_(1, slots, v[0])
            if fused:
                o = self._fused.attend(q[0].contiguous(), self.k_cache[i], self.v_cache[i], self._pos, span, n)
            else:
                kk, vv = self.k_cache[i, :, :span][None], self.v_cache[i, :, :span][None]
                qg = q.reshape(1, self.kv_heads, rep * n, d)  # GQA: a KV head's query heads (x tokens) as query rows
                if self.attention == "bmm":
                    o = self._attend(qg, kk, vv, bias, d ** -0.5)
                else:
                    o = torch.nn.functional.scaled_dot_product_attention(qg, kk, vv, attn_mask=bias)
            o = o.view(1, self.heads, n, d).transpose(1, 2).reshape(1, n, self.heads * d)
            x = self._post(x, o, w["o"], w["post"], w["gu"], w["down"], self.eps, self.inter)
        if n > 1:
            x = x.index_select(1, self._last)
        self._choose_next(x)

    def _fused_step(self, span: int):
        """_decode_step for one token through decode_kernels.FusedDecode (same inputs and outputs)."""
        x = self.lm.embed_tokens(self._tok).view(-1)  # the residual stream, updated in place by each layer
        for i, w in enumerate(self.layers):
            self._fused.layer(x, i, w, self.k_cache[i], self.v_cache[i], self._pos, self._inv_freq, self._delta, span)
        self._choose_next(x.view(1, 1, -1))

    def _choose_next(self, h):
        """The decode step's end: the masked greedy choice after hidden state h into _tok, _pos advanced."""
        if self._fused is not None and self._fused_head:  # the norm, head, bitmask and choice in two kernels
            self._fused.choose(h.reshape(-1), self.lm.norm.weight, self.eps, self.model.lm_head.weight,
                               self._bitmask, self._tok, self._pos)
            return
        logits = self._mask_logits(self._logits(h))
        self._tok.copy_(logits.argmax(-1).view(1, 1))
        self._pos.add_(1)

    def _replay(self, span: int, n: int = 1):
        if not self.use_graphs:
            self._decode_step(span, n)
            return
        g = self._graphs.get((span, n))
        if g is None:
            g = self._capture(span, n)
        if g is None:
            self._decode_step(span, n)
            return
        g.replay()

    def _capture(self, span: int, n: int = 1):
        """Capture the decode step for one KV span and width. The step mutates _tok/_pos/the cache, so
        save and restore them around the warm-up runs."""
        torch = self.torch
        saved = (self._tok.clone(), self._pos.clone())
        slot = int(saved[1])
        kv = (self.k_cache[:, :, slot:slot + n].clone(), self.v_cache[:, :, slot:slot + n].clone())
        stream = self._warm_stream = getattr(self, "_warm_stream", None) or torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        # Lazy initialisation happens once per width and per thread (cuBLAS keeps a handle per thread:
        # one made inside a capture breaks it), not per span.
        first = (threading.get_ident(), n) not in self._warmed
        self._warmed.add((threading.get_ident(), n))
        with torch.cuda.stream(stream):
            for _ in range(WARMUP_REPLAYS if first else 0):
                self._tok.copy_(saved[0]); self._pos.copy_(saved[1])
                self._decode_step(span, n)
        torch.cuda.current_stream().wait_stream(stream)
        self._tok.copy_(saved[0]); self._pos.copy_(saved[1])
        g = torch.cuda.CUDAGraph()
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
            # One capture stream for all graphs: cuBLAS keeps a workspace per stream (~32 MiB each).
            self._capture_stream = torch.cuda.Stream()
        try:
            with torch.cuda.graph(g, pool=self._pool, stream=self._capture_stream):
                self._decode_step(span, n)
        except RuntimeError as e:  # a broken capture leaves the graph pool unusable: decode eagerly from now on
            import logging
            logging.getLogger(__name__).warning("engine: decode graph capture failed, decoding without graphs: %s", e)
            self.use_graphs, self._pending = False, []
            self._tok.copy_(saved[0]); self._pos.copy_(saved[1])
            self.k_cache[:, :, slot:slot + n] = kv[0]
            self.v_cache[:, :, slot:slot + n] = kv[1]
            return None
        self._tok.copy_(saved[0]); self._pos.copy_(saved[1])
        self.k_cache[:, :, slot:slot + n] = kv[0]
        self.v_cache[:, :, slot:slot + n] = kv[1]
        self._graphs[(span, n)] = g
        return g

    def _span(self, slot: int) -> int:
        return min(self.max_context, (slot // KV_BUCKET + 1) * KV_BUCKET)

    def warmup(self, spans: list[int] | None = None):
        """Capture decode graphs ahead of time (default: every bucket up to a quarter of the context)."""
        if not self.use_graphs:
            return
        spans = spans or list(range(KV_BUCKET, self.max_context // 4 + 1, KV_BUCKET))
        with self._lock, self.torch.inference_mode():
            for s in spans:
                for n in (1, FEED_WIDTH):
                    if self.use_graphs and (s, n) not in self._graphs and s - n >= 0:
                        self._pos.fill_(s - n)
                        self._capture(s, n)
            self._pos.zero_()

    def warm_up(self, tokens: int = 0, load_tokens: int = LOAD_TOKENS):
        """At load: run the vision tower, a prefill and a few decode steps on a small dummy prompt
        (library handles, kernel choices, compiled pieces) and capture the decode graphs of the buckets
        up to `load_tokens`. Those of the other buckets up to `tokens` (default WARM_TOKENS) are left
        for capture_pending, between steps; a call that needs one first captures it itself (~30-40 ms).
        Capturing all 16K here cost ~1 s of every cold start on the H100."""
        torch = self.torch
        cfg = self.model.config
        vc = cfg.vision_config
        grid = (1, 8 * self.merge, 8 * self.merge)
        dim = vc.in_channels * vc.temporal_patch_size * vc.patch_size ** 2
        im = EngineImage(torch.randn(grid[1] * grid[2], dim, device=self.device), grid, key="warm-up")
        text = [100 + i for i in range(64)]
        ids = text + [cfg.vision_start_token_id] + [self.image_token] * 64 + [cfg.vision_end_token_id] + text
        if self.fp8 and self.device.type == "cuda":
            from agent.backends.fp8 import FP8Weight, warm_kernels
            warm_kernels([w for layer in self.layers for w in layer.values() if isinstance(w, FP8Weight)], self.device)
        self.generate(ids, [im], max_new_tokens=4, min_new_tokens=4)
        self.vision.pop("warm-up")
        self.reset()
        # The spans an agent's first steps reach (a 4-shot 1080p history is ~9.4K tokens) now: captured
        # in a step instead, each cost that step ~35 ms, the p95 of a 12-step episode on the H100.
        self.warmup(list(range(KV_BUCKET, min(self.max_context, load_tokens) + 1, KV_BUCKET)))
        tokens = tokens or WARM_TOKENS
        self._pending = [(s, n) for s in range(KV_BUCKET, min(self.max_context, tokens) + 1, KV_BUCKET)
                         for n in (1, FEED_WIDTH) if self.use_graphs and (s, n) not in self._graphs]

    def capture_pending(self, budget_s: float, horizon: int | None = None) -> int:
        """Capture decode graphs warm_up left for later, for about `budget_s` (one graph may overrun
        it), the spans from the last call's on first (contexts grow); how many were captured. Meant
        for the pause between steps (the desktop settling): call it only while nothing else in the
        process uses the GPU (a capture fails if another thread's GPU work touches it). Takes the
        engine's lock without waiting: when a call holds it, there is no pause to fill. horizon: only
        spans up to that many tokens past the current context (a step grows it by ~2K)."""
        if not self._pending or not self._lock.acquire(blocking=False):
            return 0
        done = 0
        try:
            end = time.perf_counter() + budget_s
            now = self._span(len(self.state.ids))
            self._pending.sort(key=lambda sn: (sn[0] < now, sn[0], sn[1]))
            saved = self._pos.clone()
            with self.torch.inference_mode():
                while self._pending and time.perf_counter() < end:
                    if horizon is not None and not now <= self._pending[0][0] <= now + horizon:
                        break  # none the next calls are likely to need
                    s, n = self._pending.pop(0)
                    if (s, n) not in self._graphs and s - n >= 0:
                        self._pos.fill_(s - n)
                        done += self._capture(s, n) is not None  # restores the KV slots it ran over
            self._pos.copy_(saved)
        except Exception:
            self._pending.clear()  # no more tries: the calls capture what they need
            raise
        finally:
            self._lock.release()
        return done

    # ---- one call

    def _sync(self):
        if self.device.type == "cuda":
            self.torch.cuda.synchronize()

    def _peak(self) -> float:
        """The high-water mark since the last call (GiB), then reset: one reading per phase."""
        if self.device.type != "cuda":
            return 0.0
        cuda = self.torch.cuda
        peak = cuda.max_memory_allocated() / 2 ** 30
        cuda.reset_peak_memory_stats()
        return peak

    def prefill(self, ids: list[int], images: list[EngineImage] = ()) -> Timings | None:
        """Put the KV of what the next call's prompt will likely start with into the cache now, while
        nothing waits for it (agent/run/lookahead.py: the next step's history while the desktop acts,
        an eviction's re-prefill included). Nothing is assumed: the next call compares tokens and image
        keys as always and recomputes from the first difference. Returns this work's timings (None
        when the cache held it already); last_timings stays the last call's."""
        ids, images = list(ids), list(images)
        with self._lock, self.torch.inference_mode():
            self._cancel.clear()
            if self.state.ids[:len(ids)] == ids and self.state.keys[:len(images)] == [im.key for im in images]:
                return None
            last = getattr(self, "last_timings", None)
            try:
                return self._generate(ids, images, 0, set(), None, 0).timings
            finally:
                self.last_timings = last

    def encode_ahead(self, image: EngineImage) -> bool:
        """Encode a screenshot into the vision cache before a call asks for it; True if it was new."""
        with self._lock, self.torch.inference_mode():
            self._cancel.clear()
            return self.encode(image)[1]

    def _common_prefix(self, ids: list[int], spans, keys: list[str]) -> int:
        m = 0
        for a, b in zip(self.state.ids, ids):
            if a != b:
                break
            m += 1
        # The first image whose content changed cuts the prefix at its first placeholder.
        old_spans = image_spans(self.state.ids, self.image_token)
        for (s, e), key, old_key, old in zip(spans, keys, self.state.keys, old_spans):
            if s >= m:
                break
            if key != old_key or old != (s, e):
                m = s
                break
        for s, e in spans:  # never start inside an image
            if s < m < e:
                m = s
        return min(m, len(ids) - 1)  # at least one token runs, to get logits

    def _shift_plan(self, ids: list[int], spans, keys: list[str], grids, m: int):
        """After an eviction: the longest block of the new prompt past the reused prefix that the cache
        holds at other slots (same tokens, same images), as (start, end, slot delta, position delta),
        or None. The block is found around the first image past the prefix that the cache holds."""
        import numpy as np
        old = self.state
        if not old.keys or len(ids) - m < SHIFT_MIN:
            return None
        old_spans = image_spans(old.ids, self.image_token)
        where = {k: i for i, k in enumerate(old.keys)}
        found = None
        for (s, e), key in zip(spans, keys):
            i = where.get(key)
            if s >= m and i is not None and old_spans[i][0] >= m and old_spans[i][1] - old_spans[i][0] == e - s:
                found = (s, e, s - old_spans[i][0])
                break
        if found is None:
            return None
        s, e, d = found
        table = {k: n for n, k in enumerate(dict.fromkeys(list(keys) + list(old.keys)))}

        def tags(seq, sp, ks):  # token ids, with image placeholders told apart by image and place
            t = np.asarray(seq, dtype=np.int64)
            for (a, b), k in zip(sp, ks):
                t[a:b] = -1 - (table[k] << 24) - np.arange(b - a)
            return t
        new, prev = tags(ids, spans, keys), tags(old.ids, old_spans, old.keys)
        # Backwards from the image (its turn's opening), not into the reused prefix.
        lo = max(m, d)
        a = s
        if s > lo:
            back = new[lo:s][::-1] != prev[lo - d:s - d][::-1]
            a = s - (int(np.argmax(back)) if back.any() else s - lo)
        # Forwards, up to the last token (it runs, for the logits) and the end of the record.
        hi = min(len(ids) - 1, len(old.ids) + d)
        b = e
        if hi > e:
            fwd = new[e:hi] != prev[e - d:hi - d]
            b = e + (int(np.argmax(fwd)) if fwd.any() else hi - e)
        for sa, sb in spans:  # whole images only
            if sa < a < sb:
                a = sb
            if sa < b < sb:
                b = sa
        if b - a < SHIFT_MIN:
            return None
        pos_new, _ = mrope_positions(ids[:b], self.image_token, grids[:sum(1 for _, y in spans if y <= b)], self.merge)
        n_old = sum(1 for _, y in old_spans if y <= b - d)
        pos_old, _ = mrope_positions(old.ids[:b - d], self.image_token, old.grids[:n_old], self.merge)
        dp = pos_new[:, a:b] - pos_old[:, a - d:b - d]
        if not bool((dp == dp[0, 0]).all()):
            return None  # not a rigid move (cannot happen for whole turns; refuse rather than guess)
        return a, b, d, int(dp[0, 0])

    def _move(self, a: int, b: int, d: int, dpos: int):
        """Move the KV of slots [a-d, b-d) to [a, b), keys rotated by dpos positions in every M-RoPE section."""
        torch = self.torch
        n = b - a
        probe = torch.zeros((1, 1, self.head_dim), dtype=torch.float32, device=self.device)
        cos, sin = self.lm.rotary_emb(probe, torch.full((3, 1, 1), dpos, dtype=torch.long, device=self.device))
        cos, sin = cos.view(1, 1, -1).float(), sin.view(1, 1, -1).float()
        half = self.head_dim // 2
        # Passes of bounded size; moving left, front first (a pass never reads what an earlier pass
        # wrote), moving right, back first. Each pass copies its source before writing.
        order = list(range(0, n, SHIFT_CHUNK))
        if d > 0:
            order.reverse()
        for i in range(len(self.layers)):
            for j in order:
                lo, hi = a + j, min(b, a + j + SHIFT_CHUNK)
                k = self.k_cache[i, :, lo - d:hi - d].float()
                rot = torch.cat((-k[..., half:], k[..., :half]), dim=-1)
                v = self.v_cache[i, :, lo - d:hi - d].clone()
                self.k_cache[i, :, lo:hi] = (k * cos + rot * sin).to(self.dtype)
                self.v_cache[i, :, lo:hi] = v

    def _take_forced(self, matcher, out: list[int], done, pending: list[int] | None = None):
        """Accept the tokens the grammar allows alone (appending them to out and pending); leaves the
        host bitmask filled for the next real choice."""
        import numpy as np
        while not done():
            matcher.fill_next_token_bitmask(self._bitmask_host)
            if not self.jump_forward:
                return
            words = self._bitmask_host.numpy()[0]
            nz = np.flatnonzero(words)
            if 0 < len(nz) <= 2:  # only stop tokens left (the reply is complete): end without a decode step
                allowed = [int(w) * 32 + b for w in nz for b in range(32) if (int(words[w]) >> b) & 1]
                if self._stops and set(allowed) <= self._stops:
                    self._choose(min(allowed), matcher, out)
                    return
            if len(nz) == 1 and not getattr(matcher, "model_choice", False):  # a benchmark's scripted choice is decoded
                word = int(words[nz[0]]) & 0xFFFFFFFF
                tok = int(nz[0]) * 32 + word.bit_length() - 1
                if not word & (word - 1) and tok < self.vocab:
                    self._choose(tok, matcher, out)
                    if pending is not None:
                        pending.append(tok)
                    continue
            # Several tokens allowed, but they may all spell one forced string (with Qwen's vocabulary
            # '", "coordinate": [' can start with ',', ', ' or ', "'): take it in its own tokenization.
            forced = self._forced_tokens(matcher)
            if not forced:
                return
            for tok in forced:
                if done() or not matcher.accept_token(tok):
                    break
                out.append(tok)
                if pending is not None:
                    pending.append(tok)

    def _forced_tokens(self, matcher) -> list[int]:
        """The tokens of the string the grammar forces next (none without a tokenizer or a string)."""
        find = getattr(matcher, "find_jump_forward_string", None)
        if self.tokenize is None or find is None:
            return []
        text = find()
        return self.tokenize(text) if text else []

    def _choose(self, tok: int, matcher, out: list[int]):
        if matcher is not None and not matcher.accept_token(tok):
            raise VlagentError(f"grammar rejected token {tok}")  # a bug: the mask allowed it
        out.append(tok)

    def _load_bitmask(self, matcher):
        if matcher is None:
            return
        self._bitmask.copy_(self._bitmask_host, non_blocking=True)

    def _feed_many(self, tokens: list[int], start: int) -> int:
        """Feed several known tokens in one eager pass at slots [start, start+n); the next token."""
        torch = self.torch
        x = self.lm.embed_tokens(torch.tensor([tokens], device=self.device))
        pos = (torch.arange(start, start + len(tokens), device=self.device) + self._delta).view(1, -1).expand(3, -1)
        cos, sin = self._rope(x, pos)
        h = self._layers(x, cos, sin, start)
        return int(self._mask_logits(self._logits(h)).argmax(-1))

    def generate_inputs(self, inputs, messages, max_new_tokens: int, matcher=None, eos=None) -> list[int]:
        """For agent/backends/transformers.py: the processor's tensors (and the messages, whose
        screenshots key the vision cache) in, new token ids out."""
        stops = set(eos if isinstance(eos, (list, tuple, set)) else [eos]) - {None}
        ids = inputs["input_ids"][0].tolist()
        room = self.max_context - len(ids)
        if room < 1:
            raise VlagentError(f"prompt of {len(ids)} tokens exceeds the engine's context of {self.max_context} tokens")
        gen = self.generate(ids, _split_images(inputs, messages), min(max_new_tokens, room),
                            stop_ids=stops, matcher=matcher)
        return gen.tokens

    def generate(self, ids: list[int], images: list[EngineImage] = (), max_new_tokens: int = 64, *,
                 stop_ids: set[int] | frozenset = frozenset(), matcher=None, min_new_tokens: int = 0) -> Generation:
        """Greedy decoding of `ids` (with `images` in placeholder order). A `matcher`
        (xgrammar.GrammarMatcher) constrains every token; min_new_tokens ignores stops (benchmarks)."""
        torch = self.torch
        with self._lock, torch.inference_mode():
            self._cancel.clear()  # a cancel aimed at an earlier call does not stop this one
            return self._generate(list(ids), list(images), max_new_tokens, set(stop_ids), matcher, min_new_tokens)

    def _generate(self, ids, images, max_new_tokens, stop_ids, matcher, min_new_tokens):
        torch = self.torch
        t = Timings(prompt_tokens=len(ids))
        if len(ids) + max_new_tokens > self.max_context:
            raise VlagentError(f"prompt of {len(ids)} tokens + {max_new_tokens} new exceeds the "
                               f"engine's context of {self.max_context} tokens")
        spans = image_spans(ids, self.image_token)
        if len(spans) != len(images):
            raise VlagentError(f"prompt has {len(spans)} image placeholders but {len(images)} images")
        for (s, e), im in zip(spans, images):
            tt, hh, ww = im.grid_thw
            if e - s != tt * hh * ww // self.merge ** 2:
                raise VlagentError(f"image at token {s}: {e - s} placeholders, grid {im.grid_thw} needs "
                                   f"{tt * hh * ww // self.merge ** 2}")
        keys = [im.key for im in images]
        self._stops = stop_ids
        self._bitmask.fill_(-1)  # unconstrained unless a matcher fills it
        self._peak()
        grids = [im.grid_thw for im in images]
        t0 = time.perf_counter()
        m = self._common_prefix(ids, spans, keys)
        t.reused_tokens = m
        shift = self._shift_plan(ids, spans, keys, grids, m) if self.kv_shift else None
        # Cut the record to the reused prefix before any slot past it is written: if this call fails
        # or is cancelled midway, the next one sees only KV that is still what the record says.
        self.state.cut(m, self.image_token)
        # What runs through the model: everything past the prefix, less a block whose KV is moved.
        todo = [(m, shift[0]), (shift[1], None)] if shift else [(m, None)]

        # Vision: only images that are (partly) in what runs.
        self._preprocess_s = 0.0
        feats = {}
        for idx, ((s, e), im) in enumerate(zip(spans, images)):
            if any(e > a and (b is None or s < b) for a, b in todo):
                feats[idx], fresh = self.encode(im)
                t.images_encoded += fresh
        self._sync()
        t1 = time.perf_counter()
        t.vision_ms = (t1 - t0) * 1e3
        t.preprocess_ms = self._preprocess_s * 1e3
        t.peak_vision_gib = self._peak()

        # Tokens the grammar forces before the model has any choice (e.g. "<tool_call>\n{"name": ...)
        # are decided now and prefilled with the prompt.
        def done():
            return (bool(out) and out[-1] in stop_ids and len(out) > min_new_tokens) \
                or len(out) >= max_new_tokens or (matcher is not None and matcher.is_terminated())

        out: list[int] = []
        if matcher is not None:
            self._take_forced(matcher, out, done)
        seq = ids + out
        pos3, next_pos = mrope_positions(seq, self.image_token, grids, self.merge)
        pos3 = pos3.to(self.device)
        h = None
        if shift:
            a, b, d, dpos = shift
            self._move(a, b, d, dpos)
            t.shifted_tokens = b - a
        passes = [c for a, b in todo for c in chunks(a, len(seq) if b is None else b, PREFILL_CHUNK)]
        for c0, c1 in passes:
            self._check_cancel()
            x = self.lm.embed_tokens(torch.tensor([seq[c0:c1]], device=self.device))
            vis_rows, deep = None, None
            parts = [(idx, max(s, c0), min(e, c1), s) for idx, (s, e) in enumerate(spans) if s < c1 and e > c0]
            if parts:
                vis_rows = [(a - c0, b - c0) for _, a, b, _ in parts]
                x = x.clone()
                for idx, a, b, s in parts:
                    x[0, a - c0:b - c0] = feats[idx][0][a - s:b - s]
                n_deep = len(feats[parts[0][0]][1])
                if len(parts) == 1:  # views of the cached features: no copy (3 x 8 MiB for a 1080p screenshot)
                    (idx, a, b, s), = parts
                    deep = [feats[idx][1][j][a - s:b - s] for j in range(n_deep)]
                else:
                    deep = [torch.cat([feats[idx][1][j][a - s:b - s] for idx, a, b, s in parts]) for j in range(n_deep)]
            cos, sin = self._rope(x, pos3[:, c0:c1])
            h = self._layers(x, cos, sin, c0, vis_rows, deep)
        self.state.ids, self.state.keys, self.state.grids = list(seq), list(keys), list(grids)
        self._delta.fill_(next_pos - len(seq))
        fed = len(seq)  # tokens whose KV is in the cache
        moved = True  # _tok/_pos must be loaded before the first replay
        self.last_logits = logits = self._logits(h)  # the prompt's last position (diagnostics, tests)
        if not done():
            self._load_bitmask(matcher)
            self._choose(int(self._mask_logits(logits).argmax(-1)), matcher, out)
        t2 = time.perf_counter()
        t.prefill_ms = (t2 - t1) * 1e3
        t.ttft_ms = (t2 - t0) * 1e3
        t.peak_prefill_gib = self._peak()

        # Decode. Each round feeds the last chosen token plus any tokens the grammar forces after it:
        # one graph replay for one token or a run of up to FEED_WIDTH, one eager pass for a longer run.
        while not done():
            self._check_cancel()
            pending = [out[-1]]
            if matcher is not None:
                self._take_forced(matcher, out, done, pending)
                if done():
                    break
            self._load_bitmask(matcher)
            k = len(pending)
            if k == 1:
                if moved:  # the graph left _tok/_pos right after a plain replay
                    self._tok.fill_(pending[0])
                    self._pos.fill_(fed)
                self._replay(self._span(fed))
                nxt = int(self._tok)
            elif k <= FEED_WIDTH and fed + FEED_WIDTH <= self.max_context:
                run = pending + [pending[-1]] * (FEED_WIDTH - k)
                self._toks.copy_(torch.tensor([run]), non_blocking=True)
                self._pos.fill_(fed)
                self._last.fill_(k - 1)
                self._replay(self._span(fed + FEED_WIDTH - 1), FEED_WIDTH)
                nxt = int(self._tok)
            else:
                nxt = self._feed_many(pending, fed)
            moved = k > 1  # only a plain replay leaves _tok/_pos at the next token
            t.decode_steps += 1
            self.state.ids.extend(pending)
            fed += k
            self._choose(nxt, matcher, out)
        t3 = time.perf_counter()
        t.decode_ms = (t3 - t2) * 1e3
        t.total_ms = (t3 - t0) * 1e3
        t.new_tokens = len(out)
        t.peak_decode_gib = self._peak()
        self.last_timings = t
        return Generation(out, t)


ENGINE_CONTEXT = 32768  # tokens of static KV cache by default (3.5 GiB for the 2B in bf16)


def model_weight_bytes(model) -> tuple[int, int]:
    """(parameters, bytes) of a model's weights, FP8 linears (agent/backends/fp8.py) counted as theirs."""
    n = b = 0
    seen = set()
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            n, b = n + p.numel(), b + p.numel() * p.element_size()
    for mod in model.modules():
        w = getattr(mod, "fp8", None)
        if w is not None:
            n += w.q.numel()
            b += w.q.numel() + w.scale.numel() * w.scale.element_size()
    return n, b


def make_engine(model, context: int | None = None, options=None) -> "Engine":
    """An engine for a loaded model, configured by `options` (agent/backends/options.py's engine
    switches; None: from the environment): the KV cache sized by the budget planner (capped at the
    options' context), compiled pieces, attention kernels, decode graphs captured at load."""
    import torch
    opts = options if options is not None else engine_options()
    ctx = context or getattr(opts, "context", None) or ENGINE_CONTEXT
    device = next(model.parameters()).device
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        # Free memory now (weights already loaded) plus the weights the planner subtracts again.
        params, weights = model_weight_bytes(model)
        budget = plan(model.config, free + weights, params=params, weight_bytes=weights).token_budget
        if budget < 4096:
            raise VlagentError(f"not enough free device memory for a KV cache: {budget} tokens fit")
        ctx = min(ctx, budget)
    eng = Engine(model, max_context=ctx, compile=bool(getattr(opts, "compile", False)),
                 kv_shift=bool(getattr(opts, "kv_shift", False)), sdpa=getattr(opts, "sdpa", "cudnn") or "cudnn",
                 compile_vision=bool(getattr(opts, "compile_vision", True)),
                 fused_decode=getattr(opts, "fused_decode", None), pdl=getattr(opts, "pdl", None))
    if device.type == "cuda":
        eng.warm_up(getattr(opts, "warm_tokens", 0) or 0)
    return eng


def engine_options():
    """The engine switches from the environment (agent/backends/options.py reads them, in one place)."""
    from agent.backends.options import EngineOptions
    return EngineOptions.from_env()


def with_options(opts, **changes):
    """A copy of an options object with some switches changed (a dataclass or a namespace)."""
    import dataclasses
    from types import SimpleNamespace
    if dataclasses.is_dataclass(opts):
        known = {f.name for f in dataclasses.fields(opts)}
        out = dataclasses.replace(opts, **{k: v for k, v in changes.items() if k in known})
        for k, v in changes.items():
            if k not in known:
                object.__setattr__(out, k, v)
        return out
    return SimpleNamespace(**{**vars(opts), **changes})


def _split_images(inputs, messages) -> list:
    """EngineImages from the processor's output, keyed by the messages' PIL images (in order)."""
    if "pixel_values" not in inputs:
        return []
    pils = [c["image"] for m in messages for c in m.get("content", []) if isinstance(c, dict) and c.get("type") == "image"]
    grids = [tuple(int(v) for v in g) for g in inputs["image_grid_thw"].tolist()]
    patches = inputs["pixel_values"].split([t * h * w for t, h, w in grids])
    keys = [_cached_key(p) if hasattr(p, "tobytes") else "" for p in pils] if len(pils) == len(grids) else [""] * len(grids)
    return [EngineImage(px, g, key=k) for px, g, k in zip(patches, grids, keys)]



_KEYS = PerImage()


def _cached_key(image) -> str:
    """image_key, remembered per image object (the loop hands the same screenshots every step)."""
    return _KEYS.get(image, image_key)
