"""Test helpers for tests/desktop/test_desktop.py and tests/run/test_executor.py: a private Xvfb and the
Echo app (sandbox/apps/echo.py), which logs every input event it receives as JSON lines.

Input is asynchronous (our process -> X server -> Tk), so a test collects the events an action
caused by pressing a sentinel key (F9) afterwards and reading everything before its echo.
"""
from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 20.0  # Xvfb / Tk start; generous for a loaded 2-core CI machine
EVENT_TIMEOUT_S = 10.0  # a deadline against hangs, not a speed check
POLL_S = 0.02
SENTINEL_KEY = "f9"


@contextmanager
def xvfb(size: tuple[int, int] = (1280, 800)):
    """Start Xvfb on a free display number (-displayfd: the server picks, no collisions)."""
    read_fd, write_fd = os.pipe()
    proc = subprocess.Popen(
        ["Xvfb", "-displayfd", str(write_fd), "-screen", "0", f"{size[0]}x{size[1]}x24", "-nolisten", "tcp", "-noreset"],
        pass_fds=(write_fd,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    os.close(write_fd)
    try:
        ready, _, _ = select.select([read_fd], [], [], START_TIMEOUT_S)
        number = os.read(read_fd, 32).decode().strip() if ready else ""
        if not number:
            raise RuntimeError("Xvfb did not report a display number")
        yield f":{number}"
    finally:
        os.close(read_fd)
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Echo:
    """The Echo app running on `display`, logging to `out`."""

    def __init__(self, display: str, out: Path):
        self.display, self.out = display, out
        env = {**os.environ, "DISPLAY": display}
        self.proc = subprocess.Popen([sys.executable, "-m", "sandbox.apps.echo", "--out", str(out)],
                                     cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
        self.ready = self._wait(lambda evs: evs[0] if evs and evs[0]["event"] == "ready" else None,
                                since=0, timeout_s=START_TIMEOUT_S)

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def events(self) -> list[dict]:
        if not self.out.exists():
            return []
        lines = self.out.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.endswith("}")]  # skip a half-written line

    def mark(self) -> int:
        return len(self.events())

    def _wait(self, found, since: int, timeout_s: float = EVENT_TIMEOUT_S):
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            result = found(self.events()[since:])
            if result is not None:
                return result
            if self.proc.poll() is not None:
                raise RuntimeError(f"echo app exited: {self.proc.stderr.read()[-500:]}")
            time.sleep(POLL_S)
        raise TimeoutError(f"echo app: expected events did not arrive; got {self.events()[since:]}")

    def collect(self, desktop, since: int) -> list[dict]:
        """Every event after line `since` that input sent so far caused (a sentinel key ends it)."""
        desktop.key([SENTINEL_KEY])

        def upto_sentinel(evs):
            for i, e in enumerate(evs):
                if e["event"] == "key" and e["keysym"] == SENTINEL_KEY.upper():
                    return evs[:i]
            return None

        return self._wait(upto_sentinel, since)

    def clear_text(self, desktop) -> None:
        desktop.key(["esc"])
        self.collect(desktop, self.mark())


def of(events: list[dict], kind: str) -> list[dict]:
    return [e for e in events if e["event"] == kind]


def text_value(events: list[dict]) -> str | None:
    texts = of(events, "text")
    return texts[-1]["value"] if texts else None


def xdotool(display: str, *args: str) -> None:
    subprocess.run(["xdotool", *args], env={**os.environ, "DISPLAY": display}, check=True, timeout=10)
