"""An authorisation cookie for a sandbox's Xvfb: without it any local user could read the screen and
send input. The server is started with `-auth FILE`; the clients vlagent starts (and vlagent itself)
find the cookie through XAUTHORITY, a file in a private folder of this process.

The Xauthority format (libXau): per entry, big-endian u16 family, then four u16-length-prefixed
strings: address, display number, auth name, auth data.
"""
from __future__ import annotations

import atexit
import os
import shutil
import secrets
import socket
import struct
import tempfile
import threading
from pathlib import Path

COOKIE = b"MIT-MAGIC-COOKIE-1"
FAMILY_LOCAL, FAMILY_WILD = 256, 65535
_lock = threading.Lock()
_process_file: Path | None = None  # this process's XAUTHORITY: its sandboxes' cookies (and the user's)
_ours: dict[int, bytes] = {}  # display number -> cookie, of this process's sandboxes
_user = b""  # the user's own Xauthority entries


def _entry(family: int, address: bytes, number: str, cookie: bytes) -> bytes:
    out = struct.pack(">H", family)
    for field in (address, number.encode(), COOKIE, cookie):
        out += struct.pack(">H", len(field)) + field
    return out


def new_cookie() -> bytes:
    return secrets.token_bytes(16)


def server_file(folder: Path, cookie: bytes) -> Path:
    """The file Xvfb reads at start (-auth): the server takes every entry, whatever its number."""
    path = Path(folder) / "server.xauth"
    _write(path, _entry(FAMILY_WILD, b"", "", cookie))
    return path


def entries(number: int, cookie: bytes) -> bytes:
    host = socket.gethostname().encode()
    return _entry(FAMILY_LOCAL, host, str(number), cookie) + _entry(FAMILY_WILD, b"", str(number), cookie)


def client_file(folder: Path, number: int, cookie: bytes) -> Path:
    """A file holding only this display's cookie: what the sandbox's apps, setup and checks get."""
    path = Path(folder) / "client.xauth"
    _write(path, entries(number, cookie))
    return path


def share_with_this_process(number: int, cookie: bytes) -> None:
    """Let vlagent itself (Xlib, mss, pyautogui, xdotool) open the display: the cookie goes into this
    process's XAUTHORITY, a private file holding its sandboxes' cookies (the newest for each display
    number, first: libXau takes the first match) and then the user's own entries (a live desktop)."""
    global _process_file, _user
    with _lock:
        if _process_file is None:
            _sweep()
            folder = Path(tempfile.mkdtemp(prefix=f"vlagent-xauth-{os.getpid()}-"))
            atexit.register(shutil.rmtree, folder, True)
            _process_file = folder / "Xauthority"
            user = os.environ.get("XAUTHORITY") or str(Path.home() / ".Xauthority")
            try:
                _user = Path(user).read_bytes()[:1 << 20]
            except OSError:
                _user = b""
        # Set each time: someone (a test driving another vlagent's display) may have pointed it elsewhere.
        os.environ["XAUTHORITY"] = str(_process_file)
        _ours[number] = cookie
        _write(_process_file, b"".join(entries(n, c) for n, c in _ours.items()) + _user)


def forget(number: int) -> None:
    """The display is gone: its cookie leaves this process's file."""
    with _lock:
        if _process_file is not None and _ours.pop(number, None) is not None:
            _write(_process_file, b"".join(entries(n, c) for n, c in _ours.items()) + _user)


def _sweep() -> None:
    """Remove the cookie folders of processes of ours that died without their atexit (kill -9)."""
    for folder in Path(tempfile.gettempdir()).glob("vlagent-xauth-*-*"):
        pid = folder.name.split("-")[2]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(folder, ignore_errors=True)
        except PermissionError:  # alive, another user's
            continue


def _write(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
