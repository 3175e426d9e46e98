"""What `vlagent suite` shows while it runs: on a terminal, a rich display with a line per running
item and an overall bar; elsewhere (CI logs), one plain line per start and finish."""
from __future__ import annotations

import sys

from rich.console import Console, Group
from rich.live import Live
from rich.text import Text
from rich.progress import BarColumn, MofNCompleteColumn, Progress as RichProgress, SpinnerColumn, TextColumn, TimeElapsedColumn

STYLE = {"success": "green", "failed": "red", "invalid_output": "magenta", "timeout": "yellow",
         "aborted": "yellow", "error": "red", "skipped": "dim"}
MARK = {"success": "PASS", "skipped": "SKIP"}


def _verdict(outcome) -> str:
    return MARK.get(outcome.status, "FAIL")


class Progress:
    def __init__(self, total: int, console: Console | None = None):
        self.total = total
        self.done = 0
        self.passed = 0
        self.console = console or Console(stderr=True)
        self.live = self.console.is_terminal
        self._rows: dict[int, int] = {}
        if self.live:
            # Two stacks in one live view: a line per running item, and the overall bar under them.
            self._items = RichProgress(SpinnerColumn(), TextColumn("{task.description}"),
                                       TextColumn("[dim]{task.fields[info]}"), TimeElapsedColumn(), console=self.console)
            self._suite = RichProgress(TextColumn("[bold]suite"), BarColumn(), MofNCompleteColumn(),
                                       TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=self.console)
            self._overall = self._suite.add_task("suite", total=total, info="")
            self._view = Live(Group(self._items, self._suite), console=self.console, refresh_per_second=8)

    def __enter__(self):
        if self.live:
            self._view.start()
        return self

    def __exit__(self, *exc):
        if self.live:
            self._view.stop()

    def _plain(self, text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    def started(self, child) -> None:
        again = f" (attempt {child.attempt})" if child.attempt > 1 else ""
        if self.live:
            self._rows[id(child)] = self._items.add_task(f"{child.item.name}{again}", total=None, info="starting")
        else:
            self._plain(f"[{self.done}/{self.total}] start {child.item.name}{again}")

    def update(self, child) -> None:
        if self.live and id(child) in self._rows:
            self._items.update(self._rows[id(child)], info=f"step {child.steps()}")

    def finished(self, child, outcome, retrying: bool = False) -> None:
        if not retrying:
            self.done += 1
            self.passed += outcome.passed
        verdict = "RETRY" if retrying else _verdict(outcome)
        reason = f": {outcome.reason}" if outcome.reason and not outcome.passed else ""
        line = f"{verdict} {outcome.item.name} [{outcome.status}] {outcome.duration_s:.1f} s, {outcome.steps} steps{reason}"
        if self.live:
            self._items.remove_task(self._rows.pop(id(child)))
            self._suite.update(self._overall, completed=self.done,
                               info=f"[green]{self.passed} passed[/] [red]{self.done - self.passed} failed[/]")
            self.console.print(Text(line, style=STYLE.get(outcome.status, "red")))
        else:
            self._plain(f"[{self.done}/{self.total}] {line}")
