"""`vlagent replay`: a recorded or agent-run trace replayed without a model."""
from __future__ import annotations

import json
from pathlib import Path

import click

from agent.backends import DEFAULT_MODEL
from agent.cli.common import exit_for, exit_interrupted, sigterm_as_interrupt, usage_errors
from agent.cli.ui import print_result, watch_terminal
from agent.errors import VlagentError
from agent.trace import check_new_trace, new_trace_dir


@click.command("replay")
@click.argument("trace_dir", metavar="TRACE", type=click.Path(file_okay=False, path_type=Path))
@click.option("--task", "task_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Replay under this task file (default: the trace's task.yaml).")
@click.option("--display", default=None, help="Replay on an existing display (':N', or 'live') instead of a sandbox.")
@click.option("--speed", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True,
              help="Recorded waits take 1/F of their time.")
@click.option("--fallback", type=click.Choice(["none", "model"]), default="none", show_default=True,
              help="'model': ask --model to ground a step whose target cannot be found.")
@click.option("--model", "-m", default=None, help="The model for --fallback model (as for `vlagent run`).")
@click.option("--raw", is_flag=True, help="Replay the recorded coordinates as they are (no re-finding).")
@click.option("--trace", "trace_out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Trace folder of this replay (default: runs/<time>-replay-<task>).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("--watch", is_flag=True, help="Serve a web console for this replay and print its URL (watch, pause, stop).")
@click.option("--trust", is_flag=True, help="Run the trace's own setup and command checks although it was not written here.")
def replay(trace_dir, task_file, display, speed, fallback, model, raw, trace_out, as_json, watch, trust):
    """Replay TRACE (a recorded or agent-run trace folder) without a model.

    Exit 0 when the task's success checks pass, 1 when not, 2 on usage or configuration errors,
    130 when interrupted."""
    from agent.replay.player import check_secrets, load_trace_steps, load_trace_task, replay as replay_trace
    from agent.run.environment import DEFAULT_RUNS_DIR
    from agent.run.events import EventBus
    from agent.run.runner import use_display

    with usage_errors():
        from agent.trust import trust_all

        trust_all(trust)
        if trace_out is not None:  # a usage error says one thing: before the trace's trust line
            check_new_trace(trace_out)
        steps = load_trace_steps(trace_dir)
        task = load_trace_task(trace_dir, task_file)
        check_secrets(steps, task)
        display = use_display(display)
        backend = None
        if fallback == "model":
            from agent.backends import load_backend
            backend = load_backend(model or DEFAULT_MODEL)
        elif model:
            raise VlagentError("--model is only used with --fallback model")
    out = trace_out or new_trace_dir(DEFAULT_RUNS_DIR, f"replay-{task.name}")
    sigterm_as_interrupt()
    bus = EventBus()
    watch_terminal(bus, as_json)
    from agent.ui.watch import SessionHook

    hook = SessionHook(watch=watch, echo=lambda line: click.echo(line, err=True))
    try:
        result = replay_trace(trace_dir, task, display=display, speed=speed, fallback=backend, trace_out=out,
                              locate=not raw, bus=bus, on_session=hook)
    except KeyboardInterrupt:
        exit_interrupted()
    finally:
        hook.close()
    if as_json:
        click.echo(json.dumps({**result.model_dump(mode="json"), "trace": str(out)}, indent=2))
    else:
        print_result(result, Path(out))
    exit_for(result.status)
