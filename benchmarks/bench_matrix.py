"""One real-app matrix for the success checks, the flow cache and replay: the same apps under the same six
conditions, each verdict read from the app itself.

    python benchmarks/bench_matrix.py [--parts checks,flows,replay] [--apps galculator,yad]
                                      [--conditions unchanged,dark] [--json benchmarks/results/matrix.json]

Apps and conditions are bench_replay_real's (galculator, mousepad, zenity --forms, yad --form, featherpad
(Qt), Chromium with a local order page, the Tk apps sandbox/apps/access.py and form.py; unchanged, nudged (1 px), moved,
stretched (moved and 30% larger), screen (1024x768), dark, font (1.5x)).

checks: each app is driven through its workflow with real input (xdotool, where a person would click:
the accessibility tree or the Tk app's layout file), then the task's success checks run as `vlagent run`
runs them (agent.run.checks.evaluate, 2 s of grace): checks that must pass (screen_text, a11y,
window_title, file_json) and checks that must fail (a text that is not there). A task's verdicts must be
the same under every condition. Each screen_text check is also judged by OCR alone, by the module of
now (each window read in both polarities) and by the code before (tesseract on the grey screen), with
their times.
lookahead: each app's workflow through the real agent loop on the real display, replies scripted (a
person's clicks, read from the tree or the Tk layout): for every step after the first, whether the
screenshot it was asked with is the last frame the settle loop showed the lookahead (agent/run/lookahead.py).
flows: bench_flow_real's flows (Chromium, zenity, galculator, gnome-calculator, yad, the Tk form): cold, then cached re-runs under every
condition with `--cache read-only`; model calls counted.
replay: bench_replay_real's recordings (real input and agent runs) replayed under every condition.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_replay_real as replay_bench  # noqa: E402

CONDITIONS = replay_bench.CONDITIONS
PACE_S = 0.4
GRACE_S = 2.0

# Per app: how many of its workflow's steps run before the checks (None: all; a dialog's OK closes it),
# the checks that must pass, the checks that must fail.
CHECKS = {
    "galculator": (None, [{"screen_text": "42"}, {"a11y": {"role": "text", "text": "42"}},
                          {"window_title": "^galculator$"}],
                   [{"screen_text": "43"}, {"a11y": {"role": "text", "text": "43"}}]),
    "mousepad": (None, [{"screen_text": "hello replay"}, {"a11y": {"role": "text", "text": "hello replay"}},
                        {"window_title": "Mousepad$"}],
                 [{"screen_text": "hello world"}]),
    "zenity": (-1, [{"screen_text": "Paris"}, {"a11y": {"role": "text", "text": "Ada"}}, {"window_title": "^Shipping$"}],
               [{"screen_text": "London"}, {"a11y": {"role": "text", "text": "Bob"}}]),
    "yad": (-1, [{"screen_text": "ada@example.com"}, {"a11y": {"role": "text", "text": "Ada"}},
                 {"a11y": {"role": "check box", "name": "Subscribe", "states": {"checked": True}}}],
            [{"screen_text": "bob@example.com"}, {"a11y": {"role": "check box", "name": "Subscribe", "states": {"checked": False}}}]),
    "featherpad": (None, [{"screen_text": "hello qt"}, {"a11y": {"role": "text", "text": "hello qt"}},
                          {"window_title": "Untitled$"}],
                   [{"screen_text": "goodbye qt"}]),
    "chromium": (None, [{"screen_text": "Ordered: Ada, Express, gift"},
                        {"a11y": {"role": "check box", "name": "Gift wrap", "states": {"checked": True}}},
                        {"window_title": "^Order placed - Ordered: Ada, Express, gift$"}],
                 [{"a11y": {"role": "radio button", "name": "Standard", "states": {"checked": True}}},
                  {"screen_text": "Ordered: Bob"}]),
    "tk-access": (None, [{"screen_text": "Signed in"}], [{"screen_text": "Signed out"}]),
    "tk-form": (None, [{"screen_text": "Saved"}, {"file_json": {"path": "{workdir}/form.json", "equals": {"name": "Ada Lovelace"}}}],
                [{"screen_text": "Error"}]),
}


# ------------------------------------------------------------------------------ checks

def drive(app, steps, display: str, workdir: Path) -> None:
    """The workflow's steps with real input, as a person (bench_replay_real's recording does the same)."""
    env = {**os.environ, "DISPLAY": display}
    for kind, what in steps:
        if kind == "click":
            x, y = replay_bench.target_point(app, what, display, workdir)
            subprocess.run(["xdotool", "mousemove", str(x), str(y)], env=env, check=True)
            time.sleep(PACE_S)
            subprocess.run(["xdotool", "mousedown", "1"], env=env, check=True)
            time.sleep(0.08)
            subprocess.run(["xdotool", "mouseup", "1"], env=env, check=True)
        elif kind == "type":
            subprocess.run(["xdotool", "type", "--delay", "40", what], env=env, check=True)
        else:
            subprocess.run(["xdotool", "key", what], env=env, check=True)
        time.sleep(PACE_S + 0.3)


def ocr_verdicts(image, display: str, wanted: list[str]) -> dict:
    """Each screen_text judged by OCR alone: now (the windows, both polarities) and before (the grey screen)."""
    from agent.ocr import lines_of, ocr_words, read_text
    from sandbox.windows import list_windows

    norm = lambda s: " ".join(s.split()).casefold()  # noqa: E731
    t0 = time.perf_counter()
    now = norm(read_text(image, list_windows(display)))
    t1 = time.perf_counter()
    before = norm(lines_of(ocr_words(image, polarity="as-is")))
    t2 = time.perf_counter()
    return {"now": [norm(w) in now for w in wanted], "before": [norm(w) in before for w in wanted],
            "now_ms": round((t1 - t0) * 1e3), "before_ms": round((t2 - t1) * 1e3)}


def check_case(app, cond: str, out: Path) -> dict:
    from agent.desktop.x11 import X11Desktop
    from agent.run.checks import evaluate
    from agent.task import Task
    from sandbox.session import Sandbox

    upto, must_pass, must_fail = CHECKS[app.name]
    spec = replay_bench.task_for(app, cond) | {"success": must_pass + must_fail}
    task = Task.model_validate(spec)
    task.base_dir = ROOT
    workdir = out / f"checks-{app.name}-{cond}"
    case = {"part": "checks", "app": app.name, "condition": cond}
    with Sandbox(screen=(task.screen.width, task.screen.height), workdir=workdir, cwd=ROOT,
                 progress=lambda line: None) as sb:
        sb.run_setup(task.setup)
        drive(app, app.steps[:upto] if upto else app.steps, sb.display, workdir)
        with X11Desktop(sb.display) as desktop:
            desktop.wait_stable(2.0)
            t0 = time.perf_counter()
            results = evaluate(task.model_copy(update={"success": task.success[:len(must_pass)]}), workdir, desktop,
                               grace_s=GRACE_S)
            t1 = time.perf_counter()  # (the checks that must fail poll for the grace time: timed apart)
            results += evaluate(task.model_copy(update={"success": task.success[len(must_pass):]}), workdir, desktop,
                                grace_s=GRACE_S)
            case["checks_ms"] = round((t1 - t0) * 1e3)
            case["failing_checks_ms"] = round((time.perf_counter() - t1) * 1e3)
            image = desktop.capture()
            image.save(workdir / "final.png")
        wanted = [c["screen_text"] for c in must_pass + must_fail if "screen_text" in c]
        case["ocr"] = ocr_verdicts(image, sb.display, wanted)
    expected = [True] * len(must_pass) + [False] * len(must_fail)
    case["verdicts"] = [r.passed for r in results]
    case["right"] = case["verdicts"] == expected
    case["details"] = [f"{r.check} -> {r.passed}: {r.detail}" for r in results]
    return case


def run_checks(apps: list[str], conds: list[str], out: Path) -> list[dict]:
    cases = []
    for name in apps:
        app = replay_bench.APPS[name]
        for cond in conds:
            if cond not in app.conditions:
                cases.append({"part": "checks", "app": name, "condition": cond, "right": None})
                continue
            try:
                case = check_case(app, cond, out)
            except Exception as e:  # the app could not be driven: a result, not the end of the benchmark
                case = {"part": "checks", "app": name, "condition": cond, "right": False, "verdicts": [],
                        "error": f"{type(e).__name__}: {e}"}
            cases.append(case)
            ocr = case.get("ocr", {})
            print(f"checks {name:11} {cond:9} right={case['right']!s:5} verdicts={case.get('verdicts')} "
                  f"ocr now={ocr.get('now')} {ocr.get('now_ms')} ms before={ocr.get('before')} {ocr.get('before_ms')} ms "
                  f"checks {case.get('checks_ms')} ms {case.get('error', '')}", flush=True)
    return cases


# ------------------------------------------------------------------------------ flows and replay

FLOW_VARIANT = {"unchanged": "cached", "nudged": "nudged", "moved": "moved", "stretched": "stretched", "screen": "screen",
                "dark": "dark", "font": "font"}


def run_flows(apps: list[str], conds: list[str], out: Path) -> list[dict]:
    """bench_flow_real's flows: cold (writes the cache), then a read-only re-run per condition."""
    import shutil

    import bench_flow_real as flow_bench

    cases = []
    for app in [a for a in apps if a in flow_bench.APPS]:
        folder = out / f"flow-{app}"
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(flow_bench.FLOWS, folder)
        for name in ["cold"] + [FLOW_VARIANT[c] for c in conds]:
            try:
                case = flow_bench.run_case(app, name, folder, out)
            except Exception as e:
                case = {"app": app, "variant": name, "outcome": "stopped", "reasons": [f"{type(e).__name__}: {e}"]}
            if case:
                cases.append({"part": "flows", **case})
                print(f"flows  {app:11} {name:9} {case['outcome']:7} calls={case.get('model_calls')} "
                      f"cache={case.get('cache')} result={case.get('app_result')!r}", flush=True)
    return cases


