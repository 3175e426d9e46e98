"""Past runs: the trace folders under the console's runs folder, read as the report reads them.

A run's id in URLs is its folder's path under the runs folder; only folders found by the scan are
served (an id is looked up, never joined onto a path), and files only from inside that folder.
"""
from __future__ import annotations

import time
from pathlib import Path

from agent.report.build import find_traces
from agent.trace import load_result, load_steps

MAX_LISTED = 300  # newest first


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
