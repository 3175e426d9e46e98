"""`vlagent doctor`: run the machine checks of agent.doctor and show each with its fix."""
from __future__ import annotations

import sys

import click
from rich.console import Console

from agent.doctor import CHECKS, Problem, check_smoke_run

console = Console(highlight=False, soft_wrap=True)


@click.command()
@click.option("--skip-smoke", is_flag=True, help="Skip the tiny-model run through the whole loop.")
def doctor(skip_smoke):
    """Check display, input, capture, OCR, the model stack and the GPU, then smoke-run the tiny model
    through the whole loop in a sandbox. Exit 0 when all is well."""
    failed = 0
    for name, check in CHECKS:
        if skip_smoke and check is check_smoke_run:
            continue
        with console.status(f"checking {name}..."):
            try:
                msg = check()
                ok, fix = True, ""
            except Problem as e:
                ok, msg, fix = False, str(e), e.fix
            except Exception as e:  # a check must report, never crash the doctor
                ok, msg, fix = False, f"{type(e).__name__}: {e}".splitlines()[0], ""
        mark = "[green]✓[/]" if ok else "[red]✗[/]"
        console.print(f"{mark} [bold]{name}[/]: {msg}")
        if not ok:
            failed += 1
            if fix:
                console.print(f"    [yellow]fix:[/] {fix}")
    console.print("[green]all good[/]" if not failed else f"[red]{failed} problem(s)[/]")
    sys.exit(1 if failed else 0)
