"""The console's runs: the live ones (Registry) and the past ones (TraceIndex: the trace folders
under the console's runs folder, read as the report reads them).

A run's id in URLs is its folder's path under the runs folder (`live/RUN` for a live run whose trace
is elsewhere); only folders found by the scan are served (an id is looked up, never joined onto a
path), and files only from inside that folder.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path

from agent.report.build import find_traces
from agent.trace import load_result, load_steps

MAX_LISTED = 300  # newest first
MAX_ENDED_LIVE = 100  # ended runs kept as live ones (their pages then come from their traces, when under the runs folder)


class TraceIndex:
    def __init__(self, root: Path):
        self.root = Path(root).resolve()
        self._ids: dict[str, Path] = {}
        self._scanned = 0.0

    def scan(self) -> dict[str, Path]:
        if time.monotonic() - self._scanned > 1.0:
            found = find_traces([self.root]) if self.root.is_dir() else []
            found.sort(key=lambda p: p.stat().st_mtime if p.exists() else 0, reverse=True)
            self._ids = {p.resolve().relative_to(self.root).as_posix(): p for p in found[:MAX_LISTED]
                         if p.resolve().is_relative_to(self.root)}
            self._scanned = time.monotonic()
        return self._ids

    def forget(self) -> None:
        self._scanned = 0.0

    def get(self, run_id: str) -> Path | None:
        folder = self.scan().get(run_id)
        if folder is None:
            self.forget()
            folder = self.scan().get(run_id)
        return folder

    def id_of(self, folder: Path) -> str | None:
        try:
            return Path(folder).resolve().relative_to(self.root).as_posix()
        except ValueError:
            return None

    def summaries(self) -> list[dict]:
        out = []
        for run_id, folder in self.scan().items():
            try:
                result = load_result(folder)
            except (OSError, ValueError):
                result = None
            out.append({"id": run_id, "task": (result.task if result else "") or folder.name,
                        "status": result.status if result else "no result",
                        "reason": result.reason if result else "", "steps": result.steps if result else 0,
                        "checks": [c.passed for c in result.checks] if result else [],
                        "started": result.started if result else folder.stat().st_mtime,
                        "duration_s": result.duration_s if result else 0.0, "live": False,
                        "model": result.model if result else ""})
        return out


class Registry:
    """Every live run a console shows, each by its id with its own page, frames and controls: runs
    started from the page (in the console's process, or in a process of their own), CLI runs and
    suite items that attached (agent/ui/relay.py); and the suites that report their progress here."""

    def __init__(self, index: TraceIndex):
        self.index = index
        self.live: dict = {}  # url id -> agent.ui.live.LiveRun (ended ones stay: their pages still work)
        self.suites: dict = {}  # id -> agent.ui.relay.SuiteView
        self.listed_at = 0.0  # time.monotonic() a page last asked for the lists (a runs page asks each second)
        self._lock = threading.Lock()

    def add(self, live) -> None:
        with self._lock:
            self.live[live.url_id] = live
            ended = [r for r in self.live.values() if r.ended]
            gone = ended[:max(0, len(ended) - MAX_ENDED_LIVE)]  # the oldest (a dict keeps their order)
            for r in gone:
                del self.live[r.url_id]
        for r in gone:
            r.close()
        self.index.forget()

    def add_suite(self, view) -> None:
        with self._lock:
            self.suites[view.id] = view

    def get(self, run_id: str):
        return self.live.get(run_id)

    def running(self) -> list:
        return [r for r in list(self.live.values()) if not r.ended]

    def in_process(self):
        """The live run of the console's own process, if any (input to X is process-wide: one at a time)."""
        return next((r for r in self.running() if not r.remote), None)

    def id_of_folder(self, folder: str) -> str | None:
        """The id of the live run writing the trace `folder` (a suite's running item), if it attached."""
        for r in list(self.live.values()):
            if str(r.folder.resolve()) == folder:
                return r.url_id
        return None

    def summaries(self) -> list[dict]:
        """Live runs first (newest first), then the past ones."""
        self.listed_at = time.monotonic()
        live = [r.summary() for r in list(self.live.values())]
        ids = {r["id"] for r in live}
        past = [s for s in self.index.summaries() if s["id"] not in ids]
        return sorted(live, key=lambda r: (not r["live"], -r["started"])) + past

    def suite_summaries(self) -> list[dict]:
        self.listed_at = time.monotonic()
        return sorted((s.summary(self.id_of_folder) for s in list(self.suites.values())), key=lambda s: -s["started"])


def run_page_data(folder: Path, run_id: str) -> dict:
    """A finished run's page: its steps as the report's cards, checks, final screen."""
    from agent.ui.views import files_url, step_card

    try:
        result = load_result(folder)
    except (OSError, ValueError):
        result = None
    steps = load_steps(folder, lenient=True)
    return {"cards": [step_card(s, run_id) for s in steps],
            "status": result.status if result else "no result", "reason": result.reason if result else "",
            "task": (result.task if result else "") or folder.name,
            "checks": [{"name": c.check, "ok": c.passed, "detail": c.detail} for c in result.checks] if result else [],
            "final": files_url(run_id, result.final_screenshot) if result and result.final_screenshot else None,
            "answer": result.answer if result else None, "model": result.model if result else "",
            "duration_s": result.duration_s if result else 0.0, "trace": str(folder)}


def trace_file(folder: Path, rel: str) -> Path | None:
    """A screenshot of a trace folder (what the pages show), never another file: not the app's own
    output in workdir/, nothing outside the folder (no `..`, no symlink out)."""
    base = (folder / "screens").resolve()
    path = (folder / rel).resolve()
    if not path.is_relative_to(base) or path.suffix.lower() not in (".png", ".jpg", ".jpeg") or not path.is_file():
        return None
    return path
