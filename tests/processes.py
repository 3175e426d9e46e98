"""Helpers for tests that prove no process outlived a run."""
from __future__ import annotations

from pathlib import Path

from sandbox.procs import with_env


def alive_with(token: str) -> list[str]:
    """`pid comm` of live processes (not zombies) whose environment holds TEST_TOKEN=token: the
    token is inherited by everything a test's child starts, setsid grandchildren included."""
    found = []
    for pid in with_env("TEST_TOKEN", token):
        try:
            found.append(f"{pid} {Path(f'/proc/{pid}/comm').read_text().strip()}")
        except OSError:  # gone meanwhile
            continue
    return found
