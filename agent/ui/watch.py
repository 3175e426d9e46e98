"""A CLI run watched and steered: `vlagent run --watch` starts a console for this one run in the
run's own process (it prints the URL) and ends with the run; `--attended` without a console, or
with no page open, asks in the terminal."""
from __future__ import annotations

from pathlib import Path

from agent.ui.attend import Attendant, Lease, rules_of


def watch(session, *, port: int = 0, attended: bool = False, terminal=None, print_url=print):
    """Serve a console for `session` (not entered yet) on 127.0.0.1; return it (stop() it after the run)."""
    from agent.ui.app import Console

    console = Console(Path(session.folder).parent, port=port).bind()
    console.attach(session, attended=attended, terminal=terminal)
    console.start()
    print_url(console.url(f"/run?id={_quote(console.live_run().url_id)}"))
    return console


def attend(session, *, attended: bool = False, terminal=None) -> Attendant | None:
    """The run's Attendant when it has anything to ask (`--attended`, or the task's `allow.confirm:`),
    with no console: the terminal asks."""
    rules = rules_of(session.task.allow)
    if not attended and rules is None:
        return None
    attendant = Attendant(rules, every=attended, lease=Lease())
    attendant.terminal = terminal
    attendant.stopped = lambda: session.control.stopped is not None
    session.attendant = attendant
    return attendant


def _quote(s: str) -> str:
    from urllib.parse import quote

    return quote(s, safe="")
