"""`vlagent budget`: the KV-cache plan for a card, printed as a table or JSON."""
from __future__ import annotations

import json
import sys
from dataclasses import asdict

import click

from agent.backends import DEFAULT_MODEL
from agent.backends.budget import (DEFAULT_CARD_GIB, GIB, AgentsPlan, Plan, current_device, load_config,
                                   parse_screen, plan, plan_agents)
from agent.cli.common import EXIT_NOT_ACHIEVED, Positive, usage_errors


def _print_table(title: str, rows: list[tuple[str, str]]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=title, show_header=False)
    t.add_column(style="bold")
    t.add_column(justify="right")
    for k, v in rows:
        t.add_row(k, v)
    Console().print(t)


def render(p: Plan) -> None:
    _print_table(f"KV budget: {p.model} on {p.device} ({p.device_gib:g} GiB)", [
        ("weights", f"{p.weights_gib:.2f} GiB ({p.params / 1e9:.3f} B params x {p.dtype_bytes} B)"
         if abs(p.weights_gib * 2 ** 30 - p.params * p.dtype_bytes) < 2 ** 24 else
         f"{p.weights_gib:.2f} GiB ({p.params / 1e9:.3f} B params, linears in FP8)"),
        ("KV bytes per token", f"{p.kv_bytes_per_token:,} B ({p.kv_bytes_per_token / 1024:.0f} KiB)"),
        ("activation reserve", f"{p.reserve_gib:.2f} GiB"),
        ("vision cache", f"{p.vision_cache_gib:.2f} GiB"),
        ("model max context", f"{p.max_context_model:,} tokens"),
        ("token budget", f"{p.token_budget:,} tokens"),
        (f"tokens per {p.screen[0]}x{p.screen[1]} screenshot", f"{p.tokens_per_image:,}"),
        ("screenshots that fit", f"{p.images_fit:,}"),
        (f"predicted peak at {p.context:,} tokens", f"{p.predicted_peak_gib:.2f} GiB"),
    ])


def render_agents(p: AgentsPlan) -> None:
    _print_table(f"{p.agents} agents served on {p.device} ({p.device_gib:g} GiB)", [
        ("weights (once)", f"{p.weights_gib:.2f} GiB"),
        ("activation reserve (one step at a time)", f"{p.reserve_gib:.2f} GiB"),
        (f"KV region per agent ({p.screen[0]}x{p.screen[1]}, {p.history} in history)",
         f"{p.context_per_agent:,} tokens, {p.kv_gib_per_agent:.2f} GiB"),
        ("vision cache, all agents", f"{p.vision_cache_gib:.2f} GiB"),
        (f"predicted peak for {p.agents} agents", f"{p.predicted_peak_gib:.2f} GiB"),
        ("agents that fit", f"{p.agents_fit}" + ("" if p.fits else f"  (not {p.agents})")),
    ])


@click.command("budget")
@click.option("--model", default=DEFAULT_MODEL, show_default=True, help="Model id or local folder (its config is read).")
@click.option("--device-memory", "device_gib", type=Positive("GiB"), default=None,
              help="Card size in GiB (default: the current GPU, else 24 for an RTX 4090D).")
@click.option("--screen", default="1920x1080", show_default=True, help="Screenshot size WxH.")
@click.option("--history", default=4, show_default=True, help="Screenshots kept as images in the prompt.")
@click.option("--context", type=int, default=None, help="Predict the peak at this many tokens (default: the budget).")
@click.option("--agents", type=click.IntRange(min=1), default=None,
              help="Plan for N agents served at once by `vlagent serve` (--context: tokens per agent).")
@click.option("--weights", type=click.Choice(["bf16", "fp8"]), default="bf16", show_default=True,
              help="fp8: 8-bit linear weights (an FP8 checkpoint, or VLAGENT_FP8 quantising at load).")
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
def budget(model, device_gib, screen, history, context, agents, weights, as_json):
    """Print the KV-cache token budget and how many screenshots fit."""
    with usage_errors():
        size = parse_screen(screen)
        cfg = load_config(model)
    if device_gib is not None:
        name, total = f"{device_gib:g} GiB card", device_gib * GIB
    else:
        name, total = current_device() or (f"{DEFAULT_CARD_GIB:g} GiB card (no GPU here)", DEFAULT_CARD_GIB * GIB)
    wb = None
    if weights == "fp8":
        from agent.backends.budget import param_count
        from agent.backends.fp8 import fp8_weight_bytes
        wb = fp8_weight_bytes(cfg, param_count(cfg))
    if agents:
        a = plan_agents(cfg, total, agents, size, history=history, context=context, model=model, device=name,
                        weight_bytes=wb)
        click.echo(json.dumps(asdict(a), indent=1)) if as_json else render_agents(a)
        if not a.fits:
            _does_not_fit(f"{agents} agents do not fit {name}: {a.agents_fit} do")
        return
    p = plan(cfg, total, size, model=model, device=name, history=history, context=context, weight_bytes=wb)
    if as_json:
        click.echo(json.dumps(asdict(p), indent=1))
    else:
        render(p)
    if p.token_budget <= 0:
        _does_not_fit(f"{model} does not fit {name}: its weights ({p.weights_gib:.2f} GiB) and working memory "
                      f"({p.reserve_gib + p.vision_cache_gib:.2f} GiB) leave no room for a KV cache")
    if p.images_fit < history:
        _does_not_fit(f"{model} on {name}: {p.images_fit} screenshots of {size[0]}x{size[1]} fit, the history "
                      f"keeps {history} (lower --history or the screen size)")


def _does_not_fit(reason: str) -> None:
    click.echo(f"does not fit: {reason}", err=True)
    sys.exit(EXIT_NOT_ACHIEVED)
