"""`vlagent doctor`: run the machine checks of agent.doctor and show each with its fix."""
from __future__ import annotations

import sys

import click
from rich.console import Console

from agent.backends import DEFAULT_MODEL
from agent.doctor import CHECKS, Problem, Warning_, check_model, check_smoke_run

console = Console(highlight=False, soft_wrap=True)


@click.command()
@click.option("--model", "-m", default=DEFAULT_MODEL, show_default=True,
              help="The model to check: it must load (hub id, local folder, 'tiny-random' or 'script:FILE').")
@click.option("--skip-smoke", is_flag=True, help="Skip the tiny-model run through the whole loop.")
def doctor(model, skip_smoke):
    """Check display, input, capture, OCR, the model stack, the GPU and that the chosen model loads, then
    smoke-run the tiny model through the whole loop in a sandbox. Exit 0 when nothing failed (a missing
    GPU is a warning)."""
    from rich.markup import escape

    checks = [*CHECKS]
    checks.insert(next(i for i, (_, c) in enumerate(checks) if c is check_smoke_run), ("model", lambda: check_model(model)))
    failed = warned = 0
    for name, check in checks:
        if skip_smoke and check is check_smoke_run:
            continue
        with console.status(f"checking {name}..."):
            try:
                msg, state, fix = check(), "ok", ""
            except Warning_ as e:
                msg, state, fix = str(e), "warn", e.fix
            except Problem as e:
                msg, state, fix = str(e), "fail", e.fix
            except Exception as e:  # a check must report, never crash the doctor
                msg, state, fix = f"{type(e).__name__}: {e}".splitlines()[0], "fail", ""
        mark = {"ok": "[green]✓[/]", "warn": "[yellow]![/]", "fail": "[red]✗[/]"}[state]
        console.print(f"{mark} [bold]{name}[/]: {escape(msg)}")
        failed += state == "fail"
        warned += state == "warn"
        if fix and state != "ok":
            console.print(f"    [yellow]fix:[/] {escape(fix)}")
    if failed:
        console.print(f"[red]{failed} problem(s)[/]" + (f", {warned} warning(s)" if warned else ""))
    else:
        console.print("[green]all good[/]" if not warned else f"[green]ready[/], [yellow]{warned} warning(s)[/]")
    sys.exit(1 if failed else 0)
