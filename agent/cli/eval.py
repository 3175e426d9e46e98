"""`vlagent eval grounding DATASET`: click accuracy through vlagent's own prompt and decoding."""
from __future__ import annotations

import json
from pathlib import Path

import click

from agent.backends import DEFAULT_MODEL
from agent.cli.common import EXIT_OK, UsageError, usage_errors

ORACLE = "oracle"


@click.group(name="eval")
def eval_group():
    """Measure a model on a benchmark through the path `vlagent run` takes."""


@eval_group.command()
@click.argument("dataset", type=click.Path(file_okay=False, path_type=Path))
@click.option("--model", "-m", default=DEFAULT_MODEL, show_default=True,
              help="Hub id or local folder, 'tiny-random[:FAMILY]', or 'oracle' (answers from the dataset's boxes: a CI check of the path).")
@click.option("--backend", type=click.Choice(["auto", "transformers", "openai"]), default="auto", show_default=True,
              help="'openai' evaluates a model served by an OpenAI-compatible server.")
@click.option("--base-url", default=None, help="Server URL for --backend openai.")
@click.option("--format", "format_", default=None,
              help="The model family's prompt and reply format (qwen3-vl, gui-owl-1.5, mai-ui, ui-venus-1.5); default: from the checkpoint.")
@click.option("--limit", type=click.IntRange(1), default=None, help="Evaluate the first N samples only.")
@click.option("--max-pixels", type=click.IntRange(1024), default=None, help="Downscale screenshots above this many pixels (as `vlagent run`).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Write report.json, table.txt and the failures drawn on their screenshots here.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON instead of the table.")
@click.option("--marks", is_flag=True, help="Number the elements of each screenshot's accessibility tree (trees/<image>.json, "
                                             "as the shipped set has) as `vlagent run --marks` does; a mark answer clicks its element.")
@click.option("--oracle-miss-every", type=click.IntRange(0), default=0, hidden=True)
def grounding(dataset, model, backend, base_url, format_, limit, max_pixels, out, as_json, marks, oracle_miss_every):
    """Click accuracy on DATASET (ScreenSpot-v2 / ScreenSpot-Pro layout, or vlagent's samples.json),
    by platform and element type, with the time per sample. Exit 0 when it ran."""
    from agent.backends import EngineOptions, load_backend
    from agent.eval.dataset import load
    from agent.eval.grounding import evaluate

    with usage_errors():
        samples = load(dataset, limit)
        if not samples:
            raise UsageError(f"{dataset}: no samples")
        if marks:
            samples[0].nodes()  # a set without trees: one line now, not after a model has loaded
        if model == ORACLE:
            from agent.eval.oracle import OracleBackend

            model_ = OracleBackend(samples, miss_every=oracle_miss_every, marks=marks)
        else:
            if backend == "openai" and not base_url:
                raise UsageError("--backend openai needs --base-url")
            opts = {"base_url": base_url} if backend == "openai" else {"options": EngineOptions.from_env()}
            model_ = load_backend(model, backend=backend, format=format_, **opts)
        if marks and getattr(model_, "format", "qwen3-vl") != "qwen3-vl":
            raise UsageError(f"--marks: only the qwen3-vl format offers element marks, not {model_.format}")
    width = len(str(len(samples)))

    def progress(r):
        if not as_json:
            mark = "ok  " if r.hit else "MISS"
            click.echo(f"[{r.index + 1:>{width}}/{len(samples)}] {mark} {r.ms:7.0f} ms  {r.instruction[:70]}", err=True)

    report = evaluate(samples, model_, dataset=str(dataset), out=out, max_pixels=max_pixels, on_result=progress,
                      marks=marks)
    if as_json:
        click.echo(json.dumps(report.summary(), indent=1))
    else:
        click.echo(f"{report.model} on {dataset}: {100 * report.accuracy:.1f}% of {len(samples)} clicks on target")
        click.echo(report.table())
        if out is not None:
            click.echo(f"report: {out / 'report.json'}; failures drawn in {out / 'failures'}")
    raise SystemExit(EXIT_OK)
