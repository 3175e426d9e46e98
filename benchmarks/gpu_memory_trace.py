"""What is alive at the transient peaks of issue 23's FP8 memory figure: the allocator's history
(torch.cuda.memory._record_memory_history) while one 1080p screenshot is encoded and while a prompt
filling 32K tokens is prefilled, replayed to its highest point, with the blocks alive there by size
and the code that made them.

Usage (GPU machine): python benchmarks/gpu_memory_trace.py CHECKPOINT OUT.json [block|channel|none]"""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from agent.backends import load_backend  # noqa: E402
from agent.backends.engine import engine_options, with_options  # noqa: E402
from product_bench import context_peak  # noqa: E402

MIB = 2 ** 20


def where(frames) -> str:
    """The innermost frames of our code (agent/, benchmarks/), else of torch's Python."""
    ours = [f for f in frames if "/agent/" in f["filename"] or "/benchmarks/" in f["filename"]]
    pick = ours[:3] or [f for f in frames if f["filename"].endswith(".py")][:2]
    return " <- ".join(f"{Path(f['filename']).name}:{f['line']} {f['name']}" for f in pick)


def peak_of(events) -> dict:
    """Replay alloc/free events: the highest total reached above where they started, and the blocks
    alive then."""
    live, cur, best, best_live = {}, 0, 0, {}
    for ev in events:
        a = ev["action"]
        if a == "alloc":
            live[ev["addr"]] = ev
            cur += ev["size"]
            if cur > best:
                best, best_live = cur, dict(live)
        elif a == "free_requested" and ev["addr"] in live:
            cur -= live.pop(ev["addr"])["size"]
    blocks = sorted(best_live.values(), key=lambda e: -e["size"])
    by_site: dict[str, int] = {}
    for e in blocks:
        site = where(e.get("frames", []))
        by_site[site] = by_site.get(site, 0) + e["size"]
    return {"transient_peak_mib": best / MIB, "blocks": len(blocks),
            "largest": [{"mib": e["size"] / MIB, "where": where(e.get("frames", []))} for e in blocks[:12]],
            "by_site_mib": dict(sorted(((k, v / MIB) for k, v in by_site.items()), key=lambda kv: -kv[1])[:15])}


def main(ckpt: str, out: str, fp8: str = "block"):
    opts = with_options(engine_options(), context=32768, fp8=None if fp8 == "none" else fp8)
    torch.cuda.memory._record_memory_history(max_entries=2_000_000)  # from the load on: what stays resident, and where from
    backend = load_backend(ckpt, options=opts)
    torch.cuda.synchronize()
    res = {"device": torch.cuda.get_device_name(0), "fp8": fp8, "allocated_after_load_gib": torch.cuda.memory_allocated() / 2 ** 30}
    loaded = torch.cuda.memory._snapshot()
    by_site: dict[str, int] = {}
    for seg in loaded["segments"]:
        for blk in seg["blocks"]:
            if blk["state"] == "active_allocated":
                site = where(blk.get("frames", []))
                by_site[site] = by_site.get(site, 0) + blk["size"]
    res["resident_by_site_mib"] = dict(sorted(((k, v / MIB) for k, v in by_site.items()), key=lambda kv: -kv[1])[:25])
    start = len(loaded["device_traces"][0])
    torch.cuda.reset_peak_memory_stats()
    r = context_peak(backend, 32768, (1920, 1080))
    torch.cuda.synchronize()
    snap = torch.cuda.memory._snapshot()
    torch.cuda.memory._record_memory_history(enabled=None)
    res["peak_gib"] = torch.cuda.max_memory_allocated() / 2 ** 30
    res["context_peak"] = r
    events = snap["device_traces"][0][start:]
    first_prefill = next((i for i, e in enumerate(events) if any(f["name"] == "_layers" for f in e.get("frames", []))), len(events))
    res["trace"] = {"vision": peak_of(events[:first_prefill]), "all": peak_of(events)}
    print(json.dumps({k: v for k, v in res.items() if k not in ("trace", "resident_by_site_mib")}, default=str))
    print(json.dumps(res["resident_by_site_mib"], indent=1))
    print(json.dumps(res["trace"], indent=1))
    Path(out).write_text(json.dumps(res, indent=1, default=str))


if __name__ == "__main__":
    main(*sys.argv[1:])