def run_replay(apps: list[str], conds: list[str], out: Path) -> list[dict]:
    """bench_replay_real: one recording with real input per app, replayed under each condition."""
    import yaml

    cases = []
    for name in apps:
        app = replay_bench.APPS[name]
        taskfile = out / f"{name}-unchanged.yaml"
        taskfile.write_text(yaml.safe_dump(replay_bench.task_for(app, "unchanged")))
        try:
            trace = replay_bench.record_human(app, out, taskfile)
        except Exception as e:
            cases += [{"part": "replay", "app": name, "condition": c, "outcome": "stopped",
                       "reason": f"recording failed: {e}"} for c in conds]
            continue
        for cond in conds:
            if cond not in app.conditions:
                continue
            try:
                case = replay_bench.replay_case(app, trace, cond, "human", out).__dict__
            except Exception as e:
                case = {"app": name, "condition": cond, "kind": "human", "outcome": "stopped", "reason": str(e)}
            cases.append({"part": "replay", **case})
            print(f"replay {name:11} {cond:9} {case['outcome']:7} {case.get('reason', '')[:120]}", flush=True)
    return cases


# ------------------------------------------------------------------------------ summary

# ------------------------------------------------------------------------------ lookahead

KEYS = {"Escape": "escape", "Return": "enter", "Tab": "tab"}  # xdotool's names -> the actions'


