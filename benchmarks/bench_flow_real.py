"""QA flows and their action cache on real apps from Debian packages, run as a user runs them
(`vlagent run TASK --model script:REPLIES`): recorded cold, then re-run from the cache unchanged and
perturbed, each run's result read from the app itself.

    python benchmarks/bench_flow_real.py [--apps chromium,zenity,galculator,yad,tk-form] [--variants cached,moved]
                                         [--json benchmarks/results/flow_real.json]

Apps and flows (tests/scripts/flows/): Chromium showing a local order page (an act and three grounded
clicks; the page's title says what was ordered and how often), zenity --forms (two acts, a drop-down
and its item, OK; zenity prints the values), galculator (the keys 7 * 6 =; its display is read by
OCR on a crop), gnome-calculator (GTK 4: its tree is not read; the same keys, its display read
by the task's screen_text check), yad --form (two acts, a checkbox, OK; yad prints the values), our Tk registration form
(no accessibility tree: pixels only; two acts, a radio button, a checkbox, Submit; it writes form.json).
Variants, all with `--cache read-only` on the cache the cold run recorded:
cached (unchanged), nudged (the window 1 px right and down), moved (xdotool windowmove), stretched (moved, 30% larger), screen (1024x768), dark (Adwaita:dark, --force-dark-mode), font
(GDK_DPI_SCALE=1.3, Chromium's --force-device-scale-factor=1.3; the Tk form has neither), and changed apps: the order page's button relabelled "Buy now", its shipping
options swapped; zenity's Name and City fields swapped, its drop-down values reversed.
The scripted model answers right for the variant (coordinates moved with the window, swapped with
the widgets), so a healed step shows what the flow does when it asks the model.

Outcome per run: ok (the app's result is right), stopped (a step failed with its reason, the result
not reached, no wrong result), wrong (the app's result is wrong: some click landed on another
widget, noticed by the flow or not; `unnoticed` says whether every step still passed).
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
FLOWS = ROOT / "tests" / "scripts" / "flows"
SCREEN = (1280, 800)


def _rel(px, py) -> list[int]:
    return [round(px / SCREEN[0] * 1000), round(py / SCREEN[1] * 1000)]


def _launch_env(task: dict, extra: list[str], chromium_flags: list[str]) -> dict:
    """The task with environment variables put before the app (GTK) or flags after it (Chromium)."""
    launch = task["setup"][0]["launch"]
    if launch[0] == "chromium":
        launch[:] = launch + chromium_flags
    elif launch[0] == "env":
        launch[1:1] = extra
    else:  # sh -c 'exec env ... zenity ...'
        launch[2] = launch[2].replace("exec env ", "exec env " + " ".join(extra) + " ", 1)
    return task


def _move(task: dict, title: str, to: tuple[int, int]) -> dict:
    task["setup"] += [{"run": ["xdotool", "search", "--onlyvisible", "--name", title, "windowmove", str(to[0]), str(to[1])]},
                      {"sleep": 0.8}]
    return task


# Each app: its flow, its window (title, top-left corner), variants: (edit the task, map a click's pixel).
APPS = {
    "chromium": {"flow": "chromium_order_flow", "title": "^Order", "at": (60, 40)},
    "zenity": {"flow": "zenity_shipping_flow", "title": "^Shipping$", "at": (514, 299)},
    "galculator": {"flow": "galculator_flow", "title": "^galculator$", "at": (0, 0)},
    "yad": {"flow": "yad_contact_flow", "title": "^Contact$", "at": (0, 0)},
    "tk-form": {"flow": "tk_form_flow", "title": "^Registration$", "at": (100, 60)},
    "gnome-calculator": {"flow": "gnome_calculator_flow", "title": "Calculator", "at": (0, 0)},
}
MOVED_TO = {"chromium": (400, 200), "zenity": (120, 90), "galculator": (300, 160), "yad": (260, 140),
            "tk-form": (400, 200), "gnome-calculator": (300, 160)}
EXPECTED = {"chromium": "Order placed - Ordered: Ada, Express, gift", "zenity": "Ada|Paris|high", "galculator": "42",
            "yad": "Ada|ada@example.com|TRUE|Basic|",
            "tk-form": '{"name": "Ada Lovelace", "email": "ada@example.com", "plan": "Pro", "newsletter": true}',
            "gnome-calculator": "42"}
NO_THEMES = ("tk-form",)  # our Tk form has no dark theme or font option


def variant(app: str, name: str, task: dict, folder: Path):
    """(the task edited for the variant, a function moving a recorded click's pixel, the expected
    result) or None when the variant does not apply to the app."""
    same = lambda p: p  # noqa: E731
    expected = EXPECTED[app]
    if name in ("cold", "cached"):
        return task, same, expected
    if name in ("moved", "nudged"):  # nudged: one pixel right and down (effects are compared in place)
        (x0, y0) = APPS[app]["at"]
        (x1, y1) = MOVED_TO[app] if name == "moved" else (x0 + 1, y0 + 1)
        return _move(task, APPS[app]["title"], (x1, y1)), (lambda p: (p[0] + x1 - x0, p[1] + y1 - y0)), expected
    if name == "stretched":  # moved, then 30% wider and taller: widgets spread
        (x1, y1) = MOVED_TO[app]
        _move(task, APPS[app]["title"], (x1, y1))
        task["setup"] += [{"run": ["sh", "-c", f"w=$(xdotool search --onlyvisible --name '{APPS[app]['title']}' | head -1); "
                                   "eval $(xdotool getwindowgeometry --shell $w); "
                                   "xdotool windowsize $w $((WIDTH * 13 / 10)) $((HEIGHT * 13 / 10))"]}, {"sleep": 0.8}]
        return task, None, expected  # (layout unknown: the model's clicks are not moved)
    if name == "screen":  # a 1024x768 screen: windows where they were (zenity centred anew)
        task["screen"] = {"width": 1024, "height": 768}
        return task, None, expected  # (layout unknown: the model's clicks are not moved)
    if name in ("dark", "font") and app in NO_THEMES:
        return None
    if name == "dark":  # (libadwaita apps take their colour scheme from ADW_DEBUG_COLOR_SCHEME)
        return _launch_env(task, ["GTK_THEME=Adwaita:dark", "ADW_DEBUG_COLOR_SCHEME=prefer-dark"], ["--force-dark-mode", "--enable-features=WebContentsForceDark"]), same, expected
    if name == "font":  # (layout unknown: no heal replies)
        return _launch_env(task, ["GDK_DPI_SCALE=1.3"], ["--force-device-scale-factor=1.3"]), None, expected
    if app == "chromium" and name in ("relabelled", "swapped", "inserted"):
        page = (folder / "order.html").read_text()
        if name == "inserted":  # a new first row: every widget lower by the row's height (48 px)
            row = '<div class="row"><label class="field" for="name">Name</label>'
            page = page.replace(row, '<div class="row"><label class="field" for="mail">Email</label>'
                                     '<input type="text" id="mail"></div>\n' + row)
            move = lambda p: (p[0], p[1] + 48)  # noqa: E731
        elif name == "relabelled":
            page = page.replace(">Place order</button>", ">Buy now</button>")
            move = same
        else:
            a = '<label><input type="radio" name="ship" value="Standard" checked> Standard</label>'
            b = '<label><input type="radio" name="ship" value="Express"> Express</label>'
            page = page.replace(f"{a}\n  {b}", f"{b}\n  {a}")
            move = lambda p: (218, 234) if abs(p[0] - 323) < 8 and abs(p[1] - 234) < 8 else p  # noqa: E731
        (folder / f"order_{name}.html").write_text(page)
        task["setup"][0]["launch"] = [a.replace("/order.html", f"/order_{name}.html") for a in task["setup"][0]["launch"]]
        return task, move, expected
    if app == "zenity" and name in ("swapped", "reordered"):
        launch = task["setup"][0]["launch"]
        if name == "swapped":  # City above Name: zenity prints City|Name
            launch[2] = launch[2].replace("--add-entry=Name --add-entry=City", "--add-entry=City --add-entry=Name")
            rows = {352: 392, 392: 352}
            task["success"] = [{"file_contains": {"path": "{workdir}/zenity.out", "text": "Paris|Ada|high"}}]
            return task, (lambda p: (p[0], rows.get(p[1], p[1]))), "Paris|Ada|high"
        launch[2] = launch[2].replace("low|high", "high|low")  # the drop-down's values reversed
        return task, (lambda p: (p[0], 435) if p == (620, 464) else p), expected
    return None


def _replies(folder: Path, flow: str, move, out: Path) -> Path:
    data = yaml.safe_load((folder / f"{flow}.replies.yaml").read_text())
    for key, replies in data.items():
        for i, r in enumerate(replies):
            m = re.search(r'"coordinate": \[(\d+), (\d+)\]', r)
            if m and move is not None:
                px = (round(int(m.group(1)) * SCREEN[0] / 1000), round(int(m.group(2)) * SCREEN[1] / 1000))
                x, y = _rel(*move(px))
                replies[i] = r.replace(m.group(0), f'"coordinate": [{x}, {y}]')
    out.write_text(yaml.safe_dump(data, sort_keys=False))
    return out


def _app_result(app: str, trace: Path, result: dict) -> str:
    """What the app itself says it did."""
    if app in ("zenity", "yad", "tk-form"):
        out = trace / "workdir" / {"zenity": "zenity.out", "yad": "yad.out", "tk-form": "form.json"}[app]
        return out.read_text().strip() if out.exists() else ""
    if app == "chromium":
        detail = " ".join(c.get("detail", "") for c in result.get("checks", []))
        titles = re.findall(r"'(Order[^']*)'", detail)
        return titles[0] if titles else detail
    if app == "gnome-calculator":  # its display, as the task's screen_text check read it (OCR)
        return "42" if result.get("checks") and all(c.get("passed") for c in result["checks"]) else ""
    import cv2
    import numpy as np
    from PIL import Image

    from agent.ocr import ocr_text

    final = trace / "screens" / "final.png"
    if not final.exists():
        return ""
    # The display: the largest white area (white in the dark theme too), its first line read by OCR.
    image = Image.open(final).convert("RGB")
    white = (np.asarray(image.convert("L")) > 235).astype(np.uint8)
    _, _, stats, _ = cv2.connectedComponentsWithStats(white, connectivity=4)
    x, y, w, h = stats[1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))][:4]
    return (ocr_text(image.crop((x, y, x + w, y + h)), scale=1).splitlines() or [""])[0].strip()


def run_case(app: str, name: str, folder: Path, out: Path) -> dict:
    flow = APPS[app]["flow"]
    task = yaml.safe_load((folder / f"{flow}.yaml").read_text())
    v = variant(app, name, task, folder)
    if v is None:
        return {}
    task, move, expected = v
    path = folder / f"{flow}-{name}.yaml"
    path.write_text(yaml.safe_dump(task, sort_keys=False))
    replies = _replies(folder, flow, move, folder / f"{name}.replies.yaml")
    trace = out / f"{app}-{name}"
    cache = "read-write" if name == "cold" else "read-only"
    t0 = time.monotonic()
    # `vlagent run`, on this checkout's code
    subprocess.run([sys.executable, "-m", "agent.cli", "run", str(path), "--model", f"script:{replies}",
                    "--cache", cache, "--trace", str(trace)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    wall = time.monotonic() - t0
    result = json.loads((trace / "result.json").read_text())
    got = _app_result(app, trace, result)
    right = got == expected
    steps = result.get("flow") or []
    all_passed = bool(steps) and all(s.get("status") == "passed" for s in steps)
    produced = app not in ("galculator", "gnome-calculator") and ("placed" in got if app == "chromium" else bool(got))
    outcome = "ok" if right else ("wrong" if all_passed or produced else "stopped")
    return {"app": app, "variant": name, "status": result["status"], "outcome": outcome,
            "unnoticed": outcome == "wrong" and all_passed, "app_result": got, "expected": expected,
            "model_calls": result.get("model_calls"),
            "cache": [s.get("cache") for s in steps if s.get("cache") or s.get("kind") != "wait"],
            "step_calls": [s.get("model_calls") for s in steps if s.get("kind") != "wait"],
            "flow_s": round(sum(s.get("duration_s") or 0 for s in steps if s.get("kind") != "wait"), 2),
            "run_s": round(wall, 1),
            "reasons": [s.get("reason") for s in steps if s.get("reason")]}


VARIANTS = ("cached", "nudged", "moved", "stretched", "screen", "dark", "font", "relabelled", "swapped", "inserted", "reordered")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--apps", default=",".join(APPS))
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--json", type=Path)
    ap.add_argument("--keep", type=Path, help="keep the traces and caches in this folder")
    args = ap.parse_args()
    out = args.keep or Path(tempfile.mkdtemp(prefix="bench-flow-real-"))
    cases = []
    for app in args.apps.split(","):
        if app in APPS and not APPS[app]["flow"].startswith("tk_") and not shutil.which(app):
            print(f"{app}: not installed, skipped")
            continue
        folder = out / f"{app}-task"
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(FLOWS, folder)
        for name in ["cold", *args.variants.split(",")]:
            case = run_case(app, name, folder, out)
            if case:
                cases.append(case)
                print(f"{app:10} {name:10} {case['outcome']:7} {case['status']:8} calls={case['model_calls']:<3} "
                      f"flow={case['flow_s']:5.2f}s cache={case['cache']} result={case['app_result']!r}", flush=True)
    summary = {"machine": "2-core machine (shared)", "cases": len(cases),
               **{k: sum(c["outcome"] == k for c in cases) for k in ("ok", "stopped", "wrong")},
               "wrong_unnoticed": sum(c["unnoticed"] for c in cases), "traces": str(out)}
    print(json.dumps(summary))
    if args.json:
        args.json.write_text(json.dumps({"summary": summary, "cases": cases}, indent=1) + "\n")
    if not args.keep:
        shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
