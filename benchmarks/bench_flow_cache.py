"""The action cache on a 10-step flow of the form app: a cold run (every act/click step asks the model),
a re-run from the cache (unchanged app), re-runs after the app's layout changed (--layout-seed:
window moved, rows reordered, spacing changed), and one on the app's next version (--restyle: the
Team plan and the Submit button relabelled and restyled). Model calls and wall time of each.

    python benchmarks/bench_flow_cache.py [--repeats 3] [--latency 0 0.25] [--seeds 3 7] [--json benchmarks/results/flow_cache.json]

The model is scripted (replies keyed by step, computed from the app's own widget boxes, so a healed
step gets a correct answer on the changed layout too). --latency adds a delay per model call, to show
the figures for a model that takes time (0.25 s: the 2B model's warm step on an H100, docs/performance.md).
Times: `run_s` is the whole run (sandbox and app start included), `steps_s` the flow's steps alone.
"""
from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from agent.backends.base import BackendBase  # noqa: E402
from flow_support import DONE, click, form_task, reply  # noqa: E402

NAME, EMAIL = 'Type "Ada" into the Name field', 'Type "ada@example.com" into the Email field'
SURNAME, PLANS = 'Add " Lovelace" after the name in the Name field', "Pick the Basic plan, then the Pro plan"
TEAM, NEWS, PRO, SUBMIT = "the Team plan option", "the newsletter checkbox", "the Pro plan option", "the Submit button"
STEPS = [{"act": NAME}, {"act": EMAIL}, {"left_click": {"target": TEAM}}, {"left_click": {"target": NEWS}},
         {"act": SURNAME}, {"left_click": {"target": PRO}}, {"left_click": {"target": NEWS}},
         {"left_click": {"target": NEWS}}, {"act": PLANS}, {"left_click": {"target": SUBMIT}}]
SUCCESS = [{"file_json": {"path": "{workdir}/form.json", "equals": {
    "name": "Ada Lovelace", "email": "ada@example.com", "plan": "Pro", "newsletter": True}}}]


def replies(seed, restyle=False):
    at = lambda widget: click(widget, seed, restyle)  # noqa: E731
    return {
        NAME: [at("name"), reply(action="type", text="Ada"), DONE],
        EMAIL: [at("email"), reply(action="type", text="ada@example.com"), DONE],
        TEAM: [at("plan_team")],
        NEWS: [at("newsletter")] * 3,
        SURNAME: [at("name"), reply(action="key", keys=["end"]), reply(action="type", text=" Lovelace"), DONE],
        PRO: [at("plan_pro")],
        PLANS: [at("plan_basic"), at("plan_pro"), DONE],
        SUBMIT: [at("submit")],
    }


class Slow(BackendBase):
    """A scripted backend that takes `latency` seconds per call, like a real model would."""

    def __init__(self, inner, latency: float):
        self.inner, self.latency, self.name = inner, latency, inner.name

    def generate(self, messages, policy=None):
        time.sleep(self.latency)
        return self.inner.generate(messages, policy)


def one_run(folder: Path, seed, cache: str, latency: float, label: str, restyle: bool = False) -> dict:
    from agent.backends.script import ScriptBackend
    from agent.flow.runner import run_flow
    from agent.task import load_task

    task = load_task(form_task(folder, STEPS, seed=seed, restyle=restyle, name="bench_flow", success=SUCCESS))
    backend = Slow(ScriptBackend(replies(seed, restyle), name="script"), latency)
    t0 = time.perf_counter()
    result, trace = run_flow(task, backend, trace_dir=folder / "runs" / label, cache=cache)
    run_s = time.perf_counter() - t0
    shutil.rmtree(trace, ignore_errors=True)
    return {"label": label, "seed": seed, "restyle": restyle, "cache_mode": cache, "status": result.status, "reason": result.reason,
            "model_calls": result.model_calls, "run_s": round(run_s, 3),
            "steps_s": round(sum(f.duration_s for f in result.flow), 3),
            "steps": [{"kind": f.kind, "text": f.text, "cache": f.cache, "model_calls": f.model_calls,
                       "s": f.duration_s, **({"reason": f.reason} if f.cache == "healed" else {})}
                      for f in result.flow]}


def copy_cache(folder: Path) -> Path:
    moved = Path(tempfile.mkdtemp(prefix="bench-flow-copy-"))
    shutil.copy(folder / "bench_flow.cache.json", moved)
    shutil.copytree(folder / "bench_flow.cache", moved / "bench_flow.cache")
    return moved


LETTER = {"hit": "h", "healed": "H", "miss": "m", None: "-"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--latency", type=float, nargs="+", default=[0.0, 0.25])
    ap.add_argument("--seeds", type=int, nargs="+", default=[3, 7])
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    Path.home().joinpath(".Xauthority").touch(exist_ok=True)
    out = {"machine": f"{platform.node()} ({platform.processor() or platform.machine()}), "
                      f"{__import__('os').cpu_count()} CPUs", "flow_steps": len(STEPS), "by_latency": []}
    for latency in args.latency:
        runs = []
        for r in range(args.repeats):
            folder = Path(tempfile.mkdtemp(prefix="bench-flow-"))
            try:
                runs.append(one_run(folder, None, "write-only", latency, f"cold-{r}"))
                runs.append(one_run(folder, None, "read-write", latency, f"cached-{r}"))
                runs.append(one_run(folder, None, "off", latency, f"nocache-{r}"))
                if r == 0:
                    for seed in args.seeds:  # each from the fixed layout's cache, left as recorded
                        moved = copy_cache(folder)
                        runs.append(one_run(moved, seed, "read-only", latency, f"layout-{seed}"))
                        shutil.rmtree(moved, ignore_errors=True)
                    # The app's next version: two widgets (Team, Submit) read and look otherwise.
                    restyled = copy_cache(folder)
                    runs.append(one_run(restyled, None, "read-write", latency, "restyled-2", restyle=True))
                    shutil.rmtree(restyled, ignore_errors=True)
            finally:
                shutil.rmtree(folder, ignore_errors=True)
        for run in runs:
            print(f"latency {latency:.2f}s {run['label']:>10}: {run['status']:<8} {run['model_calls']:>2} model calls, "
                  f"run {run['run_s']:6.2f} s, steps {run['steps_s']:6.2f} s  "
                  f"{' '.join(LETTER[s['cache']] for s in run['steps'])}", flush=True)
        cold = [r for r in runs if r["label"].startswith("cold")]
        cached = [r for r in runs if r["label"].startswith("cached")]
        med = lambda rs, k: statistics.median(r[k] for r in rs)  # noqa: E731
        summary = {"latency_s": latency, "runs": runs,
                   "cold": {"model_calls": med(cold, "model_calls"), "run_s": med(cold, "run_s"), "steps_s": med(cold, "steps_s")},
                   "cached": {"model_calls": med(cached, "model_calls"), "run_s": med(cached, "run_s"),
                              "steps_s": med(cached, "steps_s")}}
        summary["cached_over_cold"] = {k: round(summary["cached"][k] / summary["cold"][k], 3) for k in ("run_s", "steps_s")}
        print(f"latency {latency:.2f}s: cached/cold time = {summary['cached_over_cold']}", flush=True)
        out["by_latency"].append(summary)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
