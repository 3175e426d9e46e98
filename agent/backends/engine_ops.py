"""The pieces of agent/backends/engine.py that are plain functions: content keys, the language model's
layer math (pure functions of activations and weights, so one compiled version serves all 28
layers), and the prompt bookkeeping (M-RoPE positions, image spans, prefill passes).

The layer math follows transformers' Qwen3-VL text model op for op (same dtypes and order), so
results match it bit for bit on the CPU in float32 (tests/backends/test_engine.py).
"""
from __future__ import annotations

import hashlib

from agent.backends.fp8 import linear


def _hasher():
    """xxHash's 128-bit XXH3 (~0.3 ms for a 6 MB screenshot, against ~10 ms for BLAKE2b: issue 23's
    per-step CPU cost); BLAKE2b where xxhash is not installed. A content key only has to tell
    screenshots apart, it need not resist an adversary."""
    try:
        import xxhash
        return xxhash.xxh3_128
    except ImportError:
        return lambda data=b"": hashlib.blake2b(data, digest_size=16)


_HASH = _hasher()


def tensor_key(t) -> str:
    """A content key for a tensor (hashes its bytes; callers with the source image may pass a cheaper key)."""
    import torch
    a = t.detach().to("cpu").contiguous()
    return _HASH(a.view(-1).view(dtype=torch.uint8).numpy().tobytes()).hexdigest()


def image_key(image) -> str:
    """A content key for a PIL image: its size, mode and raw pixels. The pixels are hashed where
    Pillow keeps them (its Arrow export, Pillow >= 12: no copy), else through tobytes(), a copy that
    costs ~10x the hash of a 1080p screenshot. The two give different keys for the same image, which
    is fine for a key that lives in one process."""
    h = _HASH(f"{image.size}{image.mode}".encode())
    exported = _pixels_in_place(image)
    if exported is None:
        h.update(image.tobytes())
    else:
        h.update(exported[1])  # exported[0] keeps Pillow's export (and so the pixels) alive meanwhile
    return h.hexdigest()


def _pixels_in_place(image):
    """(the Arrow export, a memoryview of the image's pixel bytes as Pillow stores them), or None.
    Reads the Arrow C data interface's stable structs: a uint8 array, or a fixed-size list of them."""
    import ctypes
    try:
        _, capsule = image.__arrow_c_array__()
    except (AttributeError, ValueError, TypeError, OSError):  # older Pillow; an image not in one block
        return None

    class Array(ctypes.Structure):
        pass
    Array._fields_ = [("length", ctypes.c_int64), ("null_count", ctypes.c_int64), ("offset", ctypes.c_int64),
                      ("n_buffers", ctypes.c_int64), ("n_children", ctypes.c_int64),
                      ("buffers", ctypes.POINTER(ctypes.c_void_p)), ("children", ctypes.POINTER(ctypes.POINTER(Array))),
                      ("dictionary", ctypes.c_void_p), ("release", ctypes.c_void_p), ("private_data", ctypes.c_void_p)]
    pointer = ctypes.pythonapi.PyCapsule_GetPointer
    pointer.restype, pointer.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]
    a = Array.from_address(pointer(capsule, b"arrow_array"))
    if a.n_children == 1 and a.n_buffers == 1:  # fixed-size list (e.g. 4 bytes a pixel): its one child
        a = a.children[0].contents
    if a.n_children or a.n_buffers != 2 or not a.buffers[1] or a.offset or a.null_count:
        return None
    size = image.size[0] * image.size[1] * {"1": 1, "L": 1, "P": 1}.get(image.mode, 4)
    if a.length != size:
        return None
    return capsule, memoryview((ctypes.c_char * size).from_address(a.buffers[1])).cast("B")


# ---- the language model's math, as pure functions (so a decode step can be compiled once for all layers)

