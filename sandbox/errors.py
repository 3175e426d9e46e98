"""The root of vlagent's one-line errors. It lives in the lowest layer, so that `sandbox` needs
nothing from `agent`; agent.errors re-exports both and adds the rest."""


class VlagentError(Exception):
    """A user-facing failure: bad configuration, missing display, dead server. str() is one line."""


class SandboxError(VlagentError):
    """The sandbox could not start, or its app died. The run ends with status `error`."""
