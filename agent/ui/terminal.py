"""An attended run's questions in the terminal, when no page watches: approve, or reject with a note;
and the model's own questions (ask_user): type the answer."""
from __future__ import annotations

import json
import queue
import sys
import threading

from rich.console import Console
from rich.markup import escape

from agent.secrets import redact
from agent.ui.attend import Decision

console = Console(stderr=True, highlight=False, soft_wrap=True)


def text(value) -> str:
    return escape(redact(str(value)))


def ask_in_terminal(proposal, attendant) -> None:
    """An attended run's question, in the terminal (no page watches): approve, or reject with a note.
    Reads the terminal itself, so a run whose stdin is not a terminal is left to its timeout."""
    if not sys.stdin or not sys.stdin.isatty():
        return
    if proposal.question is not None:
        console.print(f"[bold yellow]step {proposal.step}: the model asks you[/]: {text(proposal.question)}\n"
                      "  your answer (an empty line: no answer) > ", end="")
        line = _read_line(proposal, attendant)
        if line is not None:
            attendant.answer(Decision("answer", "terminal", note=line), proposal.step)
        return
    console.print(f"[bold yellow]step {proposal.step} waits for you[/]: {text(proposal.why)}\n"
                  f"  proposed: {text(json.dumps(proposal.action, ensure_ascii=False))}\n"
                  "  [bold]a[/] approve · [bold]r[/] reject (a note may follow: r wrong field) > ", end="")
    line = _read_line(proposal, attendant)
    if not line:
        return
    verdict = "approve" if line.lower() in ("a", "y", "yes", "approve") else "reject"
    note = line[1:].strip() if verdict == "reject" and line[:1].lower() == "r" else ("" if verdict == "approve" else line)
    attendant.answer(Decision(verdict, "terminal", note=note), proposal.step)


def _read_line(proposal, attendant) -> str | None:
    """The next line typed in the terminal, stripped; None when the proposal was decided elsewhere
    meanwhile (the page, a timeout, a stop) or the terminal closed. One reader for the process: a
    reader left waiting by a question the page answered would otherwise take the next one's line."""
    global _reader
    with _reader_lock:
        while not _lines.empty():  # typed while nothing was asked: not an answer to this
            _lines.get_nowait()
        if _reader is None or not _reader.is_alive():
            _reader = threading.Thread(target=_read_stdin, daemon=True, name="terminal-reader")
            _reader.start()
    while attendant.pending is proposal:
        try:
            line = _lines.get(timeout=0.25)
        except queue.Empty:
            continue
        return None if line is None else line.strip()
    console.print()  # decided elsewhere or timed out: end the prompt's line
    return None


_lines: "queue.Queue[str | None]" = queue.Queue()  # None: the terminal closed
_reader: threading.Thread | None = None
_reader_lock = threading.Lock()


def _read_stdin() -> None:
    while True:
        try:
            line = sys.stdin.readline()
        except (OSError, ValueError):
            line = ""
        _lines.put(line or None)
        if not line:
            return