class StepsModel:
    """A backend whose replies are the app's workflow (clicks where a person would click, read when the
    step is asked for), with the lookahead's optional prepare(): what the loop prepared for each step
    and what each step was then asked with, by screenshot content key."""

    def __init__(self, app, display: str, workdir: Path):
        self.app, self.display, self.workdir = app, display, workdir
        self.name, self.steps = f"steps:{app.name}", list(app.steps)
        self.prepared: list[str] = []  # content keys of the frames prepared since the last call
        self.rows: list[dict] = []

    def fits(self, messages, constraint=None) -> bool:
        return True

    def cancel(self) -> None:
        pass

    def prepare(self, messages, constraint=None, image=True) -> None:
        if image:
            self.prepared.append(_last_key(messages))

    def generate(self, messages, constraint=None) -> str:
        key = _last_key(messages)
        if self.rows or self.prepared:  # every step but the first: was its screenshot prepared?
            self.rows.append({"shown": len(self.prepared), "last": bool(self.prepared) and self.prepared[-1] == key,
                              "any": key in self.prepared})
        else:
            self.rows.append({"first": True})
        self.prepared = []
        if not self.steps:
            return _call({"action": "terminate", "status": "success"})
        kind, what = self.steps.pop(0)
        if kind == "click":
            x, y = replay_bench.target_point(self.app, what, self.display, self.workdir)
            size = messages[-1]["content"][0]["image"].size
            return _call({"action": "left_click", "coordinate": [round(x * 1000 / size[0]), round(y * 1000 / size[1])]})
        if kind == "type":
            return _call({"action": "type", "text": what})
        return _call({"action": "key", "keys": [KEYS.get(what, what.lower())]})


