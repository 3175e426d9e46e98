"""`vlagent bench`: runs benchmarks/bench_steps.py of the source checkout (the benchmarks are not part
of the library); `python benchmarks/bench_steps.py ...` is the same command."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import click

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_steps.py"


def _command():
    if not SCRIPT.is_file():
        raise click.ClickException(f"vlagent bench runs {SCRIPT.relative_to(SCRIPT.parents[1])} of a source "
                                   "checkout of vlagent; this installation has none")
    spec = importlib.util.spec_from_file_location("vlagent_bench_steps", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.bench


@click.command("bench", context_settings=dict(ignore_unknown_options=True, allow_extra_args=True,
                                              help_option_names=[]))
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def bench(args):
    """Benchmark agent steps on the real Qwen3-VL-2B architecture (benchmarks/bench_steps.py; --help there)."""
    _command().main(list(args), prog_name="vlagent bench")
