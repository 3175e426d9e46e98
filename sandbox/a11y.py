"""The accessibility bus of a sandbox: a private D-Bus session bus and the AT-SPI bus launcher, so that
GTK, Qt and Chromium apps on the sandbox's display publish their widgets (role, name, states, box).

The launcher writes the AT-SPI bus address on the display's root window (AT_SPI_BUS), which is where
both the apps and a reader (sandbox/atspi.py) look for it. Without at-spi2-core installed the
sandbox runs as before, without a tree (replay then finds targets by pixels and text alone).

    bus = A11yBus(":7"); env = bus.start()   # env for the apps: DBUS_SESSION_BUS_ADDRESS, switches
    ...; bus.stop()
"""
from __future__ import annotations

import os
import select
import shutil
import subprocess
import time
from pathlib import Path

from sandbox.procs import kill_group, spawn

LAUNCHER = Path("/usr/libexec/at-spi-bus-launcher")
START_TIMEOUT_S = 5.0
ANNOUNCED_CHECK_S = 0.5  # one xprop run, and a retry or two
# Switches that make toolkits publish their tree even without a desktop session asking for it.
APP_ENV = {
    "ACCESSIBILITY_ENABLED": "1",  # Chromium (with --force-renderer-accessibility for the page)
    "QT_LINUX_ACCESSIBILITY_ALWAYS_ON": "1",  # Qt 5/6
    "GTK_A11Y": "atspi",  # GTK 4 (GTK 3 loads its AT-SPI bridge whenever the bus is there)
    "NO_AT_BRIDGE": "0",
}


def available() -> bool:
    return LAUNCHER.is_file() and shutil.which("dbus-daemon") is not None


class A11yBus:
    """A session bus and the AT-SPI launcher for one display; stop() ends both."""

    def __init__(self, display: str, env: dict[str, str] | None = None):
        self.display = display
        self.base_env = env  # what the bus and the launcher run with (the sandbox's clean environment)
        self.procs: list[subprocess.Popen] = []
        self.address: str | None = None

    def start(self) -> dict[str, str]:
        """Start both; returns the environment apps need (empty when at-spi2-core is missing or the
        bus did not come up: apps then run without a tree, as on a plain X server)."""
        if not available():
            return {}
        env = {**(self.base_env if self.base_env is not None else os.environ), "DISPLAY": self.display}
        rfd, wfd = os.pipe()
        try:
            bus = spawn(["dbus-daemon", "--session", "--nofork", "--nopidfile", f"--print-address={wfd}"],
                        pass_fds=(wfd,), env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL)
            self.procs.append(bus)
            os.close(wfd)
            wfd = -1
            self.address = _read_line(rfd, START_TIMEOUT_S)
        finally:
            os.close(rfd)
            if wfd >= 0:
                os.close(wfd)
        if not self.address:
            self.stop()
            return {}
        env["DBUS_SESSION_BUS_ADDRESS"] = self.address
        self.procs.append(spawn([str(LAUNCHER), "--launch-immediately"], env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        _wait_root_property(self.display, "AT_SPI_BUS", START_TIMEOUT_S)
        return {"DBUS_SESSION_BUS_ADDRESS": self.address, **APP_ENV}

    def stop(self) -> None:
        for proc in reversed(self.procs):
            kill_group(proc)
        self.procs = []


def _read_line(fd: int, timeout_s: float) -> str:
    deadline, buf = time.monotonic() + timeout_s, b""
    while not buf.endswith(b"\n") and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.05)
        if ready:
            chunk = os.read(fd, 256)
            if not chunk:
                break
            buf += chunk
    return buf.decode(errors="replace").strip()


def announced(display: str) -> bool:
    """Whether the display names an AT-SPI bus on its root window: without one no app publishes a
    tree there (a reader still answers, with an empty tree)."""
    return _wait_root_property(display, "AT_SPI_BUS", ANNOUNCED_CHECK_S)


def _wait_root_property(display: str, name: str, timeout_s: float) -> bool:
    """Apps started before the launcher published its address would run without a tree."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            out = subprocess.run(["xprop", "-root", name], env={**os.environ, "DISPLAY": display},
                                 capture_output=True, text=True, timeout=2.0).stdout
        except (OSError, subprocess.TimeoutExpired):
            return False
        if "=" in out:
            return True
        time.sleep(0.05)
    return False
