"""The root of vlagent's one-line errors. It lives in the lowest layer, so that `sandbox` needs
nothing from `agent`; agent.errors re-exports both and adds the rest."""


class VlagentError(Exception):
    """A user-facing failure: bad configuration, missing display, dead server. str() is one line."""


class SandboxError(VlagentError):
    """The sandbox could not start (a display, a setup step, an app that dies before its window).
    The run ends with status `error`."""


class AppDied(SandboxError):
    """An app under test exited with an error or was killed while the run drove it: a finding
    about the app, so the run ends as `failed` (agent.run.status)."""
