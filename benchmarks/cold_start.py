"""Cold start of the product path, process start to the first action, in fresh processes.

    python benchmarks/cold_start.py OUT.json [--model FOLDER | --tiny] [--runs 3] [--steps 3]

Each run is `vlagent bench` (product mode, no baselines) in a new process, the native load and the
load through transformers' modeling code (VLAGENT_NATIVE=0) in turn: its JSON has the
process's age at the load's start and at the first action (cold_start_s), the load's phases
(load_timings: import_s, processor_s, prefetch_wait_s, cuda_init_s, readahead_s, weights_s,
grammar_wait_s, engine_s) and the first step. With --extras, beside them, on the same machine:
- the modeling code's import in fresh processes, plain and with sklearn hidden (agent/backends/hf_import.py);
- (--model on CUDA) what capturing every decode graph up to WARM_TOKENS at load used to add
  (timed after a load as Engine.warmup over the buckets the load now leaves for later), and a check
  that graphs captured between calls (capture_pending) give the eager step's tokens.
OUT.json gets every run, and medians.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click

REPO = Path(__file__).resolve().parents[1]
VL = "from agent.cli import main; main()"
IMPORT = """
import sys, time
t0 = time.perf_counter()
import torch
t1 = time.perf_counter()
if sys.argv[1] == "lean":
    from agent.backends.hf_import import model_class
    model_class()
else:
    from transformers import Qwen3VLForConditionalGeneration
