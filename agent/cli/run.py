"""`vlagent run` and `vlagent check-action`."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from agent.cli.common import (EXIT_NOT_ACHIEVED, Seconds, UsageError, exit_for, exit_interrupted, make_backend,
                               model_options, sigterm_as_interrupt, usage_errors)


@click.command()
@click.argument("task_file", type=click.Path(dir_okay=False, path_type=Path))
@model_options
@click.option("--display", default=None, help="Run on an existing display (':N', or 'live' for this desktop) instead of a sandbox.")
@click.option("--trace", "trace_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Trace folder (default: runs/<time>-<task>).")
@click.option("--max-steps", type=click.IntRange(1), default=None, help="Override the task's max_steps.")
@click.option("--timeout", "timeout_s", type=Seconds(), default=None, help="Override the task's timeout_s.")
@click.option("--history-images", type=click.IntRange(1, 32), default=4, show_default=True, help="Screenshots kept as images in the prompt.")
@click.option("--max-pixels", type=click.IntRange(1024), default=None, help="Downscale screenshots above this many pixels.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("--cache", "cache_mode", type=click.Choice(["read-write", "read-only", "write-only", "off"]),
              default="read-write", show_default=True,
              help="Flows (tasks with steps:): the action cache next to the task. read-only for CI, write-only to refresh.")
@click.option("--watch", is_flag=True, help="Serve a web console for this run and print its URL: watch it live, pause, "
                                             "stop, approve, take over (agent/ui).")
@click.option("--attended", is_flag=True, help="Every action waits for a person's approval (a flow's cached steps too): "
                                                "on the --watch page, else in the terminal. The model may ask questions.")
@click.option("--marks", is_flag=True, help="Number the interactive elements (from the accessibility tree) on each frame "
                                             "and list them in the prompt; the model may click a mark instead of a point.")
def run(task_file, model, backend, base_url, model_format, display, trace_dir, max_steps, timeout_s, history_images, max_pixels, as_json,
        cache_mode, watch, attended, marks):
    """Run TASK_FILE with a model, in a sandboxed display by default.

    Exit 0 when the task's success checks pass, 1 when not, 2 on usage or configuration errors,
    130 when interrupted."""
    from agent.run.history import HistoryConfig
    from agent.run.loop import LoopConfig
    from agent.run.runner import run_task, use_display
    from agent.task import load_task
    from agent.cli.ui import print_result, watch_terminal
    from agent.run.events import EventBus
    from agent.run.environment import DEFAULT_RUNS_DIR
    from agent.trace import check_trace_dir, new_trace_dir

    with usage_errors():
        task = load_task(task_file)
        trace_dir = trace_dir or new_trace_dir(DEFAULT_RUNS_DIR, task.name)
        check_trace_dir(trace_dir)  # new, writable, room on the disk: before anything starts
        display = use_display(display)
        store = None
        if task.steps:  # a flow: a corrupt cache file is a usage error, before anything starts
            from agent.flow.runner import open_cache

            store = open_cache(task, cache_mode)
        task = task.model_copy(update={"marks": True}) if marks else task  # as the task's `marks: true`
        model_backend = make_backend(model, backend, base_url, model_format)
        if task.marks and getattr(model_backend, "format", "qwen3-vl") != "qwen3-vl":
            raise UsageError(f"--marks: only the qwen3-vl format offers element marks, not {model_backend.format}")
    loop = LoopConfig(max_steps=max_steps or task.max_steps, timeout_s=timeout_s or task.timeout_s,
                      history=HistoryConfig(max_images=history_images, max_pixels=max_pixels))
    sigterm_as_interrupt()
    bus = EventBus()
    watch_terminal(bus, as_json)
    from agent.ui.watch import SessionHook
    hook = SessionHook(watch=watch, attended=attended, echo=lambda line: click.echo(line, err=True))
    try:
        result, folder = run_task(task, model_backend, display=display, trace_dir=trace_dir, loop=loop,
                                  cache=store, bus=bus, on_session=hook)
    except KeyboardInterrupt:
        exit_interrupted()
    finally:
        hook.close()
    if as_json:
        click.echo(json.dumps({**result.model_dump(mode="json"), "trace": str(folder)}, indent=2))
    else:
        print_result(result, folder)
    exit_for(result.status)


@click.command("check-action")
@click.argument("raw")
@click.option("--task", "task_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Take the policy from this task's allow: block (default: the built-in policy).")
@click.option("--screen", default="1280x800", show_default=True, help="Screen size WxH for the pixel coordinates.")
def check_action(raw, task_file, screen):
    """Validate one raw model reply (RAW, or - for stdin) against the schema and the policy.

    Exit 0 and print the action as JSON, 1 with the reason when rejected, 2 on usage errors."""
    from actions import ParseError, Policy, PolicyError, check_reply, to_json, to_pixels
    from agent.task import load_task

    try:
        w, h = (int(v) for v in screen.lower().split("x"))
        if not (0 < w <= 100_000 and 0 < h <= 100_000):
            raise ValueError
    except ValueError:
        raise UsageError(f"--screen must look like 1280x800, not {screen!r}") from None
    with usage_errors():
        task = load_task(task_file) if task_file else None
        policy = Policy(task.allow, task.secrets) if task else Policy()
    if raw == "-":
        raw = sys.stdin.read()
    try:
        action = check_reply(raw, policy)
    except (ParseError, PolicyError) as e:
        click.echo(f"rejected: {e}", err=True)
        sys.exit(EXIT_NOT_ACHIEVED)
    out = to_json(action)
    for key in ("coordinate", "start_coordinate"):
        value = getattr(action, key, None)
        if value is not None:
            out[f"{key}_px" if key != "coordinate" else "pixel"] = list(to_pixels(value, (w, h)))
    click.echo(json.dumps(out, ensure_ascii=False))
