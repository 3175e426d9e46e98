"""Many agents, one GPU: `vlagent serve` with N = 1, 2, 4, 8 concurrent synthetic agents.

Each agent is its own process, like a suite worker, and goes through the product path: the loop's
prompt (agent.run.history.build_messages: system prompt with the tool, the task, the newest 4
screenshots as images, older steps as text), the `--backend openai` client (PNG data URLs, the
policy's JSON schema), the server (processor, chat template, grammar, KV region, batched decode),
and the reply parsed as the loop parses it. The policy allows only left_click: native click replies.
Screenshots are synthetic desktops (flat windows, text-like bars; new content every step) of the
given size. By default no think time: an agent sends its next step as soon as its reply is back (the
worst case for the GPU). A real desktop takes a while between steps (the action, the screen
settling, the screenshot): `--think S` sleeps S seconds, `--think-from desktop_time.json` draws each
pause from the steps `bench_desktop_time.py` measured under `vlagent run` on real apps.

The model has the real Qwen3-VL-2B shapes with random weights in bf16 and, as no real weights can
be downloaded here, the tiny checkpoint's tokenizer (its special-token ids are written into the
config): text costs more tokens than with Qwen's tokenizer, images exactly as many.

For each N a fresh `vlagent serve --agents N` starts (regions sized by the memory plan); per agent
`--warm` steps are not timed, then `--steps` are. Reported: aggregate agent steps per second over
the timed window, per-agent step p50/p95, prompt/reply/reused tokens, the server's device-memory
peak while serving and the plan's prediction (agent.backends.budget.plan_agents).

    python benchmarks/bench_serve.py OUT.json [--agents 1,2,4,8] [--steps 8] [--think S | --think-from F] [--tiny]
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import queue
import random
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GOAL = "Open the settings window, turn on dark mode and save."


def make_checkpoint(folder: Path) -> None:
    """Random Qwen3-VL-2B weights (bf16, on the GPU) saved with the tiny checkpoint's tokenizer,
    processor and chat template; the config takes the tiny tokenizer's special-token ids."""
    import shutil

    import torch
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    from agent.backends.budget import QWEN3_VL_2B_TEXT, QWEN3_VL_2B_VISION
    from agent.backends.tiny import tiny_checkpoint

    tiny = Path(tiny_checkpoint())
    folder.mkdir(parents=True, exist_ok=True)
    for f in tiny.iterdir():
        if f.name not in ("model.safetensors", "config.json"):
            shutil.copy(f, folder / f.name)
    small = json.loads((tiny / "config.json").read_text())
    ids = {k: small[k] for k in ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")}
    text = dict(QWEN3_VL_2B_TEXT, **{k: small["text_config"][k] for k in ("bos_token_id", "eos_token_id", "pad_token_id")})
    cfg = Qwen3VLConfig(text_config=text, vision_config=dict(QWEN3_VL_2B_VISION), tie_word_embeddings=True, **ids)
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = Qwen3VLForConditionalGeneration(cfg).to(torch.bfloat16).eval()
    model.save_pretrained(folder)
    shutil.copy(tiny / "generation_config.json", folder / "generation_config.json")


def frame(agent: int, step: int, size: tuple[int, int]):
    """A synthetic desktop: background, a few windows with title bars and text-like lines; what
    changes with the step is a window's place and content (as after a click)."""
    import random

    from PIL import Image, ImageDraw

    rng = random.Random(agent * 1000 + step)
    w, h = size
    img = Image.new("RGB", size, (40 + agent * 20 % 200, 90, 140))
    d = ImageDraw.Draw(img)
    d.rectangle((0, h - 40, w, h), fill=(30, 30, 30))
    for k in range(4):
        x0, y0 = rng.randrange(0, w * 2 // 3), rng.randrange(0, h * 2 // 3)
        x1, y1 = x0 + rng.randrange(w // 5, w // 3), y0 + rng.randrange(h // 5, h // 3)
        d.rectangle((x0, y0, x1, y1), fill=(235, 235, 235), outline=(0, 0, 0))
        d.rectangle((x0, y0, x1, y0 + 24), fill=(60, 110, 180))
        for line in range(y0 + 36, y1 - 12, 22):
            d.rectangle((x0 + 12, line, x0 + 12 + rng.randrange(40, max(41, x1 - x0 - 24)), line + 10),
                        fill=(rng.randrange(60), rng.randrange(60), rng.randrange(60)))
    return img


def agent_main(i: int, base_url: str, name: str, size, warm: int, steps: int, think: tuple, barrier, results) -> None:
    from actions.parse import parse_action
    from actions.policy import Allow, Policy
    from actions.schema import to_json
    from agent.backends.openai import OpenAIBackend
    from agent.run.history import build_messages
    from agent.trace import Step

    policy = Policy(Allow(actions=["left_click"]))
    backend = OpenAIBackend(name, base_url, check_image_tokens=(i == 0))
    shots, past, rows = {}, [], []
    draw = random.Random(i)
    barrier.wait()
    for k in range(warm + steps):
        if k == warm:  # the timed steps start together: every agent is past its cold start
            barrier.wait()
        shots[k] = frame(i, k, size)
        msgs = build_messages(GOAL, past, shots[k], policy, load_image=lambda s: shots[int(s.screenshot)])
        t0 = time.perf_counter()
        reply = backend.generate(msgs, policy)
        t1 = time.perf_counter()
        try:
            action, error = to_json(policy.check(parse_action(reply))), None
        except Exception as e:  # counted: a random model must still give a valid reply
            action, error = None, str(e)[:200]
        past.append(Step(step=k + 1, raw=reply, action=action, error=error, screenshot=str(k)))
        if k >= warm:
            rows.append({"t0": t0, "t1": t1, "ms": (t1 - t0) * 1e3, "valid": error is None, "reply": reply})
        time.sleep(draw.choice(think))  # the action runs and the desktop settles
    results.put((i, rows))


def check_identity(device: str, agents: int = 3, chats: int = 5) -> dict:
    """The tiny checkpoint served on `device`: each of `chats` conversations (2..4 screenshots)
    alone, then all at once (more than `agents` regions: some wait); how many replies agree."""
    import threading

    from actions.policy import Allow, Policy
    from agent.backends.openai import OpenAIBackend
    from agent.run.history import build_messages
    from agent.serve.app import ServedModel, Server
    from agent.trace import Step

    policy = Policy(Allow(actions=["left_click", "type", "key", "scroll", "wait", "terminate"],
                          keys=["tab", "enter", "ctrl+a", "backspace"], max_text_len=200))
    reply = '<tool_call>\n{"name": "computer_use", "arguments": {"action": "left_click", "coordinate": [10, 20]}}\n</tool_call>'

    def chat(c):
        shots = [frame(c, k, (320, 200)) for k in range(c % 3 + 1)]
        past = [Step(step=k + 1, raw=reply, action={"action": "left_click", "coordinate": [10, 20]}, screenshot=str(k))
                for k in range(len(shots) - 1)]
        return build_messages(f"Task {c}.", past, shots[-1], policy, load_image=lambda s: shots[int(s.screenshot)])

    convs = [chat(c) for c in range(chats)]
    with Server(ServedModel("tiny-random", agents, 8192, device=device), port=0) as srv:
        be = OpenAIBackend("tiny-random", srv.base_url, processor=srv.served.processor)
        alone = [be.generate(c, policy) for c in convs]
        together = [None] * chats

        def go(i):
            together[i] = OpenAIBackend("tiny-random", srv.base_url, processor=srv.served.processor).generate(convs[i], policy)

        threads = [threading.Thread(target=go, args=(i,)) for i in range(chats)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        graphs = len(srv.served.batcher._graphs)
    return {"device": device, "conversations": chats, "regions": agents, "identical": sum(a == b for a, b in zip(alone, together)),
            "distinct_replies": len(set(alone)), "graphs": graphs}


def health(base_url: str) -> dict:
    with urllib.request.urlopen(base_url.removesuffix("/v1") + "/health", timeout=10) as r:
        return json.load(r)


def run_n(folder: str, n: int, size, warm: int, steps: int, think: tuple, logs: Path, replies: str = "native") -> dict:
    from agent.serve import process
    from agent.serve.process import ServeProcess

    if replies == "native":  # the server's free choices follow scripted native clicks (serve_scripted.py)
        process.VLAGENT = [sys.executable, str(ROOT / "benchmarks" / "serve_scripted.py")]

    t = time.perf_counter()
    with ServeProcess(folder, agents=n, log=logs / f"serve-{n}.log", screen=f"{size[0]}x{size[1]}") as server:
        start_s = time.perf_counter() - t
        ctx = mp.get_context("fork")
        barrier, results = ctx.Barrier(n), ctx.Queue()
        procs = [ctx.Process(target=agent_main, args=(i, server.base_url, server.name, size, warm, steps, think, barrier, results))
                 for i in range(n)]
        for p in procs:
            p.start()
        got = {}
        while len(got) < n:  # an agent that died fails the run at once
            try:
                i, rows = results.get(timeout=1)
                got[i] = rows
            except queue.Empty:
                dead = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
                if dead:
                    raise SystemExit(f"an agent failed (exit {dead[0]}); server log {server.log}")
        for p in procs:
            p.join(timeout=60)
        mem = health(server.base_url)
    rows = [r for i in sorted(got) for r in got[i]]
    window = max(r["t1"] for r in rows) - min(r["t0"] for r in rows)
    per_agent = {i: [r["ms"] for r in got[i]] for i in got}
    ms = sorted(r["ms"] for r in rows)

    def pct(q):
        k = (len(ms) - 1) * q
        lo = int(k)
        return ms[lo] + (ms[min(lo + 1, len(ms) - 1)] - ms[lo]) * (k - lo)

    return {"agents": n, "server_start_s": round(start_s, 1), "steps_timed": len(rows),
            "aggregate_steps_s": round(len(rows) / window, 3), "step_ms_p50": round(pct(0.5), 1),
            "step_ms_p95": round(pct(0.95), 1),
            "per_agent_p50_ms": {i: round(statistics.median(v), 1) for i, v in per_agent.items()},
            "valid_replies": sum(r["valid"] for r in rows), **mem,
            "replies_agent0": [r["reply"] for r in got[0]]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--agents", default="1,2,4,8")
    ap.add_argument("--warm", type=int, default=2)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--screen", default="1920x1080")
    ap.add_argument("--think", type=float, default=0.0, help="seconds between an agent's steps (the desktop settling)")
    ap.add_argument("--think-from", type=Path, help="draw the time between steps from the steps of this "
                    "bench_desktop_time.py result (real apps under `vlagent run`) instead")
    ap.add_argument("--tiny", action="store_true", help="the tiny checkpoint on the CPU (a smoke run)")
    ap.add_argument("--checkpoint", help="reuse a checkpoint folder made by an earlier run")
    ap.add_argument("--replies", choices=["native", "model"], default="native",
                    help="native: the server's choices follow native clicks with coordinates (benchmarks/serve_scripted.py); "
                         "model: whatever the random weights choose (the shortest reply the grammar allows)")
    ap.add_argument("--check", choices=["cpu", "cuda"], help="only: replies alone vs concurrent (tiny checkpoint)")
    args = ap.parse_args()
    if args.check:
        r = check_identity(args.check)
        Path(args.out).write_text(json.dumps(r, indent=1))
        print(json.dumps(r), flush=True)
        return
    size = tuple(int(v) for v in args.screen.split("x"))
    logs = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    if args.tiny:
        from agent.backends.tiny import tiny_checkpoint
        folder = str(tiny_checkpoint())
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    else:
        folder = args.checkpoint or str(logs / "random-2b")
        if not Path(folder, "config.json").exists():  # in a child: this process never touches CUDA (agents fork)
            t = time.perf_counter()
            subprocess.run([sys.executable, __file__, "--make-checkpoint", folder], check=True)
            print(f"checkpoint in {time.perf_counter() - t:.1f} s", flush=True)
    runs = []
    result = {"device": _device(), "screen": list(size), "history": 4, "model": "tiny-random" if args.tiny else
              (str(args.checkpoint) if args.checkpoint else "random-2b (Qwen3-VL-2B shapes, bf16, tiny tokenizer)"), "warm_steps": args.warm,
              "timed_steps_per_agent": args.steps, "think_time_s": args.think, "replies": args.replies, "runs": runs}
    think = (args.think,)
    if args.think_from:
        desktop = json.loads(args.think_from.read_text())
        think = tuple(s["desktop_ms"] / 1e3 for app in desktop["apps"].values() for s in app["steps_raw"])
        result["think_time_s"] = {"from": args.think_from.name, "machine": desktop["machine"], "steps": len(think),
                                  "p50_s": round(statistics.median(think), 3), "mean_s": round(statistics.fmean(think), 3)}
    for n in (int(v) for v in args.agents.split(",")):
        r = run_n(folder, n, size, args.warm, args.steps, think, logs, args.replies)
        runs.append(r)
        print(f"N={n}: {r['aggregate_steps_s']:.2f} steps/s, p50 {r['step_ms_p50']:.0f} ms, p95 {r['step_ms_p95']:.0f} ms, "
              f"peak {r['peak_gib']} GiB (plan {r['planned_peak_gib']}), valid {r['valid_replies']}/{r['steps_timed']}, "
              f"stats {r.get('stats')}", flush=True)
        Path(args.out).write_text(json.dumps(result, indent=1))  # what is done survives a cut-off run
    one = next((r for r in runs if r["agents"] == 1), None)
    if one:
        for r in runs:
            r["speedup_vs_1"] = round(r["aggregate_steps_s"] / one["aggregate_steps_s"], 2)
            r["p50_vs_1"] = round(r["step_ms_p50"] / one["step_ms_p50"], 2)
            if r["peak_gib"] and r["planned_peak_gib"]:
                r["plan_error_pct"] = round((r["planned_peak_gib"] / r["peak_gib"] - 1) * 100, 1)
            r["replies_agent0_same_as_alone"] = sum(a == b for a, b in zip(r["replies_agent0"], one["replies_agent0"]))
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps([{k: v for k, v in r.items() if k not in ("replies_agent0", "per_agent_p50_ms")} for r in runs], indent=1))


def _device() -> str:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True)
        if out.returncode == 0 and out.stdout.strip() and not os.environ.get("CUDA_VISIBLE_DEVICES") == "":
            return out.stdout.strip().splitlines()[0]
    except OSError:
        pass
    return platform.processor() or "cpu"


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--make-checkpoint":
        make_checkpoint(Path(sys.argv[2]))
    else:
        main()
