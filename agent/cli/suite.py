"""`vlagent suite`: many task files and traces in parallel sandboxes, then JUnit and HTML."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from agent.cli.common import EXIT_INTERRUPTED, EXIT_NOT_ACHIEVED, EXIT_OK, UsageError, usage_errors
from agent.errors import VlagentError
from agent.run.environment import DEFAULT_RUNS_DIR
from agent.suite.child import TASK_GRACE_S, TRACE_TIMEOUT_S, Options
from agent.suite.items import discover, parse_shard, take_shard
from agent.suite.runner import run_suite, write_summary
from agent.task import read_yaml
from agent.trace import new_trace_dir


@click.command(help="Run task files (with --model) and traces (by replay) under PATH... in parallel sandboxes.")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--workers", "-j", default=1, show_default=True, type=click.IntRange(1, 64), help="Items run at once.")
@click.option("--model", help="Model for task files; {dir} and {name} stand for the task file's folder and stem, "
              "e.g. 'script:{dir}/{name}.replies.yaml'.")
@click.option("--backend", type=click.Choice(["auto", "transformers", "openai"]),
              help="Model backend for task files; openai: N workers share one OpenAI-compatible server.")
@click.option("--base-url", help="Server URL for --backend openai.")
@click.option("--retries", default=0, show_default=True, type=click.IntRange(0, 10), help="Re-runs of a failed item.")
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=1), help="Seconds per item "
              f"[default: the task's timeout_s + {TASK_GRACE_S:g}; {TRACE_TIMEOUT_S:g} for a trace].")
@click.option("--shard", help="Run shard I of N (1-based), e.g. 2/4.")
@click.option("--out", type=click.Path(path_type=Path), help="Folder for traces and logs [default: runs/<time>-suite].")
@click.option("--junit", type=click.Path(path_type=Path), help="Write JUnit XML here.")
@click.option("--report", "report_dir", type=click.Path(path_type=Path), help="Write the HTML report to this folder.")
@click.option("--list", "list_only", is_flag=True, help="Print the items (of this shard) and exit without running them.")
@click.option("--serve/--no-serve", "serve", default=None, help="Load the local model once in a `vlagent serve` "
              "shared by the workers [default: on with --workers > 1, a local model and a GPU].")
@click.option("--trust", is_flag=True, help="Run the setup and command checks of trace items not written here (agent.trust).")
@click.option("--watch", is_flag=True, help="Serve a web console for this suite and print its URL: its progress, each "
              "item's run live (pause, stop).")
def suite(paths, workers, model, backend, base_url, retries, timeout_s, shard, out, junit, report_dir, list_only, serve,
          trust, watch):
    from agent.trust import trust_all

    trust_all(trust)  # the items' child processes inherit it (VLAGENT_TRUST)
    with usage_errors():
        root, items = discover(list(paths))
        if shard:
            items = take_shard(items, *parse_shard(shard))
    if not items and not shard:
        raise UsageError(f"no task files (YAML with a goal) or traces (folders with steps.jsonl) under {', '.join(map(str, paths))}")
    if list_only:
        for it in items:
            click.echo(f"{it.kind:5}  {it.rel}")
        click.echo(f"{len(items)} item(s) under {root}" + (f", shard {shard}" if shard else ""))
        return
    out = (out or new_trace_dir(DEFAULT_RUNS_DIR, "suite")).resolve()
    if (out / "suite.json").exists() or (out / "traces").exists():  # its traces would be mixed, results lost
        raise UsageError(f"{out} already holds a suite run; give --out a new folder")
    out.mkdir(parents=True, exist_ok=True)
    opts = Options(model=model, backend=backend, base_url=base_url, timeout_s=timeout_s, retries=retries)
    server = None
    if serve if serve is not None else (workers > 1 and _local_model(model, backend) and _gpu()):
        if not _local_model(model, backend):
            raise UsageError("--serve needs a local model (a hub id, a folder or tiny-random) and no --backend openai")
        from agent.errors import VlagentError
        from agent.serve.process import ServeProcess

        server = ServeProcess(model, agents=workers, log=out / "logs" / "serve.log", screen=_largest_screen(items))
        try:
            server.start()
            click.echo(f"model server for {workers} workers at {server.base_url} (log {server.log})", err=True)
        except VlagentError as e:  # the task items fail with this reason; traces still replay
            click.echo(f"model server: {e}", err=True)
        opts.backend, opts.base_url = "openai", server.base_url
    console = None
    if watch:
        from agent.ui.watch import watch_suite

        console = watch_suite(out, print_url=lambda url: click.echo(f"watch this suite: {url}", err=True))
    try:
        outcomes, interrupted = run_suite(items, out, opts, workers=workers, server=server)
    finally:
        if server is not None:
            server.stop()
        if console is not None:
            from agent.ui.watch import stop_watching

            stop_watching(console, listed=True)
    write_summary(outcomes, root, out)
    if junit:
        from agent.suite.junit import write_junit

        write_junit(outcomes, junit, name=f"vlagent suite{f' shard {shard}' if shard else ''}")
    if report_dir:
        from agent.report.build import build_report

        build_report([o.trace for o in outcomes if o.trace], report_dir,
                     names={o.trace: o.item.name for o in outcomes if o.trace}, title="vlagent suite",
                     logs={o.trace: o.log for o in outcomes if o.trace})
    passed = sum(o.passed for o in outcomes)
    click.echo(("interrupted: " if interrupted else "") + f"{passed}/{len(outcomes)} passed; traces in {out}"
               + (f"; report {report_dir}/index.html" if report_dir else ""))
    if interrupted:
        sys.exit(EXIT_INTERRUPTED)
    sys.exit(EXIT_OK if passed == len(outcomes) else EXIT_NOT_ACHIEVED)


def _local_model(model: str | None, backend: str | None) -> bool:
    """A model this machine loads itself (not scripted replies, not a remote server, one for all items)."""
    return bool(model) and not model.startswith("script:") and "{" not in model and backend in (None, "auto", "transformers")


def _largest_screen(items) -> str:
    """The largest screen among the task items (the server's KV regions are planned for it)."""
    sizes = [(1920, 1080)]
    for it in items:
        if it.kind == "task":
            try:
                screen = (read_yaml(it.path) or {}).get("screen") or {}
                sizes.append((int(screen.get("width", 1280)), int(screen.get("height", 800))))
            except (VlagentError, AttributeError, TypeError, ValueError):
                pass  # the item itself reports a broken task file
    w, h = max(sizes, key=lambda wh: wh[0] * wh[1])
    return f"{w}x{h}"


def _gpu() -> bool:
    import torch  # a hard dependency, imported only when the suite would load a model itself

    return torch.cuda.is_available()
