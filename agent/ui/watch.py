"""A CLI run watched and steered: `vlagent run --watch` starts a console for this one run in the
run's own process (it prints the URL) and ends with the run; a run whose environment names a
console (VLAGENT_CONSOLE: a suite's items, runs a console started, `VLAGENT_CONSOLE=... vlagent run`)
attaches to it (agent/ui/relay.py); `--attended` without a console, or with no page open, asks in
the terminal. `vlagent suite --watch` starts a console for the suite (watch_suite)."""
from __future__ import annotations

import os
import signal
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
        self.relay = None

    def __call__(self, session) -> None:
        from agent.ui.relay import CONSOLE_ENV, Relay
        from agent.ui.terminal import ask_in_terminal

        address = os.environ.get(CONSOLE_ENV)
        if address and not self.watch:
            self.relay = Relay(session, address)
        if self.watch:
            self.console = watch(session, attended=self.attended, terminal=ask_in_terminal,
                                 print_url=lambda url: self.echo(f"watch this run: {url}"))
        else:
            attend(session, attended=self.attended, terminal=ask_in_terminal)

    def close(self) -> None:
        if self.relay is not None:
            self.relay.close()
        if self.console is not None:
            stop_watching(self.console)


def stop_watching(console, *, listed: bool = False) -> None:
    """Stop a console that watched a CLI run or suite once the open pages heard the end: a run's
    page (its event stream), and with `listed` a runs page that asks each second (the suite's end);
    2 s at most, no wait when nobody watches."""
    import time

    end = time.monotonic()

    def waiting() -> bool:
        if any(r.viewers for r in console.live.values()):
            return True
        asked = console.runs.listed_at
        return listed and end - 2.0 < asked < end  # a runs page was asking: let it ask once more

    while time.monotonic() - end < 2.0 and waiting():
        time.sleep(0.05)
    console.stop()


def watch(session, *, port: int = 0, attended: bool = False, terminal=None, print_url=print):
    """Serve a console for `session` (not entered yet) on 127.0.0.1; return it (stop() it after the run)."""
    from agent.ui.app import Console

    console = Console(Path(session.folder).parent, port=port).bind()
    console.attach(session, attended=attended, terminal=terminal)
    console.start()
    print_url(console.url(f"/run?id={_quote(console.live_run().url_id)}"))
    return console


def watch_suite(out: Path, *, port: int = 0, print_url=print):
    """Serve a console for a suite writing to `out` and name it in this process's environment (its
    items inherit it and attach; the suite reports its progress there); return it (stop() it after)."""
    from agent.ui.app import Console
    from agent.ui.relay import CONSOLE_ENV

    # Its threads are made with Ctrl-C and SIGTERM blocked, as the suite's scheduler holds them while it
    # spawns and reaps items (agent.suite.runner): a signal must reach the main thread then, not these.
    held = signal.pthread_sigmask(signal.SIG_BLOCK, (signal.SIGINT, signal.SIGTERM))
    try:
        console = Console(Path(out), port=port).bind().start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)
    os.environ[CONSOLE_ENV] = console.relay.path
    print_url(console.url("/"))
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
