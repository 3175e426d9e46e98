"""Agent-step speed on the real Qwen3-VL-2B architecture, printed as a table and optionally written
as JSON: `python benchmarks/bench_steps.py --help` (also run by `vlagent bench` in a source checkout).

Modes: product (benchmarks/product_bench.py: the path `vlagent run` takes) and engine
(benchmarks/engine_bench.py: the engine alone on synthetic token ids). Engine switches are passed
to the engine's options object for this run (no environment variables are set).
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import click

sys.path.insert(0, str(Path(__file__).resolve().parent))  # engine_bench, product_bench beside this file

from engine_bench import run_bench  # noqa: E402

from agent.backends.budget import parse_screen  # noqa: E402
from agent.cli.common import usage_errors  # noqa: E402


ENGINE_KEYS = ["step_ms_p50", "step_ms_p95", "ttft_ms", "preprocess_ms", "vision_ms", "prefill_ms", "decode_ms",
               "decode_tok_s", "cold_start_s", "peak_gib", "predicted_peak_gib", "grammar_overhead_pct",
               "peak_context_gib"]
PRODUCT_KEYS = ["desktop_ms", "step_ms_p50", "step_ms_p95", "steady_step_ms_p50", "steady_step_ms_p95", "click_step_ms_p50",
                "click_step_ms_p95", "prompt_ms", "model_ms", "encode_ms", "preprocess_ms", "vision_ms", "prefill_ms", "decode_ms",
                "grammar_ms", "grammar_pct_of_decode", "new_tokens", "decode_steps", "decode_tok_s_episode",
                "decode_tok_s_at_context", "cold_start_s", "peak_gib", "peak_context_gib", "planned_peak_gib",
                "generate_defaults_step_ms_p50", "generate_defaults_ratio", "generate_static_compile_step_ms_p50",
                "generate_static_compile_ratio"]


def table(r: dict) -> None:
    from rich.console import Console
    from rich.table import Table
    t = Table(title=f"vlagent bench ({r.get('mode', 'engine')}): {r['model']} on {r['device']}", show_header=False)
    t.add_column(style="bold")
    t.add_column(justify="right")
    keys = PRODUCT_KEYS if r.get("mode") == "product" else ENGINE_KEYS
    for k in keys:
        if k in r and isinstance(r[k], (int, float)):
            t.add_row(k, f"{r[k]:.1f}" if abs(r[k]) >= 10 else f"{r[k]:.3f}")
    Console().print(t)


@click.command("bench")
@click.option("--mode", type=click.Choice(["product", "engine"]), default="product", show_default=True,
              help="product: an episode through the backend `vlagent run` uses (messages, policy grammar, "
                   "preprocessing), with transformers baselines; engine: the engine alone on synthetic token ids.")
@click.option("--baselines/--no-baselines", default=True, show_default=True,
              help="product: also time transformers' generate (defaults; static cache + compile) on the same prompts.")
@click.option("--decode-context", type=int, default=0, help="product: also measure decode speed at this context (e.g. 10240).")
@click.option("--random-weights", is_flag=True, help="The real 2B architecture with random weights (no download; the default).")
@click.option("--model", default=None, help="Real weights: a model id or local folder.")
@click.option("--tiny", is_flag=True, help="The tiny random checkpoint on the CPU (a smoke run in seconds).")
@click.option("--steps", default=12, show_default=True)
@click.option("--screen", default="1920x1080", show_default=True, help="Screenshot size WxH.")
@click.option("--history", default=4, show_default=True, help="Screenshots kept as images.")
@click.option("--evict", default=2, show_default=True, help="Older screenshots turned into text this many at a time.")
@click.option("--reply-tokens", default=25, show_default=True, help="Tokens decoded per step.")
@click.option("--context", default=32768, show_default=True, help="Static KV cache size in tokens.")
@click.option("--compile/--no-compile", default=False, show_default=True, help="torch.compile the layer pieces (decode, prefill, vision blocks); cached in ~/.cache/vlagent/inductor.")
@click.option("--attention", type=click.Choice(["bmm", "sdpa"]), default="bmm", show_default=True)
@click.option("--peak-context", type=int, default=0, help="Also measure peak memory at this context (e.g. 32768).")
@click.option("--grammar/--no-grammar", default=True, show_default=True, help="Measure the grammar's decode cost.")
@click.option("--reply", type=click.Choice(["fixed", "click", "mix"]), default=None,
              help="engine: fixed (decode --reply-tokens tokens, the default) or click (a native click under a toy "
                   "grammar); product: mix (click, type, key in turn, the default) or click (clicks only).")
@click.option("--kv-shift/--no-kv-shift", default=None,
              help="product: move the kept KV after an eviction instead of re-prefilling (default: the engine's option).")
@click.option("--fp8", type=click.Choice(["block", "channel"]), default=None,
              help="product: quantise the bf16 weights to FP8 at load (128x128 blocks, or per channel).")
@click.option("--sdpa", type=click.Choice(["cudnn", "flash"]), default=None, help="product: prefill/vision attention kernels first tried.")
@click.option("--desktop-ms", type=float, default=0.0, show_default=True,
              help="product: the desktop's time between a reply and the next settled screenshot (the action "
                   "and the settle; benchmarks/results/desktop_time.json has real apps'); 0: steps back to back.")
@click.option("--lookahead/--no-lookahead", default=True, show_default=True,
              help="product: prepare the next step during the desktop's time, as `vlagent run` does.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None, help="Write the results here.")
def bench(mode, baselines, decode_context, random_weights, model, tiny, steps, screen, history, evict, reply_tokens,
          context, compile, attention, peak_context, grammar, reply, kv_shift, fp8, sdpa, desktop_ms, lookahead,
          json_path):
    """Benchmark agent steps on the real Qwen3-VL-2B architecture."""
    if model and (random_weights or tiny):
        raise click.UsageError("--model excludes --random-weights and --tiny")
    if steps < 2:
        raise click.UsageError("--steps must be at least 2 (the first step is the cold one)")
    with usage_errors():
        size = parse_screen(screen)
    if mode == "product":
        if reply not in (None, "mix", "click"):
            raise click.UsageError("--mode product takes --reply mix or click")
        from product_bench import random_2b_checkpoint, run_product_bench
        with usage_errors():
            target = model or ("tiny-random" if tiny else str(random_2b_checkpoint()))
            r = run_product_bench(target, steps=steps, screen=size, reply=reply or "mix", baselines=baselines,
                                  peak_context=peak_context, decode_context=decode_context,
                                  compile=True if compile else None, kv_shift=kv_shift, fp8=fp8, sdpa=sdpa,
                                  desktop_ms=desktop_ms, lookahead=lookahead)
    else:
        r = run_bench(model=model, tiny=tiny, steps=steps, screen=size, history=history, evict=evict,
                      reply_tokens=reply_tokens, context=context, compile=compile, attention=attention,
                      peak_context=peak_context, grammar=grammar, reply=reply or "fixed")
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        # Strict JSON: a figure not measured here (device memory on the CPU) is null, not NaN.
        clean = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}
        Path(json_path).write_text(json.dumps(clean, indent=1, default=str), encoding="utf-8")
    table(r)


if __name__ == "__main__":
    bench()
