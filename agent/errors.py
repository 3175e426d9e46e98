"""Errors that end a run or a command with a clear one-line message."""

from sandbox.errors import AppDied, SandboxError, VlagentError  # noqa: F401 (one root for every layer)


class BackendError(VlagentError):
    """The model backend failed (crashed, timed out, server down). The run ends with status `error`."""


class ModelExhausted(VlagentError):
    """A scripted model ran out of replies. The run ends as `failed`."""


class Aborted(VlagentError):
    """A person stopped the run (mouse pushed into a screen corner, Ctrl-C)."""
