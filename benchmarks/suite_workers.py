"""How much `vlagent suite --workers 2` saves over `--workers 1` on a suite of replayed traces.

    python benchmarks/suite_workers.py [--items 8] [--repeats 1]

Builds a suite of N replay traces (copies of examples/qa_suite/traces, cycled), runs it through
the real CLI with 1 and then 2 workers (real Xvfb sandboxes, real apps, real input), prints both
wall times and their ratio, and writes benchmarks/results/suite_workers.json.
Target (issue 5): on a 2-core machine, workers=2 takes <= 0.65x the time of workers=1.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TRACES = ROOT / "examples" / "qa_suite" / "traces"
RESULTS = ROOT / "benchmarks" / "results" / "suite_workers.json"
TARGET_RATIO = 0.65


def build_suite(folder: Path, n: int) -> None:
    sources = sorted(p for p in TRACES.iterdir() if (p / "steps.jsonl").is_file())
    for i in range(n):
        src = sources[i % len(sources)]
        shutil.copytree(src, folder / f"{i:02d}_{src.name}")


def run(suite: Path, workers: int, out: Path) -> tuple[float, int]:
    from agent.suite.runner import VLAGENT

    t0 = time.perf_counter()
    proc = subprocess.run([*VLAGENT, "suite", str(suite), "--workers", str(workers), "--out", str(out)],
                          capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"suite with --workers {workers} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return wall, proc.returncode


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=1, help="runs per worker count; the best is kept")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="vlagent-bench-") as tmp:
        suite = Path(tmp) / "suite"
        suite.mkdir()
        build_suite(suite, args.items)
        walls: dict[int, list[float]] = {1: [], 2: []}
        for r in range(args.repeats):
            for workers in (1, 2):
                wall, _ = run(suite, workers, Path(tmp) / f"out-{workers}-{r}")
                walls[workers].append(round(wall, 2))
                print(f"workers={workers}: {wall:.1f} s for {args.items} replayed traces", flush=True)
    best = {w: min(v) for w, v in walls.items()}
    ratio = best[2] / best[1]
    verdict = "meets" if ratio <= TARGET_RATIO else "misses"
    print(f"workers=2 / workers=1 = {ratio:.2f} ({verdict} the <= {TARGET_RATIO} target)")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "benchmark": "suite_workers", "items": args.items, "kind": "replayed traces (examples/qa_suite/traces)",
        "wall_s": {"workers_1": walls[1], "workers_2": walls[2]}, "best_s": {"workers_1": best[1], "workers_2": best[2]},
        "ratio": round(ratio, 3), "target_ratio": TARGET_RATIO, "meets_target": ratio <= TARGET_RATIO,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }, indent=2) + "\n")
    print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