def _last_key(messages) -> str:
    from agent.backends.engine_ops import image_key
    return image_key(messages[-1]["content"][0]["image"])


def _call(action: dict) -> str:
    return "<tool_call>\n" + json.dumps({"name": "computer_use", "arguments": action}) + "\n</tool_call>"


def lookahead_case(app, cond: str, out: Path) -> dict:
    """The app's workflow through the real loop on a real display: for every step after the first, was
    the screenshot it was asked with the last frame the settle loop had shown the lookahead?"""
    from actions.policy import Policy
    from agent.desktop.x11 import X11Desktop
    from agent.run.loop import LoopConfig, run_loop
    from agent.task import Task
    from agent.trace import Trace
    from sandbox.session import Sandbox

    task = Task.model_validate(replay_bench.task_for(app, cond))
    workdir = out / f"lookahead-{app.name}-{cond}"
    with Sandbox(screen=(task.screen.width, task.screen.height), workdir=workdir, cwd=ROOT,
                 progress=lambda line: None) as sb:
        sb.run_setup(task.setup)
        model = StepsModel(app, sb.display, workdir)
        with X11Desktop(sb.display) as desktop:
            end = run_loop(task.goal, model, desktop, Policy(task.allow), Trace(workdir / "trace"),
                           LoopConfig(max_steps=len(app.steps) + 1, timeout_s=180))
    rows = [r for r in model.rows if "first" not in r]
    return {"part": "lookahead", "app": app.name, "condition": cond, "end": end.kind, "steps": len(rows),
            "last_shown": sum(r["last"] for r in rows), "any_shown": sum(r["any"] for r in rows),
            "frames_shown": [r["shown"] for r in rows]}


def run_lookahead(apps: list[str], conds: list[str], out: Path) -> list[dict]:
    cases = []
    for name in apps:
        app = replay_bench.APPS[name]
        for cond in [c for c in conds if c in app.conditions]:
            try:
                case = lookahead_case(app, cond, out)
            except Exception as e:  # one broken case is a row, not the end of the matrix
                case = {"part": "lookahead", "app": name, "condition": cond, "error": f"{type(e).__name__}: {e}"}
            print(json.dumps(case), flush=True)
            cases.append(case)
    return cases


