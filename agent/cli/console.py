"""`vlagent ui`: the local web console (watch, steer and start runs; the playground)."""
from __future__ import annotations

from pathlib import Path

import click

from agent.backends import DEFAULT_MODEL
from agent.cli.common import UsageError, sigterm_as_interrupt


@click.command(help="A local web console: live and past runs, a run's live view with pause, stop, approvals and "
                    "take over, and a playground. Prints its URL with a fresh token; Ctrl-C stops it.")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(0, 65535), help="0: any free port.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Another address than this machine's loopback needs --token (anyone who can reach it could drive runs).")
@click.option("--token", envvar="VLAGENT_UI_TOKEN", default=None,
              help="The token pages and API calls need [default: a random one, printed] [env: VLAGENT_UI_TOKEN].")
@click.option("--runs", "runs_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder of traces to list and to start runs in [default: runs/].")
@click.option("--model", "-m", default=DEFAULT_MODEL, show_default=True, help="Default model for runs and the playground.")
@click.option("--backend", type=click.Choice(["auto", "transformers", "openai"]), default="auto", show_default=True)
@click.option("--base-url", default=None, help="Server URL for --backend openai.")
def ui(port, host, token, runs_dir, model, backend, base_url):
    from agent.errors import VlagentError
    from agent.run.environment import DEFAULT_RUNS_DIR
    from agent.ui.app import Console
    from agent.ui.auth import is_loopback

    if not is_loopback(host) and not token:
        raise UsageError(f"--host {host} is reachable from other machines: give a --token (a long random one) too")
    if token is not None and len(token) < 16:
        raise UsageError("--token must be at least 16 characters")
    sigterm_as_interrupt()
    try:
        console = Console(runs_dir or Path(DEFAULT_RUNS_DIR), host=host, port=port, token=token, model=model,
                          backend=backend, base_url=base_url).bind()
    except VlagentError as e:
        raise UsageError(str(e)) from None
    click.echo(f"vlagent console: {console.url()}", err=True)
    click.echo("  open that URL (it holds the token); Ctrl-C stops the console", err=True)
    click.echo(f"  runs and suites of other terminals attach with {' '.join(f'{k}={v}' for k, v in console.relay.env().items())}",
               err=True)
    try:
        console.serve()  # until Ctrl-C or SIGTERM
    except KeyboardInterrupt:
        pass
