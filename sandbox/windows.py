"""The visible, named windows of a display, with their screen geometry and class."""
from __future__ import annotations

import os
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
    cls: str = ""  # WM_CLASS (the app's class): stable across runs, unlike titles that hold paths

    @property
    def width(self) -> int:
        return self.w

    @property
    def height(self) -> int:
        return self.h

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
    """Visible top-level windows that have a title, in stacking order (bottom first). The one window
    lister of the project (setup waits, checks, record and replay): Xlib, a few ms."""
    from Xlib import X
    from Xlib.error import XError

    d = _open(display)
    try:
        root = d.screen().root
        atoms = d.intern_atom("_NET_WM_NAME"), d.intern_atom("UTF8_STRING")
        out = []
        for w in root.query_tree().children:
            try:
                if w.get_attributes().map_state != X.IsViewable:
                    continue
                named = _named(w, atoms)
                if named is None:
                    continue
                client, title = named
                g = w.get_geometry()
                pos = w.translate_coords(root, 0, 0)  # absolute, also under a reparenting WM
                cls = client.get_wm_class()
                out.append(Window(client.id, title, -pos.x, -pos.y, g.width, g.height, cls[-1] if cls else ""))
            except XError:
                continue  # the window went away while we looked
        return out
    finally:
        d.close()


def _named(w, atoms):
    """(the window holding the title, the title): a reparenting WM puts it on the client. The
    UTF-8 _NET_WM_NAME first (Chromium sets only that one), then WM_NAME."""
    utf8_name, utf8 = atoms
    for win in [w, *w.query_tree().children]:
        prop = win.get_full_property(utf8_name, utf8)
        name = prop.value if prop is not None and prop.value else win.get_wm_name()
        if name:
            return win, name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name)
    return None


def _open(display: str):
    import contextlib
    import io

    from Xlib import display as xdisplay, error as xerror

    try:
        with contextlib.redirect_stdout(io.StringIO()):  # Xlib prints an xauth warning on Xvfb
            return xdisplay.Display(display)
    except (xerror.DisplayError, xerror.XauthError, xerror.ConnectionClosedError, OSError):
        raise SandboxError(f"cannot open display {display}: is an X server running there?") from None


def display_size(display: str) -> tuple[int, int]:
    """(w, h) of the display's screen; SandboxError when it cannot be opened."""
    out = _xdotool(["getdisplaygeometry"], display)
    parts = out.stdout.split()
    if out.returncode != 0 or len(parts) != 2:
        raise SandboxError(f"cannot open display {display}: is an X server running there?")
    return int(parts[0]), int(parts[1])


def find_windows(display: str, title_regex: str) -> list[Window]:
    """Visible windows whose title matches `title_regex` (RE2 search: linear time, whatever the pattern)."""
    from actions.patterns import compile_pattern

    pattern = compile_pattern(title_regex)
    return [w for w in list_windows(display) if pattern.search(w.title)]
