"""Sandboxed displays and the target apps the agent is tested on.

    from sandbox import Sandbox
    with Sandbox(screen=(1280, 800), workdir=wd, cwd=base) as sb: ...
"""
from sandbox.session import Sandbox, terminate_on_sigterm

__all__ = ["Sandbox", "terminate_on_sigterm"]
