"""How long a `vlagent run` step takes besides the model: the desktop's part of an agent step.

    python benchmarks/bench_desktop_time.py [--repeats 3] [--model-s 0.25] [--json benchmarks/results/desktop_time.json]

Runs tasks on real apps in the sandbox the way `vlagent run` does (agent.run.runner.run_task), with
scripted replies that each take --model-s seconds, standing in for the model (work the loop overlaps
with the model call, the OCR of a clicked target's evidence, overlaps this wait). Each step's
timings come from its trace: everything but `model_ms` (capture and saving the screenshot, the
prompt, the action, waiting for the screen to settle, the target evidence not done by then) is time
in which a shared model server has nothing to do for that agent. That is the think time
`bench_serve.py --think` stands in for.

Apps: galculator and zenity --forms (GTK 3, Debian packages), Chromium with a local form page,
and the project's Tk form (tasks/fill_form.yaml with its scripted solution).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.backends.script import ScriptBackend  # noqa: E402
from agent.run.runner import run_task  # noqa: E402
from agent.task import load_task  # noqa: E402
PAGE = ROOT / "benchmarks" / "replay_real" / "order.html"
SCREEN = {"width": 1920, "height": 1080}
ALLOW = {"actions": ["left_click", "type", "key", "terminate"], "keys": ["enter", "tab"], "max_text_len": 100}
GTK_ENV = ["env", "NO_AT_BRIDGE=0"] + [f"XDG_{d}_HOME={{workdir}}/xdg-{d.lower()}" for d in ("CONFIG", "DATA", "CACHE")]


def click(x, y):
    return {"action": "left_click", "coordinate": [x, y]}


def typed(text):
    return {"action": "type", "text": text}


# (launch argv, window title, actions in 0..1000 coordinates of a 1920x1080 screen)
APPS = {
    "galculator": (GTK_ENV + ["galculator"], "^galculator$",
                   [click(18, 184), click(120, 221), click(86, 221), click(154, 277), click(96, 105)]),
    "zenity": (GTK_ENV + ["zenity", "--forms", "--title=Shipping", "--text=Shipping details", "--add-entry=Name",
                          "--add-entry=City", "--add-combo=Speed", "--combo-values=low|high"], "^Shipping$",
               [click(513, 456), typed("Ada"), click(513, 493), typed("Paris"), click(539, 569)]),
    "chromium": (["chromium", "--no-sandbox", "--user-data-dir={workdir}/chrome", f"--app=file://{PAGE}",
                  "--force-renderer-accessibility", "--window-size=760,560", "--window-position=60,40",
                  "--no-first-run", "--disable-gpu", "--disable-features=Translate"], "^Order",
                 [click(165, 177), typed("Ada"), click(168, 217), click(53, 252), click(82, 294)]),
}


def reply(action: dict) -> str:
    return "<tool_call>" + json.dumps({"name": "computer_use", "arguments": action}) + "</tool_call>"


def write_task(app: str, folder: Path) -> tuple[Path, Path]:
    if app == "tk-form":
        return ROOT / "tasks" / "fill_form.yaml", ROOT / "tests" / "scripts" / "fill_form_solution.yaml"
    argv, title, actions = APPS[app]
    task = {"name": app, "goal": f"The {app} steps.", "screen": SCREEN, "max_steps": 20, "timeout_s": 240,
            "setup": [{"launch": argv, "wait_for_window": title, "timeout_s": 60}, {"sleep": 1.5}], "allow": ALLOW}
    (folder / f"{app}.yaml").write_text(yaml.safe_dump(task, sort_keys=False))
    replies = [reply(a) for a in actions] + [reply({"action": "terminate", "status": "success"})]
    (folder / f"{app}.replies.yaml").write_text(yaml.safe_dump(replies))
    return folder / f"{app}.yaml", folder / f"{app}.replies.yaml"


class Paced(ScriptBackend):
    """Scripted replies that take as long as a model would."""

    def __init__(self, replies, seconds: float):
        super().__init__(replies)
        self.seconds = seconds

    def generate(self, messages, policy=None) -> str:
        time.sleep(self.seconds)
        return super().generate(messages, policy)


def run_once(app: str, folder: Path, n: int, model_s: float) -> list[dict]:
    task, script = write_task(app, folder)
    trace = folder / f"{app}-{n}"
    replies = ScriptBackend.from_file(script).replies
    result, _ = run_task(load_task(task), Paced(replies, model_s), trace_dir=trace)
    if result.status not in ("success", "failed"):
        raise SystemExit(f"{app}: the run ended {result.status}: {result.reason}")
    steps = [json.loads(line) for line in (trace / "steps.jsonl").read_text().splitlines() if line.strip()]
    return [{"action": s["action"]["action"], **{k: round(v, 1) for k, v in s["timings"].items()},
             "desktop_ms": round(s["timings"]["step_ms"] - s["timings"]["model_ms"], 1)}
            for s in steps if s.get("action") and s["action"]["action"] != "terminate"]


def summary(steps: list[dict]) -> dict:
    d = sorted(s["desktop_ms"] for s in steps)
    return {"steps": len(d), "desktop_ms_p50": round(statistics.median(d), 1),
            "desktop_ms_mean": round(statistics.fmean(d), 1), "desktop_ms_min": d[0], "desktop_ms_max": d[-1]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--apps", default="galculator,zenity,chromium,tk-form")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--model-s", type=float, default=0.25, help="seconds each reply takes (the model's step)")
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args()
    results, everything = {}, []
    with tempfile.TemporaryDirectory(prefix="vlagent-desktop-time-") as tmp:
        for app in args.apps.split(","):
            steps = [s for n in range(args.repeats) for s in run_once(app, Path(tmp), n, args.model_s)]
            everything += steps
            results[app] = {**summary(steps), "by_action": {a: summary([s for s in steps if s["action"] == a])
                                                            for a in sorted({s["action"] for s in steps})},
                            "steps_raw": steps}
            print(f"{app:11s} {results[app]['steps']:3d} steps  desktop p50 {results[app]['desktop_ms_p50']:6.0f} ms"
                  f"  mean {results[app]['desktop_ms_mean']:6.0f} ms  "
                  f"[{results[app]['desktop_ms_min']:.0f}, {results[app]['desktop_ms_max']:.0f}]")
    total = summary(everything)
    print(f"{'all':11s} {total['steps']:3d} steps  desktop p50 {total['desktop_ms_p50']:6.0f} ms  mean {total['desktop_ms_mean']:6.0f} ms")
    if args.json:
        args.json.write_text(json.dumps({"machine": f"{os.cpu_count()} cores, {platform.machine()}, no GPU",
                                         "repeats": args.repeats, "model_s": args.model_s, "all": total, "apps": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