def rms_norm(x, w, eps: float):
    if x.is_cuda:  # one fused kernel instead of six (a decode step runs 113 of them); float32 inside
        import torch.nn.functional as F
        return F.rms_norm(x, (x.shape[-1],), w, eps)
    # Same op order and dtypes as Qwen3VLTextRMSNorm, so results match transformers bit for bit on CPU.
    dt = x.dtype
    x32 = x.float()
    x32 = x32 * (x32.pow(2).mean(-1, keepdim=True) + eps).rsqrt()
    return w * x32.to(dt)


def _rotate_half(x):
    import torch
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def pre_attention(x, ln_w, qkv_w, qn_w, kn_w, cos, sin, eps: float, heads: int, kv_heads: int, head_dim: int):
    """Norm, fused QKV projection, per-head q/k norm and rotary: (1, n, hidden) -> q (1,H,n,d), k, v (1,KV,n,d)."""
    n = x.shape[1]
    h = rms_norm(x, ln_w, eps)
    qkv = linear(h, qkv_w)
    q, k, v = qkv.split((heads * head_dim, kv_heads * head_dim, kv_heads * head_dim), dim=-1)
    q = rms_norm(q.view(1, n, heads, head_dim), qn_w, eps).transpose(1, 2)
    k = rms_norm(k.view(1, n, kv_heads, head_dim), kn_w, eps).transpose(1, 2)
    v = v.view(1, n, kv_heads, head_dim).transpose(1, 2)
    c, s = cos.unsqueeze(1), sin.unsqueeze(1)
    q = q * c + _rotate_half(q) * s
    k = k * c + _rotate_half(k) * s
    return q, k, v


def attend(q, k, v, bias, scale: float):
    """Decode attention as two batched GEMVs over the used cache span: reads K and V once, no copies."""
    s = (q @ k.transpose(-1, -2)).float() * scale + bias
    return s.softmax(-1).to(v.dtype) @ v


def post_attention(x, attn, o_w, ln_w, gate_up_w, down_w, eps: float, inter: int):
    """Output projection, residual, norm, SwiGLU MLP, residual."""
    import torch.nn.functional as F
    x = x + linear(attn, o_w)
    h = rms_norm(x, ln_w, eps)
    g, u = linear(h, gate_up_w).split((inter, inter), dim=-1)
    return x + linear(F.silu(g) * u, down_w)


# ---- M-RoPE positions (same rule as Qwen3VLModel.get_rope_index), computed on the CPU

def mrope_positions(ids: list[int], image_token: int, grids: list[tuple[int, int, int]], merge: int):
    """(3, n) positions for a prompt and the next text position after it."""
    import torch
    parts, cur, i, img, n = [], 0, 0, 0, len(ids)
    while i < n:
        if ids[i] == image_token:
            t, h, w = grids[img]
            gh, gw = h // merge, w // merge
            tt = torch.arange(t).view(-1, 1, 1).expand(t, gh, gw)
            hh = torch.arange(gh).view(1, -1, 1).expand(t, gh, gw)
            ww = torch.arange(gw).view(1, 1, -1).expand(t, gh, gw)
            parts.append(torch.stack([tt, hh, ww]).reshape(3, -1) + cur)
            i += t * gh * gw
            cur += max(gh, gw)
            img += 1
        else:
            j = i
            while j < n and ids[j] != image_token:
                j += 1
            parts.append(torch.arange(cur, cur + j - i).view(1, -1).expand(3, -1))
            cur += j - i
            i = j
    return torch.cat(parts, dim=1), cur


def chunks(start: int, end: int, size: int) -> list[tuple[int, int]]:
    """[start, end) in passes of about `size` tokens, balanced: a tiny tail pass would cost a whole
    pass of launch overhead for a few tokens."""
    n = end - start
    if n <= 0:
        return []
    parts = max(1, round(n / size))
    step = -(-n // parts)
    return [(a, min(end, a + step)) for a in range(start, end, step)]


def image_spans(ids: list[int], image_token: int) -> list[tuple[int, int]]:
    """[start, end) of each run of image placeholder tokens."""
    spans, i, n = [], 0, len(ids)
    while i < n:
        if ids[i] == image_token:
            j = i
            while j < n and ids[j] == image_token:
                j += 1
            spans.append((i, j))
            i = j
        else:
            i += 1
    return spans
