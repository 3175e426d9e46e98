"""The `vlagent` command. Thin: each command parses, calls one library function, prints.

Subcommands live in their own modules and are imported only when invoked, so `vlagent --help`
starts fast and never imports torch.
"""
from __future__ import annotations

import importlib

import click

from agent import __version__

# name -> "module:attribute" of a click command
COMMANDS = {
    "run": "agent.cli.run:run",
    "check-action": "agent.cli.run:check_action",
    "doctor": "agent.cli.doctor:doctor",
    "budget": "agent.cli.budget:budget",
    "bench": "agent.cli.bench:bench",
    "record": "agent.cli.record:record",
    "replay": "agent.cli.replay:replay",
    "suite": "agent.cli.suite:suite",
    "report": "agent.cli.report:report",
    "serve": "agent.cli.serve:serve",
    "trust": "agent.cli.trust:trust",
    "ui": "agent.cli.console:ui",
    "eval": "agent.cli.eval:eval_group",
}
HELP = {
    "run": "Run a task file with a model in a sandboxed display.",
    "check-action": "Validate one raw model reply against the schema and a task's policy.",
    "doctor": "Check display, input, capture, OCR, model stack and GPU; smoke-run the tiny model.",
    "budget": "Print the KV-cache token budget and how many screenshots fit.",
    "bench": "Benchmark agent steps on the real Qwen3-VL-2B architecture.",
    "record": "Record a person's mouse and keyboard as a replayable trace.",
    "replay": "Replay a trace without a model, re-finding targets on the current screen.",
    "suite": "Run many tasks and traces in parallel sandboxes, with JUnit and HTML reports.",
    "report": "Build an HTML report from traces.",
    "serve": "Serve the model to many agents at once (OpenAI-compatible API, batched decoding).",
    "trust": "Trust a trace folder from elsewhere: its task's setup and command checks may run.",
    "ui": "A local web console: watch, steer and start runs; a playground.",
    "eval": "Measure a model (grounding accuracy on ScreenSpot-style sets) through vlagent's own path.",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return list(COMMANDS)

    def get_command(self, ctx, name):
        if name not in COMMANDS:
            return None
        module, attr = COMMANDS[name].split(":")
        try:
            return getattr(importlib.import_module(module), attr)
        except ModuleNotFoundError as e:  # an optional dependency of that command is not installed
            why = str(e)

            @click.command(name, help=HELP[name], context_settings={"ignore_unknown_options": True})
            @click.argument("args", nargs=-1, type=click.UNPROCESSED)
            def missing(args):
                raise click.ClickException(f"'{name}' is unavailable: {why} (pip install -e .)")
            return missing

    def invoke(self, ctx):
        """Ctrl-C anywhere in a command (loading a model, a second Ctrl-C while tearing down) exits 130
        without a traceback; click would say 'Aborted!' and exit 1."""
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            import signal

            signal.signal(signal.SIGINT, signal.SIG_IGN)
            click.echo("interrupted", err=True)
            ctx.exit(130)

    def format_commands(self, ctx, formatter):
        # Help text without importing every command module.
        with formatter.section("Commands"):
            formatter.write_dl([(n, HELP[n]) for n in COMMANDS])


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="vlagent")
def cli():
    """vlagent: a local GUI automation agent driven by Qwen3-VL."""


def main():
    interrupted = _interrupts()
    try:
        cli()
    except KeyboardInterrupt:  # Ctrl-C outside a run (loading a model, a second Ctrl-C): 130, no traceback
        raise SystemExit(130) from None
    except SystemExit as e:
        if interrupted() and e.code != 130:  # a second Ctrl-C that met cleanup code (click's "Aborted!" too)
            raise SystemExit(130) from None
        raise


def _interrupts():
    """Ctrl-C: the first raises KeyboardInterrupt (the run is torn down, its trace completed); a second
    one while that cleanup runs is noted and ignored, a third quits at once (the sandbox's watchdog
    ends what is left). After a second Ctrl-C the exit status is 130, whatever the code was doing (one
    Ctrl-C is the command's to interpret: it ends a recording normally)."""
    import os
    import signal
    import sys

    count = [0]

    def handler(signum, frame):
        count[0] += 1
        if count[0] == 1:
            raise KeyboardInterrupt
        if count[0] >= 3:
            os._exit(130)
        print("still cleaning up (Ctrl-C once more to quit at once)", file=sys.stderr, flush=True)

    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, handler)
    return lambda: count[0] > 1


if __name__ == "__main__":
    main()
