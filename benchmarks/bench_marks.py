"""Element marks (`--marks`): do mark answers land on the right element more often than coordinate
answers, and what do marks cost a step?

    python benchmarks/bench_marks.py [--draws 2000] [--repeats 10] [--json benchmarks/results/marks.json]

1. Landing, on the shipped grounding set (examples/grounding_set: 53 targets on 6 real-app
   screenshots, each with the accessibility tree stored at capture time). No weights can be
   downloaded here, so the model is simulated. Its error is taken from published evaluations:
   Qwen3-VL-2B-Instruct's accuracy on ScreenSpot-v2 (88.9), OSWorld-G (54.1) and ScreenSpot-Pro
   (43.9-48.5; ClawGUI's reproduction and the Qwen3-VL report, as the README's model table), with
   the shape GUI-G2 (ZJU-REAL, arXiv 2507.15846) reports for clicks around a target's centre: an
   isotropic Gaussian. For each published accuracy A the Gaussian's sigma (in the model's 0..1000
   units) is the one under which coordinate answers hit A% of this set's targets, i.e. a model that
   grounds our screens as well as it grounds that benchmark. With the same error, a mark answer is
   simulated as the model naming the mark of the element its noisy point falls on (else the marked
   element nearest to it); the click then goes to that element's centre, read from the stored tree
   by the same resolve `vlagent run --marks` uses. A target without a mark is answered with the
   coordinate. A hit is the ScreenSpot rule: the clicked point inside the target box.
   What this leaves out: errors that are not about place (the model means another element) hit the
   wrong element either way; the sigma sweep shows the whole range.
2. Cost per step, on real apps (galculator, mousepad, zenity, yad, Chromium on two pages; each in its
   own Xvfb with the accessibility bus, 1280x800): reading the tree, picking and drawing the marks,
   re-reading it and the window list to resolve a mark at action time, and the prompt tokens the
   list adds (Qwen3-VL's tokenizer, offline copy); the screenshot's image tokens do not change.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from PIL import Image  # noqa: E402

from actions.coords import to_pixels  # noqa: E402
from actions.schema import LeftClick  # noqa: E402
from agent.eval.dataset import load  # noqa: E402
from agent.targets import marks as mk  # noqa: E402

SET = ROOT / "examples" / "grounding_set"
PUBLISHED = {  # Qwen3-VL-2B-Instruct, accuracy %: the README's model table
    "ScreenSpot-v2": 88.9, "OSWorld-G": 54.1, "ScreenSpot-Pro (high)": 48.5, "ScreenSpot-Pro (low)": 43.9}
SIGMAS = (2, 5, 10, 15, 20, 30, 40, 60, 80)


def _targets():
    """(sample, screenshot size, marks, the target's mark or None, the stored tree) per sample."""
    out = []
    for s in load(SET):
        size = Image.open(s.image).size
        nodes = s.nodes()
        marks = mk.pick(nodes, size)
        own = next((m for m in marks if (m.box[0], m.box[1], m.box[0] + m.box[2], m.box[1] + m.box[3]) == s.box), None)
        out.append((s, size, marks, own, nodes))
    return out


def _named(point, marks) -> mk.Mark | None:
    """The mark a model looking at `point` names: the element under it (the smallest), else the nearest."""
    x, y = point
    inside = [m for m in marks if m.box[0] <= x < m.box[0] + m.box[2] and m.box[1] <= y < m.box[1] + m.box[3]]
    if inside:
        return min(inside, key=lambda m: m.box[2] * m.box[3])
    return min(marks, key=lambda m: math.hypot(max(m.box[0] - x, 0, x - m.box[0] - m.box[2]),
                                               max(m.box[1] - y, 0, y - m.box[1] - m.box[3])), default=None)


_LANDS: dict = {}


def _lands(s, size, marks, nodes) -> dict[int, bool]:
    """Mark number -> whether naming it clicks inside the target box: resolved in the stored tree
    and mapped to a pixel as `vlagent run --marks` does (the same for every draw: computed once)."""
    key = (s.image, s.box)
    if key not in _LANDS:
        click = lambda m: mk.at_node(LeftClick(action="left_click", mark=m.n), mk.resolve(m, nodes, size), size)  # noqa: E731
        _LANDS[key] = {m.n: s.hit(to_pixels(click(m).coordinate, size)) for m in marks}
    return _LANDS[key]


def simulate(targets, sigma: float, draws: int, seed: int = 0) -> dict:
    rng = random.Random(seed)
    coord_hits = mark_hits = 0
    per_app: dict[str, list[int]] = {}
    for s, size, marks, own, nodes in targets:
        lands = _lands(s, size, marks, nodes)
        cx, cy = (s.box[0] + s.box[2]) / 2, (s.box[1] + s.box[3]) / 2
        rel = (cx / size[0] * 1000, cy / size[1] * 1000)
        app = per_app.setdefault(s.source, [0, 0, 0])
        for _ in range(draws):
            noisy = (min(max(rel[0] + rng.gauss(0, sigma), 0), 1000), min(max(rel[1] + rng.gauss(0, sigma), 0), 1000))
            point = to_pixels(noisy, size)
            c = s.hit(point)
            m = _named(point, marks) if own is not None else None
            k = c if m is None else lands[m.n]  # no mark for the target: the model answers the coordinate
            coord_hits += c
            mark_hits += k
            app[0] += c
            app[1] += k
            app[2] += 1
    n = len(targets) * draws
    return {"sigma": sigma, "coordinate_pct": round(100 * coord_hits / n, 1), "mark_pct": round(100 * mark_hits / n, 1),
            "by_app": {a: {"coordinate_pct": round(100 * v[0] / v[2], 1), "mark_pct": round(100 * v[1] / v[2], 1)}
                       for a, v in sorted(per_app.items())}}


def calibrate(targets, accuracy: float, draws: int) -> float:
    """The sigma under which coordinate answers hit `accuracy` % of the set (bisection)."""
    lo, hi = 0.5, 200.0
    for _ in range(18):
        mid = (lo + hi) / 2
        if simulate(targets, mid, draws, seed=1)["coordinate_pct"] > accuracy:
            lo = mid
        else:
            hi = mid
    return round((lo + hi) / 2, 2)


def landing(draws: int) -> dict:
    targets = _targets()
    covered = [t for t in targets if t[3] is not None]
    exact = sum(t[0].hit(mk.resolve(t[3], t[4], t[1]).centre) for t in covered)
    out = {"targets": len(targets), "targets_with_a_mark": len(covered),
           "without_a_mark": [t[0].instruction + f" ({t[0].source})" for t in targets if t[3] is None],
           "perfect_mark_answer_hits": exact, "draws_per_target": draws,
           "marks_per_screenshot": {t[0].source: len(t[2]) for t in targets}, "calibrated": {}, "sweep": []}
    for name, acc in PUBLISHED.items():
        sigma = calibrate(targets, acc, max(draws // 10, 100))
        out["calibrated"][name] = {"published_pct": acc, **simulate(targets, sigma, draws)}
    out["sweep"] = [simulate(targets, s, draws) for s in SIGMAS]
    return out


def _ms(f, repeats: int) -> tuple[list[float], object]:
    times, value = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        value = f()
        times.append((time.perf_counter() - t0) * 1e3)
    return times, value


def _stats(ms: list[float]) -> dict:
    ms = sorted(ms)
    return {"p50_ms": round(statistics.median(ms), 1), "max_ms": round(ms[-1], 1), "n": len(ms)}


def costs(repeats: int) -> dict:
    from agent.backends.qwen_vocab import qwen_tokenizer
    from agent.desktop.x11 import X11Desktop
    from agent.eval.build_set import APPS, running
    from sandbox.windows import list_windows

    tok = qwen_tokenizer()
    out = {}
    for app in APPS:
        with running(app) as (display, tree):
            frame = X11Desktop(display).capture()
            tree_ms, nodes = _ms(tree.nodes, repeats)
            draw_ms, marked = _ms(lambda: mk.look(nodes, frame, frame.size), repeats)
            marker = mk.Marker(tree)
            pick = marked.marks[len(marked.marks) // 2] if marked.marks else None
            resolve_ms, outcome = _ms(lambda: _try(marker, marked, pick, frame.size), repeats) if pick else ([], None)
            windows_ms, _ = _ms(lambda: list_windows(display), repeats)
            mark_reply = tok.encode('{"action": "left_click", "mark": %d}' % (pick.n if pick else 1))
            coord_reply = tok.encode('{"action": "left_click", "coordinate": [512, 384]}')
            out[app] = {"nodes": len(nodes), "marks": len(marked.marks), "tree_read": _stats(tree_ms),
                        "pick_and_draw": _stats(draw_ms), "resolve_at_action_time": _stats(resolve_ms) if resolve_ms else None,
                        "of_which_window_list": _stats(windows_ms), "resolved": outcome,
                        "prompt_tokens_added": len(tok.encode("\n" + marked.note)),
                        "reply_tokens_mark_vs_coordinate": [len(mark_reply), len(coord_reply)]}
            print(app, json.dumps(out[app]), flush=True)
    return out


def _try(marker, marked, pick, size) -> str:
    try:
        action, kept = marker.resolve(LeftClick(action="left_click", mark=pick.n), marked, size)
        return f"mark {pick.n} -> {kept['role']} {kept['name']!r} at {tuple(kept['pixel'])}"
    except Exception as e:  # reported: a refusal here is a finding
        return f"refused: {e}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--draws", type=int, default=2000, help="simulated answers per target and sigma")
    ap.add_argument("--repeats", type=int, default=10, help="timed repeats per app")
    ap.add_argument("--parts", default="landing,costs")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    parts = args.parts.split(",")
    result = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                          "load_1min": os.getloadavg()[0]},
              "code": subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"], capture_output=True,
                                     text=True).stdout.strip()}
    if "landing" in parts:
        result["landing"] = landing(args.draws)
        print(json.dumps({k: v for k, v in result["landing"].items() if k != "sweep"}, indent=1))
        for row in result["landing"]["sweep"]:
            print(f"sigma {row['sigma']:>4}: coordinate {row['coordinate_pct']:5.1f}%  mark {row['mark_pct']:5.1f}%")
    if "costs" in parts:
        result["costs"] = costs(args.repeats)
    result["machine"]["load_1min_end"] = os.getloadavg()[0]
    if args.json:
        args.json.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
