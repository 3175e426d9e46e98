"""Replay success over perturbed layouts: re-finding replay vs raw-coordinate replay.

    python benchmarks/bench_replay.py [--trace examples/fill_form_demo] [--seeds 20] [--sizes 1280x800,1024x768]

For each seed the form app opens with `--layout-seed N` (window moved, rows reordered, spacing,
label and field widths changed) on each screen size; the trace is replayed twice, once
re-finding targets (agent.replay.player) and once with its recorded coordinates as they are (the naive
way). A replay succeeds when the task's checks pass; this benchmark's task is stricter than
tasks/fill_form.yaml: the plan and the newsletter box must be right too. Prints a table and
writes JSON to benchmarks/results/replay_success.json.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.replay.player import replay  # noqa: E402
from agent.task import load_task  # noqa: E402

EXPECTED = {"name": "Ada Lovelace", "email": "ada@example.com", "plan": "Pro", "newsletter": True}


def seeded_task(trace: Path, seed: int, size: tuple[int, int]):
    """The trace's task with the form moved by `seed`, on a `size` screen, with strict checks."""
    task = load_task(trace / "task.yaml")
    launch = list(task.setup[0].launch) + ["--layout-seed", str(seed)]
    setup = [task.setup[0].model_copy(update={"launch": launch}), *task.setup[1:]]
    success = [c.model_copy(update={"file_json": c.file_json.model_copy(update={"equals": EXPECTED})})
               if c.kind == "file_json" else c for c in task.success]
    return task.model_copy(update={"setup": setup, "success": success,
                                   "screen": task.screen.model_copy(update={"width": size[0], "height": size[1]})})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trace", type=Path, default=ROOT / "examples" / "fill_form_demo")
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--first-seed", type=int, default=1)
    ap.add_argument("--sizes", default="1280x800,1024x768")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "replay_success.json")
    args = ap.parse_args()
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-replay-") as tmp:
        for size in sizes:
            for seed in range(args.first_seed, args.first_seed + args.seeds):
                task = seeded_task(args.trace, seed, size)
                row = {"seed": seed, "screen": f"{size[0]}x{size[1]}"}
                for mode, locate in (("locate", True), ("raw", False)):
                    t0 = time.perf_counter()
                    out = Path(tmp) / f"{mode}-{size[0]}-{seed}"
                    result = replay(args.trace, task, trace_out=out, locate=locate)
                    row[mode] = result.status == "success"
                    row[f"{mode}_s"] = round(time.perf_counter() - t0, 2)
                    if mode == "locate":
                        from agent.trace import load_steps
                        finds = [s.timings["find_ms"] for s in load_steps(out) if "find_ms" in s.timings]
                        row["find_ms"] = [round(f, 1) for f in finds]
                        if not row[mode]:
                            row["reason"] = result.reason
                rows.append(row)
                print(f"{row['screen']} seed {seed:>3}: locate {'ok ' if row['locate'] else 'FAIL'} "
                      f"raw {'ok ' if row['raw'] else 'FAIL'}  {row.get('reason', '')}", flush=True)
    n = len(rows)
    finds = sorted(f for r in rows for f in r["find_ms"])
    summary = {
        "runs": n,
        "locate_success": sum(r["locate"] for r in rows) / n,
        "raw_success": sum(r["raw"] for r in rows) / n,
        "find_ms_median": finds[len(finds) // 2] if finds else None,
        "find_ms_p95": finds[int(len(finds) * 0.95)] if finds else None,
        "note": "find_ms includes waiting for the target (bounded) and listing windows",
    }
    for size in sizes:
        key = f"{size[0]}x{size[1]}"
        sub = [r for r in rows if r["screen"] == key]
        summary[key] = {"locate": sum(r["locate"] for r in sub) / len(sub), "raw": sum(r["raw"] for r in sub) / len(sub)}
    report = {"benchmark": "replay_success", "trace": str(args.trace), "machine": platform.node(),
              "cpus": __import__("os").cpu_count(), "when": time.strftime("%Y-%m-%d %H:%M:%S"),
              "summary": summary, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2), encoding="utf-8")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
