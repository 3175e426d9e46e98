"""What every command shares: exit codes, the usage error, model options, Ctrl-C and SIGTERM."""
from __future__ import annotations

import math
import signal
import sys
from contextlib import contextmanager

import click

from agent.backends import DEFAULT_MODEL
from agent.errors import VlagentError
# SIGTERM tears down like Ctrl-C (the sandbox goes, the trace is completed): one handler, in the lowest layer.
from sandbox.session import terminate_on_sigterm as sigterm_as_interrupt  # noqa: F401 (the commands call it)

EXIT_OK, EXIT_NOT_ACHIEVED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class UsageError(click.ClickException):
    exit_code = EXIT_USAGE


@contextmanager
def usage_errors():
    """A VlagentError raised while reading the command's inputs is a one-line usage error, exit 2."""
    try:
        yield
    except VlagentError as e:
        raise UsageError(str(e)) from None


def exit_interrupted() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not turn exit 130 into a traceback
    click.echo("interrupted: sandbox torn down, trace written", err=True)
    sys.exit(EXIT_INTERRUPTED)


class Positive(click.ParamType):
    """A positive, finite number (of `unit`): `nan` and `inf` are refused (click's FloatRange lets nan through)."""

    def __init__(self, unit: str = "seconds"):
        self.unit = self.name = unit

    def convert(self, value, param, ctx):
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number of {self.unit}", param, ctx)
        if not math.isfinite(number) or number <= 0:
            self.fail(f"{value!r} is not a positive, finite number of {self.unit}", param, ctx)
        return number


Seconds = Positive


def exit_for(status: str) -> None:
    sys.exit(EXIT_OK if status == "success" else EXIT_NOT_ACHIEVED)


def model_options(f):
    f = click.option("--model", "-m", default=DEFAULT_MODEL, show_default=True,
                     help="Hub id or local folder of Qwen3-VL weights, 'tiny-random', or 'script:FILE'.")(f)
    f = click.option("--backend", type=click.Choice(["auto", "transformers", "openai"]), default="auto",
                     show_default=True, help="'openai' talks to an OpenAI-compatible server (vLLM, SGLang).")(f)
    f = click.option("--base-url", default=None, help="Server URL for --backend openai, e.g. http://127.0.0.1:8000/v1.")(f)
    f = click.option("--format", "model_format", default=None,
                     help="The model family's prompt and reply format (qwen3-vl, gui-owl-1.5, mai-ui, ui-venus-1.5); "
                          "default: recognised from the checkpoint.")(f)
    return f


def make_backend(model: str, backend: str, base_url: str | None, model_format: str | None = None):
    """The backend the model options name; the engine's switches are read here, once (EngineOptions)."""
    from agent.backends import load_backend
    from agent.backends.options import EngineOptions

    if backend == "openai" and not base_url:
        raise VlagentError("--backend openai needs --base-url")
    opts: dict = {"format": model_format} if model_format else {}
    if backend == "openai":
        opts["base_url"] = base_url
    elif not model.startswith("script:"):
        opts["options"] = EngineOptions.from_env()
    return load_backend(model, backend=backend, **opts)
