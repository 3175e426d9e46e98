"""What watching a suite from the console adds to its wall time.

    python benchmarks/bench_suite_watch.py [--items 3] [--repeats 3] [--json benchmarks/results/suite_watch.json]

`vlagent suite` of --items copies of tasks/fill_form.yaml with its scripted solution (6 steps each,
1280x800, one worker), --repeats times each: plain; with `--watch` and nobody looking ("idle");
with `--watch` and a watcher that does what a person's browser does: the runs page fetched every
second (its live lists), and each running item's page open (its frame stream and its event stream)
until the item ends ("watched"). In rotating order;
the suite's wall time (process start to exit), the items' own durations (suite.json), and the CPU
time of the suite's processes (the suite, its console, the items, the frame grabbers: all reaped
children) plus the watcher's, which varies less than wall time on a shared machine.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from urllib.parse import quote

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def items(work: Path, n: int) -> Path:
    folder = work / "items"
    folder.mkdir()
    task = (ROOT / "tasks" / "fill_form.yaml").read_text()
    solution = (ROOT / "tests" / "scripts" / "fill_form_solution.yaml").read_text()
    for i in range(n):
        (folder / f"form{i}.yaml").write_text(task)
        (folder / f"form{i}.replies.yaml").write_text(solution)
    return folder


def watcher(base: str, token: str, stop: threading.Event, seen: dict) -> None:
    """The runs page every second; each running item's frames and events while it runs."""
    from bench_live_view import read_events, read_frames

    headers = {"Authorization": f"Bearer {token}"}
    opened: set[str] = set()

    def item(run_id: str):
        done = threading.Event()
        ev = threading.Thread(target=read_events, args=(f"{base}/api/events?id={quote(run_id, safe='')}", headers, done),
                              daemon=True)
        ev.start()
        try:
            read_frames(f"{base}/api/frames?id={quote(run_id, safe='')}", headers, 600,
                        lambda *a: seen.__setitem__("frames", seen.get("frames", 0) + 1))
        except OSError:
            pass
        done.set()

    while not stop.is_set():
        try:
            with urllib.request.urlopen(urllib.request.Request(f"{base}/", headers=headers), timeout=10) as r:
                r.read()
            seen["pages"] = seen.get("pages", 0) + 1
            with urllib.request.urlopen(urllib.request.Request(f"{base}/api/suites", headers=headers), timeout=10) as r:
                suites = json.load(r)
        except OSError:
            suites = []
        for s in suites:
            for run in s["running"]:
                if run["id"] and run["id"] not in opened:
                    opened.add(run["id"])
                    threading.Thread(target=item, args=(run["id"],), daemon=True).start()
        seen["items_watched"] = len(opened)
        stop.wait(1.0)


MODES = ("plain", "idle", "watched")


def suite(work: Path, folder: Path, i: int, mode: str) -> dict:
    from agent.suite.runner import VLAGENT

    out = work / f"{mode}-{i}"
    watched = mode == "watched"
    cmd = [*VLAGENT, "suite", str(folder), "--model", "script:{dir}/{name}.replies.yaml", "--out", str(out)]
    t0, cpu0 = time.perf_counter(), time.process_time()
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.Popen(cmd + (["--watch"] if mode != "plain" else []), stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            text=True, cwd=ROOT)
    stop, seen, thread = threading.Event(), {}, None
    for line in proc.stderr:
        if watched and thread is None and line.startswith("watch this suite: "):
            url = line.split(": ", 1)[1].strip()
            base, token = url.split("/?token=")
            thread = threading.Thread(target=watcher, args=(base, token, stop, seen), daemon=True)
            thread.start()
    proc.wait()
    wall = time.perf_counter() - t0
    stop.set()
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime + time.process_time() - cpu0
    rows = json.loads((out / "suite.json").read_text())["items"]
    return {"mode": mode, "wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
            "outside_items_s": round(wall - sum(r["duration_s"] for r in rows), 2),  # start, between items, end
            "passed": sum(r["status"] == "success" for r in rows), "item_s": [r["duration_s"] for r in rows], **seen}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    runs = []
    with tempfile.TemporaryDirectory(prefix="bench-suite-watch-") as tmp:
        work = Path(tmp)
        folder = items(work, args.items)
        for i in range(args.repeats):
            for mode in MODES[i % 3:] + MODES[:i % 3]:
                runs.append(suite(work, folder, i, mode))
                print(json.dumps(runs[-1]), flush=True)

    def mean(key: str, mode: str) -> float:
        values = [v for r in runs if r["mode"] == mode for v in (r[key] if isinstance(r[key], list) else [r[key]])]
        return round(statistics.mean(values), 2)

    out = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "load_avg_at_end": os.getloadavg()},
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "items": args.items, "repeats": args.repeats}
    for mode in MODES:
        out[mode] = {"mean_wall_s": mean("wall_s", mode), "wall_sd_s": round(statistics.pstdev(
                     r["wall_s"] for r in runs if r["mode"] == mode), 2), "mean_item_s": mean("item_s", mode),
                     "mean_outside_items_s": mean("outside_items_s", mode), "mean_cpu_s": mean("cpu_s", mode)}
    for mode in MODES[1:]:
        out[f"added_by_{mode}"] = {f"{k}_pct": round(100 * (out[mode][f"mean_{k}"] / out["plain"][f"mean_{k}"] - 1), 1)
                                   for k in ("wall_s", "item_s", "cpu_s")}
    out["runs"] = runs
    print(json.dumps({k: v for k, v in out.items() if k != "runs"}, indent=1))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
