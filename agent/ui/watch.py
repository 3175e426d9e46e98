"""A CLI run watched and steered: `vlagent run --watch` starts a console for this one run in the
run's own process (it prints the URL) and ends with the run; `--attended` without a console, or
with no page open, asks in the terminal."""
from __future__ import annotations

import sys
from pathlib import Path

from agent.ui.attend import Attendant, Lease, rules_of


class SessionHook:
    """`vlagent run`'s on_session: a console for the run with --watch; else, when the run has
    anything to ask (--attended, the task's `allow.confirm:`, the model's questions at a terminal),
    the terminal asks."""

    def __init__(self, *, watch: bool = False, attended: bool = False, echo=print):
        self.watch, self.attended, self.echo = watch, attended, echo
        self.console = None

    def __call__(self, session) -> None:
        from agent.ui.terminal import ask_in_terminal

        if self.watch:
            self.console = watch(session, attended=self.attended, terminal=ask_in_terminal,
                                 print_url=lambda url: self.echo(f"watch this run: {url}"))
        else:
            attend(session, attended=self.attended, terminal=ask_in_terminal)

    def close(self) -> None:
        if self.console is None:
            return
        import time

        deadline = time.monotonic() + 2.0  # let open pages hear the end of the run
        while any(r.viewers for r in self.console.live.values()) and time.monotonic() < deadline:
            time.sleep(0.05)
        self.console.stop()


def watch(session, *, port: int = 0, attended: bool = False, terminal=None, print_url=print):
    """Serve a console for `session` (not entered yet) on 127.0.0.1; return it (stop() it after the run)."""
    from agent.ui.app import Console

    console = Console(Path(session.folder).parent, port=port).bind()
    console.attach(session, attended=attended, terminal=terminal)
    console.start()
    print_url(console.url(f"/run?id={_quote(console.live_run().url_id)}"))
    return console


def attend(session, *, attended: bool = False, terminal=None, tty: bool | None = None) -> Attendant | None:
    """The run's Attendant when it has anything to ask (`--attended`, the task's `allow.confirm:`, or
    the model's questions where a person can answer them: attended, or a terminal), with no console:
    the terminal asks. `tty`: stdin is a terminal (default: look)."""
    rules = rules_of(session.task.allow)
    if tty is None:
        tty = sys.stdin is not None and sys.stdin.isatty()
    if not attended and rules is None and not tty:
        return None
    attendant = Attendant(rules, every=attended, lease=Lease(), can_answer=attended or tty)
    attendant.terminal = terminal
    attendant.stopped = lambda: session.control.stopped is not None
    session.attendant = attendant
    return attendant


def _quote(s: str) -> str:
    from urllib.parse import quote

    return quote(s, safe="")
