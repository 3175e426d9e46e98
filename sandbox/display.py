"""A private Xvfb display. Xvfb picks a free display number itself (-displayfd) and tells us
through a pipe, so parallel sandboxes and a live desktop never collide."""
from __future__ import annotations

import os
import select
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from sandbox import xauth
from sandbox.errors import SandboxError
from sandbox.procs import kill_group, spawn

START_TIMEOUT_S = 10.0  # Xvfb usually reports its display within ~0.1 s
CONNECT_TIMEOUT_S = 5.0
DEPTH = 24
X11_SOCKET_DIR = Path("/tmp/.X11-unix")


def _read_display_number(fd: int, proc: subprocess.Popen, timeout_s: float) -> int:
    """Xvfb writes "N\\n" to the -displayfd pipe once it listens."""
    deadline = time.monotonic() + timeout_s
    buf = b""
    while not buf.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or proc.poll() is not None:
            break
        ready, _, _ = select.select([fd], [], [], min(left, 0.1))
        if ready:
            chunk = os.read(fd, 64)
            if not chunk:  # Xvfb closed the pipe: it died
                break
            buf += chunk
    try:
        return int(buf.strip())
    except ValueError:
        return -1


def _wait_connectable(number: int, timeout_s: float) -> bool:
    path = str(X11_SOCKET_DIR / f"X{number}")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            try:
                s.connect(path)
                return True
            except OSError:
                time.sleep(0.02)
    return False


class Xvfb:
    """`with Xvfb((1280, 800)) as xvfb: xvfb.display  # ":7"` — stopped on exit."""

    def __init__(self, size: tuple[int, int] = (1280, 800)):
        self.size = size
        self.proc: subprocess.Popen | None = None
        self.display: str | None = None
        self._log = None
        self._auth_dir: tempfile.TemporaryDirectory | None = None
        self.xauthority: str | None = None  # the file with this display's cookie alone (for its apps)
        self._number: int | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self) -> str:
        if shutil.which("Xvfb") is None:
            raise SandboxError("Xvfb not found: install it (apt-get install xvfb)")
        w, h = self.size
        rfd, wfd = os.pipe()
        # A file, not a pipe: Xvfb would die of SIGPIPE writing a warning to a closed pipe.
        self._log = tempfile.TemporaryFile()
        # A cookie: only clients holding it may connect (no other local user reads the screen or types).
        self._auth_dir = tempfile.TemporaryDirectory(prefix="vlagent-x-")
        cookie = xauth.new_cookie()
        server_auth = xauth.server_file(Path(self._auth_dir.name), cookie)
        try:
            self.proc = spawn(
                ["Xvfb", "-displayfd", str(wfd), "-screen", "0", f"{w}x{h}x{DEPTH}",
                 "-nolisten", "tcp", "-noreset", "-auth", str(server_auth)],
                pass_fds=(wfd,), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=self._log,
            )
            os.close(wfd)
            wfd = -1
            number = _read_display_number(rfd, self.proc, START_TIMEOUT_S)
        finally:
            os.close(rfd)
            if wfd >= 0:
                os.close(wfd)
        if number < 0 or not _wait_connectable(number, CONNECT_TIMEOUT_S):
            err = self._stderr_tail()
            self.stop()
            raise SandboxError(f"Xvfb did not start a {w}x{h} display: {err or 'no output'}")
        self.xauthority = str(xauth.client_file(Path(self._auth_dir.name), number, cookie))
        xauth.share_with_this_process(number, cookie)
        self._number = number
        self.display = f":{number}"
        return self.display

    def _stderr_tail(self) -> str:
        self._log.seek(0)
        lines = self._log.read().decode(errors="replace").strip().splitlines()
        return lines[-1] if lines else ""

    def stop(self) -> None:
        if self.proc is not None:
            kill_group(self.proc)
            self._log.close()
        if self._number is not None:
            xauth.forget(self._number)
            self._number = None
        if self._auth_dir is not None:
            self._auth_dir.cleanup()
            self._auth_dir = None

    def __enter__(self) -> "Xvfb":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
