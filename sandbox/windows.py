"""The visible, named windows of a display (xdotool), with their screen geometry."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass

from sandbox.errors import SandboxError

XDOTOOL_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Window:
    id: int
    title: str
    x: int  # top-left corner in screen pixels
    y: int
    w: int
    h: int

    def contains(self, px: int, py: int) -> bool:
        return self.x <= px < self.x + self.w and self.y <= py < self.y + self.h


def _xdotool(args: list[str], display: str) -> subprocess.CompletedProcess:
    if shutil.which("xdotool") is None:
        raise SandboxError("xdotool not found: install it (apt-get install xdotool)")
    try:
        return subprocess.run(
            ["xdotool", *args], env={**os.environ, "DISPLAY": display},
            capture_output=True, text=True, timeout=XDOTOOL_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        raise SandboxError(f"xdotool did not answer on display {display} (is it alive?)") from None


def list_windows(display: str) -> list[Window]:
    """Visible windows that have a title, in xdotool's (stacking) order."""
    found = _xdotool(["search", "--onlyvisible", "--name", "."], display)
    if found.returncode != 0:
        if "open display" in found.stderr:
            raise SandboxError(f"cannot open display {display}: is an X server running there?")
        return []  # exit 1 with no output: no windows
    ids = found.stdout.split()
    if not ids:
        return []
    # One xdotool call for all windows: "name" then WINDOW=/X=/Y=/WIDTH=/HEIGHT=/SCREEN= lines.
    args = []
    for wid in ids:
        args += ["getwindowname", wid, "getwindowgeometry", "--shell", wid]
    out = _xdotool(args, display)
    return _parse(out.stdout)


def _parse(text: str) -> list[Window]:
    windows, name_lines, geo = [], [], {}
    for line in text.splitlines():
        key, _, value = line.partition("=")
        if key in ("WINDOW", "X", "Y", "WIDTH", "HEIGHT", "SCREEN") and value.lstrip("-").isdigit():
            geo[key] = int(value)
            if key == "SCREEN":
                windows.append(Window(geo["WINDOW"], "\n".join(name_lines), geo["X"], geo["Y"],
                                      geo["WIDTH"], geo["HEIGHT"]))
                name_lines, geo = [], {}
        else:
            name_lines.append(line)
    return windows


def display_size(display: str) -> tuple[int, int]:
    """(w, h) of the display's screen; SandboxError when it cannot be opened."""
    out = _xdotool(["getdisplaygeometry"], display)
    parts = out.stdout.split()
    if out.returncode != 0 or len(parts) != 2:
        raise SandboxError(f"cannot open display {display}: is an X server running there?")
    return int(parts[0]), int(parts[1])


def find_windows(display: str, title_regex: str) -> list[Window]:
    """Visible windows whose title matches `title_regex` (Python re.search)."""
    pattern = re.compile(title_regex)
    return [w for w in list_windows(display) if pattern.search(w.title)]
