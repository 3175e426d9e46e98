"""A sandbox: a display (our own Xvfb, or an existing one when asked), the task's setup steps
run in it, and a teardown that leaves no process behind.

    with Sandbox(screen=(1280, 800), workdir=wd, cwd=task.base_dir) as sb:
        sb.run_setup(task.setup)   # launch apps, wait for their windows
        ...                        # drive sb.display; call sb.check_apps() now and then
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from sandbox.a11y import A11yBus
from sandbox.errors import SandboxError
from sandbox.setup import SetupStep, expand
from sandbox.display import Xvfb
from sandbox.procs import describe, kill_group, spawn
from sandbox.windows import display_size, find_windows

WINDOW_POLL_S = 0.1
STDERR_TAIL_CHARS = 300  # how much of a failed command's stderr goes into the one-line error


@dataclass
class App:
    """A program launched by setup, left running until teardown."""

    argv: list[str]
    proc: subprocess.Popen
    log: Path  # its stdout and stderr

    @property
    def name(self) -> str:
        return describe(self.argv)

    def last_line(self) -> str:
        try:
            lines = self.log.read_text(encoding="utf-8", errors="replace").strip().splitlines()
        except OSError:
            return ""
        return lines[-1].strip()[:STDERR_TAIL_CHARS] if lines else ""

    def died(self) -> bool:
        """Exited with an error or by a signal. Exit 0 counts as a normal end (the task may
        close the app; some launchers hand off to another process and return)."""
        code = self.proc.poll()
        return code is not None and code != 0

    def death_message(self, before_window: str | None = None) -> str:
        when = f" before window '{before_window}' appeared" if before_window else ""
        tail = self.last_line()
        return (f"app '{self.name}' exited with code {self.proc.returncode}{when}"
                + (f": {tail}" if tail else ""))


class Sandbox:
    def __init__(self, screen: tuple[int, int] = (1280, 800), display: str | None = None,
                 workdir: Path | None = None, cwd: Path | None = None):
        self.screen = screen
        self.display = display  # None: start our own Xvfb in __enter__
        self.workdir = Path(workdir) if workdir else Path.cwd()
        self.cwd = Path(cwd) if cwd else Path.cwd()
        self.xvfb: Xvfb | None = None
        self.a11y: A11yBus | None = None  # our display's accessibility bus (apps publish their widgets)
        self.a11y_env: dict[str, str] = {}
        self.apps: list[App] = []

    # -- lifecycle --------------------------------------------------------------------------
    def __enter__(self) -> "Sandbox":
        try:
            if self.display is None:
                self.xvfb = Xvfb(self.screen)
                self.display = self.xvfb.start()
                self.a11y = A11yBus(self.display)
                self.a11y_env = self.a11y.start()
            else:
                self.screen = display_size(self.display)  # also fails early if it is unreachable
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Kill every launched process group, then the Xvfb we started. Idempotent."""
        # Mask Ctrl-C / SIGTERM while tearing down: a second Ctrl-C must not leave orphans.
        with _signals_deferred():
            for app in reversed(self.apps):
                kill_group(app.proc)
            if self.a11y is not None:
                self.a11y.stop()
            if self.xvfb is not None:
                self.xvfb.stop()

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, **self.a11y_env, "DISPLAY": self.display or ""}

    # -- setup ------------------------------------------------------------------------------
    def run_setup(self, steps: list[SetupStep]) -> None:
        for step in steps:
            if step.launch:
                self.launch([expand(a, self.workdir) for a in step.launch])
            if step.run:
                self.run([expand(a, self.workdir) for a in step.run], timeout_s=step.timeout_s)
            if step.wait_for_window:
                self.wait_for_window(step.wait_for_window, timeout_s=step.timeout_s)
            if step.sleep:
                self._sleep(step.sleep)

    def launch(self, argv: list[str]) -> App:
        """Start a program on the display, left running; its output goes to a log in workdir."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = self.workdir / f"app{len(self.apps) + 1}-{_slug(argv)}.log"
        # Deferred signals: a Ctrl-C between spawn and append would leave an untracked app.
        with open(log, "wb") as out, _signals_deferred():
            try:
                proc = spawn(argv, cwd=self.cwd, env=self.env, stdin=subprocess.DEVNULL,
                             stdout=out, stderr=subprocess.STDOUT)
            except OSError as e:
                raise SandboxError(f"cannot launch '{describe(argv)}': {e.strerror}") from None
            app = App(argv, proc, log)
            self.apps.append(app)
        return app

    def run(self, argv: list[str], timeout_s: float = 60.0) -> None:
        """Run a command to completion on the display; non-zero exit -> SandboxError."""
        try:
            proc = spawn(argv, cwd=self.cwd, env=self.env, stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        except OSError as e:
            raise SandboxError(f"cannot run '{describe(argv)}': {e.strerror}") from None
        try:
            _, err = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            kill_group(proc)
            raise SandboxError(f"setup command '{describe(argv)}' did not finish in {timeout_s:g} s") from None
        except BaseException:
            kill_group(proc)
            raise
        if proc.returncode != 0:
            tail = " ".join(err.decode(errors="replace").split())[-STDERR_TAIL_CHARS:]
            raise SandboxError(f"setup command '{describe(argv)}' exited with code {proc.returncode}"
                               + (f": {tail}" if tail else ""))

    def wait_for_window(self, title_regex: str, timeout_s: float = 20.0) -> None:
        """Poll until a visible window's title matches; fail fast when a launched app dies."""
        try:
            re.compile(title_regex)
        except re.error as e:
            raise SandboxError(f"bad window title regex {title_regex!r}: {e}") from None
        deadline = time.monotonic() + timeout_s
        while True:
            if find_windows(self.display, title_regex):
                return
            for app in self.apps:
                if app.died():
                    raise SandboxError(app.death_message(before_window=title_regex))
            if time.monotonic() >= deadline:
                ended = [a for a in self.apps if a.proc.poll() is not None]
                note = f" (app '{ended[0].name}' had exited with code 0)" if ended else ""
                raise SandboxError(f"window '{title_regex}' did not appear on {self.display} "
                                   f"within {timeout_s:g} s{note}")
            time.sleep(WINDOW_POLL_S)

    def check_apps(self) -> None:
        """Raise SandboxError when a launched app has died (non-zero exit or a signal)."""
        for app in self.apps:
            if app.died():
                raise SandboxError(app.death_message())

    def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self.check_apps()
            time.sleep(min(left, WINDOW_POLL_S))


def _slug(argv: list[str]) -> str:
    """A file-name-safe hint of what a log belongs to: the module or program name."""
    name = argv[argv.index("-m") + 1] if "-m" in argv[:-1] else os.path.basename(argv[0])
    return re.sub(r"[^\w.-]", "_", name)[:40]


class _signals_deferred:
    """Hold SIGINT/SIGTERM during a critical section; re-deliver them afterwards."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __enter__(self):
        import threading
        self.active = threading.current_thread() is threading.main_thread()
        if self.active:
            self.old = signal.pthread_sigmask(signal.SIG_BLOCK, self.SIGNALS)
        return self

    def __exit__(self, *exc):
        if self.active:
            signal.pthread_sigmask(signal.SIG_SETMASK, self.old)


def terminate_on_sigterm() -> None:
    """Turn SIGTERM into KeyboardInterrupt in this (CLI) process, so `with Sandbox(...)`
    tears down on `kill` as it does on Ctrl-C. Call once from the main thread."""
    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, handler)
