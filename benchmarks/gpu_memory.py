"""Where device memory goes at 32K context with FP8 weights (issue 23's peak target): the weights by
part, the KV cache, what the load leaves besides, and the peak of one screenshot plus text filling
32K tokens with several prefill chunk sizes.

Usage (GPU machine): python benchmarks/gpu_memory.py CHECKPOINT OUT.json [block|channel|none]"""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

import agent.backends.engine as engine_mod  # noqa: E402
from agent.backends import load_backend  # noqa: E402
from agent.backends.engine import engine_options, with_options  # noqa: E402
from product_bench import context_peak  # noqa: E402

GIB = 2 ** 30


def part_bytes(model) -> dict:
    """Bytes per part: parameters and FP8 weights (with their scales), each tensor counted once."""
    seen, out = set(), {}

    def add(name, t):  # keyed by storage: `p.data` is a new object each time, and ids are reused
        if t is None or t.device.type != "cuda" or t.data_ptr() in seen:
            return
        seen.add(t.data_ptr())
        part = "vision" if "visual" in name else "embed/lm_head" if ("embed" in name or "lm_head" in name) else "language"
        out[part] = out.get(part, 0) + t.numel() * t.element_size()

    for name, p in model.named_parameters(remove_duplicate=False):
        add(name, p.data)
    for name, mod in model.named_modules():
        w = getattr(mod, "fp8", None)
        if w is not None:
            add(name + ".q", w.q)
            add(name + ".scale", w.scale)
    for name, b in model.named_buffers():
        add(name, b)
    return {k: round(v / GIB, 4) for k, v in out.items()}


def main(ckpt: str, out: str, fp8: str = "block"):
    opts = with_options(engine_options(), fp8=None if fp8 == "none" else fp8)
    torch.cuda.reset_peak_memory_stats()
    backend = load_backend(ckpt, options=opts)
    eng = backend.engine
    torch.cuda.synchronize()
    r = {"device": torch.cuda.get_device_name(0), "fp8": fp8, "parts_gib": part_bytes(backend.model),
         "allocated_after_load_gib": torch.cuda.memory_allocated() / GIB,
         "load_peak_gib": torch.cuda.max_memory_allocated() / GIB,
         "kv_gib": 2 * eng.k_cache.numel() * eng.k_cache.element_size() / GIB,
         "engine_context": eng.max_context}
    r["other_after_load_gib"] = r["allocated_after_load_gib"] - r["kv_gib"] - sum(r["parts_gib"].values())
    for chunk in (2048, 1024, 512):
        engine_mod.PREFILL_CHUNK = chunk
        peak = context_peak(backend, 32768, (1920, 1080))
        t = eng.last_timings
        r[f"chunk_{chunk}"] = dict(peak_gib=peak["peak_context_gib"], vision=t.peak_vision_gib,
                                   prefill=t.peak_prefill_gib, decode=t.peak_decode_gib, prefill_ms=t.prefill_ms)
        print(chunk, r[f"chunk_{chunk}"], flush=True)
    Path(out).write_text(json.dumps(r, indent=1))
    print(json.dumps(r, indent=1))


if __name__ == "__main__":
    main(*sys.argv[1:])
