"""Errors that end a run or a command with a clear one-line message."""


class VlagentError(Exception):
    """A user-facing failure: bad configuration, missing display, dead server. str() is one line."""


class BackendError(VlagentError):
    """The model backend failed (crashed, timed out, server down). The run ends with status `error`."""


class ModelExhausted(VlagentError):
    """A scripted model ran out of replies. The run ends as `failed`."""


class SandboxError(VlagentError):
    """The sandbox could not start, or its app died. The run ends with status `error`."""


class Aborted(VlagentError):
    """A person stopped the run (mouse pushed into a screen corner, Ctrl-C)."""
