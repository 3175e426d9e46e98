"""The console's live view: frames per second, how far behind the display they are, and what
watching adds to an agent step.

    python benchmarks/bench_live_view.py [--seconds 20] [--repeats 3] [--json benchmarks/results/live_view.json]

1. Frames: a run of `vlagent ui` (its Console, in this process) on a 1280x800 sandbox whose app
   redraws 30 times a second and paints the time it drew into the screen as 32 black/white squares.
   A client reads the frame stream (/api/frames, as the page's <img> does) for --seconds: frames/s,
   and the delay of each frame behind the display = when it arrived minus the time painted in it
   (decoded from the JPEG), so the capture period, encoding and transfer all count.
2. Watching: the scripted solution of tasks/fill_form.yaml (6 steps, 1280x800), --repeats times
   unwatched and --repeats times watched (a frame stream and an event stream open the whole run),
   alternating; the mean step time (step_ms of the traces, model calls are scripted) of each.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BITS = 32
SQUARE = 16  # px per bit in the painted clock

CLOCK_APP = f"""
import time, tkinter as tk
root = tk.Tk(); root.title("clock"); root.geometry("1200x700+20+20")
c = tk.Canvas(root, width=1200, height=700, bg="white", highlightthickness=0); c.pack()
bits = [c.create_rectangle(20 + i * {SQUARE}, 20, 20 + (i + 1) * {SQUARE}, 20 + {SQUARE}, width=0) for i in range({BITS})]
ball = c.create_oval(0, 100, 80, 180, fill="#4257ff", width=0)
def tick():
    ms = int(time.time() * 1000) & 0xFFFFFFFF
    for i, b in enumerate(bits):
        c.itemconfigure(b, fill="black" if ms >> ({BITS} - 1 - i) & 1 else "white")
    x = (ms // 5) % 1100
    c.coords(ball, x, 100, x + 80, 180)
    root.after(33, tick)
tick(); root.mainloop()
"""


def painted_ms(jpeg: bytes, origin: tuple[int, int]) -> int:
    """The time (ms, low 32 bits) the clock app painted into this frame."""
    import io

    from PIL import Image

    img = Image.open(io.BytesIO(jpeg)).convert("L")
    x0, y0 = origin
    value = 0
    for i in range(BITS):
        v = img.getpixel((x0 + 20 + i * SQUARE + SQUARE // 2, y0 + 20 + SQUARE // 2))
        value = value << 1 | (1 if v < 128 else 0)
    return value


def read_frames(url: str, headers: dict, seconds: float, on_frame) -> None:
    req = urllib.request.Request(url, headers=headers)
    with urllib.request.urlopen(req, timeout=30) as r:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            line = r.readline()
            if not line:
                return
            if not line.startswith(b"--frame"):
                continue
            head = {}
            while (line := r.readline().strip()):
                k, _, v = line.decode().partition(":")
                head[k.strip().lower()] = v.strip()
            data = r.read(int(head["content-length"]))
            on_frame(time.time(), float(head["x-frame-time"]), data)


def read_events(url: str, headers: dict, stop: threading.Event) -> None:
    req = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=600) as r:
            while not stop.is_set() and r.readline():
                pass
    except OSError:
        pass


def frames_bench(seconds: float, work: Path) -> dict:
    import yaml

    from agent.backends.script import ScriptBackend
    from agent.task import load_task
    from agent.ui.app import Console
    from agent.ui.start import start_watched

    task_file = work / "clock.yaml"
    (work / "clock.py").write_text(CLOCK_APP)
    task_file.write_text(yaml.safe_dump({
        "name": "clock", "goal": "Watch the clock.", "screen": {"width": 1280, "height": 800},
        "setup": [{"launch": ["{python}", str(work / "clock.py")], "wait_for_window": "clock"}],
        "max_steps": 200, "timeout_s": seconds + 120, "allow": {"actions": ["wait", "terminate"]}}))
    (work / "waits.yaml").write_text(json.dumps(['<tool_call>{"name": "computer_use", "arguments": '
                                                 '{"action": "wait", "time": 1}}</tool_call>'] * 200))
    console = Console(work / "runs", port=0).bind().start()
    task = load_task(task_file)
    backend = ScriptBackend.from_file(work / "waits.yaml")
    live, t = start_watched(console, task, backend, work / "runs" / "clock")
    session = live.session
    headers = {"Authorization": f"Bearer {console.token}"}
    deadline = time.monotonic() + 60
    while live.steps < 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    delays, arrivals, pipeline = [], [], []

    def on_frame(now, captured, jpeg):
        arrivals.append(now)
        painted = painted_ms(jpeg, (20, 20))
        delays.append(((int(now * 1000) & 0xFFFFFFFF) - painted) & 0xFFFFFFFF)
        pipeline.append((now - captured) * 1000)

    read_frames(f"http://127.0.0.1:{console.port}/api/frames?id={live.url_id}", headers, seconds, on_frame)
    session.control.stop()
    t.join(timeout=60)
    stats = dict(live.frames.stats) if live.frames else {}
    console.stop()
    span = arrivals[-1] - arrivals[0] if len(arrivals) > 1 else 0
    ok = [d for d in delays if d < 10_000]  # (a frame whose squares were mid-redraw decodes to nonsense)
    q = statistics.quantiles(ok, n=20) if len(ok) >= 20 else [float("nan")] * 19
    return {"seconds": round(span, 2), "frames": len(arrivals), "fps": round((len(arrivals) - 1) / span, 2) if span else 0,
            "delay_behind_display_ms": {"p50": round(statistics.median(ok), 1) if ok else None, "p95": round(q[18], 1),
                                        "max": max(ok) if ok else None, "decoded": len(ok)},
            "capture_to_client_ms_p50": round(statistics.median(pipeline), 1) if pipeline else None,
            "capture_thread": {k: round(v, 1) for k, v in stats.items()}, "size": [1280, 800]}


def solution_run(work: Path, i: int, watched: bool) -> dict:
    from agent.backends.script import ScriptBackend
    from agent.task import load_task
    from agent.run.runner import run_task
    from agent.trace import load_steps
    from agent.ui.app import Console

    task = load_task(ROOT / "tasks" / "fill_form.yaml")
    backend = ScriptBackend.from_file(ROOT / "tests" / "scripts" / "fill_form_solution.yaml")
    folder = work / "runs" / f"{'watched' if watched else 'alone'}-{i}"
    console = Console(work / "runs", port=0).bind().start() if watched else None
    stop = threading.Event()
    readers, box = [], {}

    def hook(session):
        if console is None:
            return
        box["live"] = live = console.attach(session)
        headers = {"Authorization": f"Bearer {console.token}"}
        base = f"http://127.0.0.1:{console.port}"

        def frames():
            while live.display is None and not stop.is_set():
                time.sleep(0.02)
            try:
                read_frames(f"{base}/api/frames?id={live.url_id}", headers, 600, lambda *a: None)
            except OSError:
                pass
        readers = [threading.Thread(target=frames, daemon=True),
                   threading.Thread(target=read_events, args=(f"{base}/api/events?id={live.url_id}", headers, stop), daemon=True)]
        for r in readers:
            r.start()
    t0, cpu0 = time.perf_counter(), time.process_time()
    result, _ = run_task(task, backend, trace_dir=folder, on_session=hook)
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    stop.set()
    live = box.get("live")
    if console is not None:
        console.stop()  # (the grabber is stopped and its CPU time read)
    stats = live.frames.stats if live is not None and live.frames else {}
    steps = load_steps(folder)
    return {"watched": watched, "status": result.status, "wall_s": round(wall, 3), "process_cpu_s": round(cpu, 3),
            "step_ms": [round(s.timings.get("step_ms", 0), 1) for s in steps], "frames_encoded": stats.get("encoded", 0),
            "grabber_cpu_s": round(stats.get("grabber_cpu_s", 0.0), 3)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-live-") as tmp:
        work = Path(tmp)
        frames = frames_bench(args.seconds, work)
        print(json.dumps(frames, indent=1), flush=True)
        runs = []
        for i in range(args.repeats):
            for watched in (False, True) if i % 2 == 0 else (True, False):
                runs.append(solution_run(work, i, watched))
                print(json.dumps(runs[-1]), flush=True)
    mean = {w: statistics.mean(ms for r in runs if r["watched"] == w for ms in r["step_ms"]) for w in (False, True)}
    watched = [r for r in runs if r["watched"]]
    cpu_share = sum(r["grabber_cpu_s"] for r in watched) / sum(r["wall_s"] for r in watched)
    cpu = {w: statistics.mean(r["process_cpu_s"] + r["grabber_cpu_s"] for r in runs if r["watched"] == w) for w in (False, True)}
    out = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "load_avg_at_end": os.getloadavg()},
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "frames": frames,
           "watching": {"mean_step_ms_unwatched": round(mean[False], 1), "mean_step_ms_watched": round(mean[True], 1),
                        "added_pct": round(100 * (mean[True] / mean[False] - 1), 1),
                        "grabber_cpu_share_of_one_core_pct": round(100 * cpu_share, 1),
                        "cpu_s_per_run_unwatched": round(cpu[False], 3), "cpu_s_per_run_watched": round(cpu[True], 3),
                        "runs": runs}}
    print(json.dumps(out["watching"] | {"runs": len(runs)}, indent=1))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
