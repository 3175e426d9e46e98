"""`vlagent record`: a person's mouse and keyboard on the task's display, as a replayable trace."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from agent.cli.common import exit_for, exit_interrupted, sigterm_as_interrupt, usage_errors
from agent.cli.ui import watch_terminal
from agent.trace import check_new_trace


@click.command()
@click.argument("trace_dir", metavar="TRACE", type=click.Path(file_okay=False, path_type=Path))
@click.option("--task", "task_file", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The task to set up and record (its success checks end the recording).")
@click.option("--display", default=None, help="Record on an existing display (':N', or 'live') instead of a sandbox.")
@click.option("--max-seconds", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Stop recording after this long.")
@click.option("--keep-going", is_flag=True, help="Do not stop when the task's success checks pass.")
def record(trace_dir, task_file, display, max_seconds, keep_going):
    """Record your mouse and keyboard on the task's display into TRACE, replayable with
    `vlagent replay TRACE`. Stops on Ctrl-C, after --max-seconds, or when the task's checks pass.

    Exit 0 when the recording ends with the task's checks passing, 1 when not, 2 on usage errors."""
    from agent.replay.record import record_trace
    from agent.run.events import EventBus
    from agent.run.runner import use_display
    from agent.task import load_task

    with usage_errors():
        task = load_task(task_file)
        display = use_display(display)
        check_new_trace(trace_dir)

    def ready(d: str) -> None:
        auth = os.environ.get("XAUTHORITY", "")  # the display's cookie (sandbox.xauth): a viewer needs it
        click.echo(f"recording on display {d} (XAUTHORITY={auth}): attach a viewer (e.g. XAUTHORITY={auth} "
                   f"x11vnc -display {d}) and work; Ctrl-C stops", err=False)
        sys.stdout.flush()

    sigterm_as_interrupt()
    bus = EventBus()
    watch_terminal(bus)
    try:  # Ctrl-C while recording stops it (a result); before the recording starts, it aborts
        result = record_trace(trace_dir, task, display=display, max_seconds=max_seconds,
                              stop_when_done=not keep_going, on_ready=ready, bus=bus)
    except KeyboardInterrupt:
        exit_interrupted()
    click.echo(f"{result.status}: {result.reason}")
    click.echo(f"trace: {trace_dir}")
    exit_for(result.status)