def summarise(cases: list[dict]) -> dict:
    out: dict = {"machine": f"{os.cpu_count()} CPU cores (shared)"}
    checks = [c for c in cases if c["part"] == "checks" and c.get("right") is not None]
    if checks:
        by_app: dict = {}
        for c in checks:
            by_app.setdefault(c["app"], []).append(c)
        agree = {a: len({tuple(c.get("verdicts", [])) for c in cs}) == 1 and all(c["right"] for c in cs)
                 for a, cs in by_app.items()}
        ocr = [c["ocr"] for c in checks if c.get("ocr")]
        n_text = sum(len(o["now"]) for o in ocr)
        out["checks"] = {
            "cases": len(checks), "right": sum(c["right"] for c in checks),
            "tasks_with_one_verdict_under_every_condition": f"{sum(agree.values())}/{len(agree)}",
            "per_task": agree,
            "screen_text_by_ocr_alone_right_now": f"{sum(_ocr_right(c, 'now') for c in checks)}/{n_text}",
            "screen_text_by_ocr_alone_right_before": f"{sum(_ocr_right(c, 'before') for c in checks)}/{n_text}",
            "ocr_ms_median_now": statistics.median(o["now_ms"] for o in ocr) if ocr else None,
            "ocr_ms_median_before": statistics.median(o["before_ms"] for o in ocr) if ocr else None,
            "checks_ms_median": statistics.median(c["checks_ms"] for c in checks if "checks_ms" in c),
        }
    flows = [c for c in cases if c["part"] == "flows" and c["variant"] != "cold"]
    if flows:
        out["flows"] = {"reruns": len(flows), "ok": sum(c["outcome"] == "ok" for c in flows),
                        "wrong": sum(c["outcome"] == "wrong" for c in flows),
                        "zero_model_calls": sum(c.get("model_calls") == 0 for c in flows)}
    ahead = [c for c in cases if c["part"] == "lookahead"]
    if ahead:
        done = [c for c in ahead if "error" not in c]
        out["lookahead"] = {"cases": len(ahead), "errors": len(ahead) - len(done),
                            "steps": sum(c["steps"] for c in done),
                            "screenshot_was_the_last_frame_shown": sum(c["last_shown"] for c in done),
                            "screenshot_was_a_frame_shown": sum(c["any_shown"] for c in done),
                            "frames_shown_per_step_median": statistics.median(
                                n for c in done for n in c["frames_shown"]) if done else None}
    replays = [c for c in cases if c["part"] == "replay"]
    if replays:
        out["replay"] = {"cases": len(replays), "ok": sum(c["outcome"] == "ok" for c in replays),
                         "wrong": sum(c["outcome"] == "wrong" for c in replays)}
    return out


def _ocr_right(case: dict, which: str) -> int:
    """How many of the case's screen_text checks OCR alone judged as they must be judged."""
    upto, must_pass, must_fail = CHECKS[case["app"]]
    expected = [True] * sum("screen_text" in c for c in must_pass) + [False] * sum("screen_text" in c for c in must_fail)
    return sum(a == b for a, b in zip(case["ocr"][which], expected))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", default="checks,flows,replay")
    ap.add_argument("--apps", default=",".join([*replay_bench.APPS, "gnome-calculator"]))  # (a flow only)
    ap.add_argument("--conditions", default=",".join(CONDITIONS))
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "matrix.json")
    ap.add_argument("--keep", type=Path, help="keep workdirs, screenshots and traces in this folder")
    args = ap.parse_args()
    out = (args.keep or Path(tempfile.mkdtemp(prefix="bench-matrix-"))).resolve()
    out.mkdir(parents=True, exist_ok=True)
    apps, conds, parts = args.apps.split(","), args.conditions.split(","), args.parts.split(",")
    cases = []
    recorded = [a for a in apps if a in replay_bench.APPS]  # the apps bench_replay_real can drive
    if "checks" in parts:
        cases += run_checks(recorded, conds, out)
    if "flows" in parts:
        cases += run_flows(apps, conds, out)
    if "replay" in parts:
        cases += run_replay(recorded, conds, out)
    if "lookahead" in parts:
        cases += run_lookahead(recorded, conds, out)
    summary = summarise(cases)
    print(json.dumps(summary, indent=1))
    args.json.write_text(json.dumps({"summary": summary, "cases": cases}, indent=1) + "\n")


if __name__ == "__main__":
    main()