t2 = time.perf_counter()
print(t1 - t0, t2 - t1, "sklearn" in sys.modules)
"""
GRAPHS = """
import json, sys, time
from agent.backends import load_backend
from agent.backends.budget import KV_BUCKET
from agent.backends.engine import WARM_TOKENS
b = load_backend(sys.argv[1])
eng = b.engine
spans = list(range(KV_BUCKET, min(eng.max_context, WARM_TOKENS) + 1, KV_BUCKET))
eng.torch.cuda.synchronize()
t = time.perf_counter()
eng.warmup(spans)
eng.torch.cuda.synchronize()
print(json.dumps({"graphs": len(eng._graphs), "all_graphs_at_load_s": time.perf_counter() - t, "engine_s": b.load_timings.get("engine_s")}))
"""

# Decode graphs captured between calls (capture_pending) give the eager step's tokens (same engine).
GRAPH_CHECK = """
import json, sys, torch
from agent.backends import load_backend
eng = load_backend(sys.argv[1]).engine
g = torch.Generator().manual_seed(0)
ids1 = torch.randint(0, 150000, (3000,), generator=g).tolist()
ids2 = ids1 + torch.randint(0, 150000, (2500,), generator=g).tolist()
a1 = eng.generate(ids1, [], 24).tokens
captured = eng.capture_pending(30.0)
a2 = eng.generate(ids2, [], 24).tokens
eng.use_graphs = False
eng.reset()
e1 = eng.generate(ids1, [], 24).tokens
e2 = eng.generate(ids2, [], 24).tokens
print(json.dumps({"captured_between_calls": captured, "same_as_eager": a1 == e1 and a2 == e2}))
"""


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}


def bench_run(model_args: list[str], steps: int, native: bool = True) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "r.json"
        env = {**_env(), "VLAGENT_NATIVE": "1" if native else "0"}
        proc = subprocess.run([sys.executable, "-c", VL, "bench", *model_args, "--steps", str(steps), "--no-baselines",
                               "--json", str(out)], env=env, capture_output=True, text=True, timeout=600)
        if proc.returncode != 0 or not out.is_file():
            raise SystemExit(f"vlagent bench failed:\n{proc.stderr[-3000:]}")
        r = json.loads(out.read_text())
    keep = ("cold_start_s", "process_to_load_s", "load_s", "first_step_ms", "load_timings", "step_ms_p50", "step_ms_p95", "device")
    out = {k: r.get(k) for k in keep}
    out["steps"] = [{k: round(v, 2) if isinstance(v, float) else v for k, v in s.items()
                     if k in ("step", "step_ms", "vision_ms", "prefill_ms", "decode_ms", "idle_ms", "prompt_tokens")}
                    for s in r.get("steps_detail", [])]
    return out


def import_run(variant: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", IMPORT, variant], env=_env(), capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-3000:])
    torch_s, model_s, sklearn = proc.stdout.split()
    return {"torch_s": float(torch_s), "model_import_s": float(model_s), "sklearn_imported": sklearn == "True"}


def median(rows: list[dict], key: str, sub: str | None = None):
    vals = [(r[key] or {}).get(sub) if sub else r[key] for r in rows]
    vals = [v for v in vals if isinstance(v, (int, float))]
    return statistics.median(vals) if vals else None


@click.command()
@click.argument("out_path", type=click.Path(dir_okay=False))
@click.option("--model", default=None, help="A local checkpoint folder (the random 2B: benchmarks/save_random_2b.py).")
@click.option("--tiny", is_flag=True, help="The tiny random checkpoint on the CPU (a smoke run).")
@click.option("--runs", default=3, show_default=True)
@click.option("--steps", default=3, show_default=True)
@click.option("--variants", default="native,transformers", show_default=True,
              help="Loads to compare, run by run in turn: native (agent/backends/qwen3vl_model.py) and "
                   "transformers (its modeling code: VLAGENT_NATIVE=0).")
@click.option("--extras/--no-extras", default=False, help="Also the modeling import alone and the decode-graph checks.")
def main(out_path, model, tiny, runs, steps, variants, extras):
    model_args = ["--tiny"] if tiny or not model else ["--model", model]
    names = [v.strip() for v in variants.split(",") if v.strip()]
    if set(names) - {"native", "transformers"}:
        raise click.BadParameter("variants: native and/or transformers", param_hint="--variants")
    result: dict = {"when": time.strftime("%Y-%m-%d %H:%M:%S"), "model": model or "tiny", "variants": {}}
    for i in range(runs):
        for v in names:
            rows = result["variants"].setdefault(v, {"runs": []})["runs"]
            rows.append(bench_run(model_args, steps, native=v == "native"))
            r = rows[-1]
            print(f"{v} run {i + 1}: first action at {r['cold_start_s']:.2f} s (load from {r['process_to_load_s']:.2f} s, "
                  f"load {r['load_s']:.2f} s, first step {r['first_step_ms']:.0f} ms) "
                  f"{json.dumps({k: round(x, 3) for k, x in r['load_timings'].items()})}", flush=True)
    for v, block in result["variants"].items():
        rows = block["runs"]
        block["median"] = {k: median(rows, k) for k in ("cold_start_s", "process_to_load_s", "load_s", "first_step_ms")}
        block["median"]["load_timings"] = {k: median(rows, "load_timings", k) for k in rows[0]["load_timings"]}
        print(f"{v} median:", json.dumps(block["median"]))
    if not extras:
        Path(out_path).write_text(json.dumps(result, indent=1))
        return
    result["imports"] = {v: [import_run(v) for _ in range(runs)] for v in ("plain", "lean")}
    for v, rs in result["imports"].items():
        print(f"import {v}: model import {[round(r['model_import_s'], 2) for r in rs]} s, sklearn imported: {rs[0]['sklearn_imported']}")
    if model and not tiny and _cuda():
        proc = subprocess.run([sys.executable, "-c", GRAPHS, model], env=_env(), capture_output=True, text=True, timeout=300)
        result["graphs"] = json.loads(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 else proc.stderr[-2000:]
        print("graphs:", result["graphs"])
        proc = subprocess.run([sys.executable, "-c", GRAPH_CHECK, model], env=_env(), capture_output=True, text=True, timeout=300)
        result["graph_check"] = json.loads(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 else proc.stderr[-2000:]
        print("graph check:", result["graph_check"])
    Path(out_path).write_text(json.dumps(result, indent=1))


def _cuda() -> bool:
    try:
        import torch
        return torch.cuda.is_available()
    except ImportError:
        return False


if __name__ == "__main__":
    main()
