"""`vlagent serve`: one model on one device for many agents, over the OpenAI-compatible chat API."""
from __future__ import annotations

import click

from agent.backends import DEFAULT_MODEL
from agent.cli.common import UsageError, sigterm_as_interrupt


@click.command(help="Serve the model to many agents at once (OpenAI-compatible; point `vlagent run/suite "
                    "--backend openai --base-url URL --model NAME` at it). Runs until Ctrl-C.")
@click.option("--model", "-m", default=DEFAULT_MODEL, show_default=True, help="Hub id, local folder, or 'tiny-random'.")
@click.option("--name", help="Model name clients ask for [default: --model].")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535), help="0: any free port.")
@click.option("--agents", default=4, show_default=True, type=click.IntRange(1, 256),
              help="Conversations served at once, each with its own KV region.")
@click.option("--context", type=click.IntRange(min=1024), default=None,
              help="KV tokens per agent, a multiple of 1024 [default: what --screen and --history need].")
@click.option("--screen", default="1920x1080", show_default=True, help="Screenshot size the plan is made for.")
@click.option("--history", default=4, show_default=True, type=click.IntRange(1, 64), help="Screenshots per prompt.")
@click.option("--device", default=None, help="cuda, cuda:1 or cpu [default: cuda when there is one].")
@click.option("--api-key", envvar="VLAGENT_SERVE_API_KEY", default=None,
              help="Require `Authorization: Bearer KEY` on /v1 (clients set VLAGENT_API_KEY) [env: VLAGENT_SERVE_API_KEY].")
@click.option("--max-in-flight", type=click.IntRange(1), default=None,
              help="Chat requests at once, queued ones included; more get HTTP 429 [default: 4 x --agents].")
def serve(model, name, host, port, agents, context, screen, history, device, api_key, max_in_flight):
    from agent.backends.budget import parse_screen
    from agent.errors import VlagentError
    from agent.serve.app import Limits
    from agent.serve.app import ServedModel, Server, listen

    sigterm_as_interrupt()  # while the model loads; uvicorn handles SIGTERM itself once serving
    try:
        sock = listen(host, port)  # before the model loads: an address in use fails in a second
        served = ServedModel(model, agents, context, screen=parse_screen(screen), history=history,
                             name=name, device=device)
        server = Server(served, sock=sock, limits=Limits(in_flight=max_in_flight, api_key=api_key or None))
    except (VlagentError, OSError) as e:
        raise UsageError(str(e)) from None
    plan = served.plan
    click.echo(f"serving {served.name} at {server.base_url}: {agents} agents, {served.batcher.context:,} KV tokens "
               f"each, on {served.batcher.device}"
               + (f" (planned peak {plan.predicted_peak_gib:.1f} GiB)" if plan else "")
               + (", API key required" if api_key else ""), err=True)
    try:
        server.serve()  # until Ctrl-C or SIGTERM: uvicorn stops gracefully, then raises the signal again
    except KeyboardInterrupt:
        pass  # the way to stop a server, not a failure
