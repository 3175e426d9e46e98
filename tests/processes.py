"""Helpers for tests that prove no process outlived a run."""
from __future__ import annotations

import os
from pathlib import Path


def alive_with(token: str) -> list[str]:
    """`pid comm` of live processes (not zombies) whose environment holds TEST_TOKEN=token: the
    token is inherited by everything a test's child starts, setsid grandchildren included."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            env = Path(entry.path, "environ").read_bytes().split(b"\0")
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        if f"TEST_TOKEN={token}".encode() in env and stat.rsplit(")", 1)[1].split()[0] != "Z":
            found.append(f"{entry.name} {stat.split('(', 1)[1].rsplit(')', 1)[0]}")
    return found
