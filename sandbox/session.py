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
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from actions.patterns import PatternError, compile_pattern
from sandbox.a11y import A11yBus
from sandbox.errors import AppDied, SandboxError
from sandbox.setup import SetupStep, expand
from sandbox.display import Xvfb
from sandbox.procs import TAG_VAR, become_subreaper, describe, kill_group, kill_tagged, sandbox_tag, spawn
from sandbox.windows import display_size, list_windows

WINDOW_POLL_S = 0.1
PROGRESS_EVERY_S = 5.0  # a long setup wait says what it is waiting for this often
STDERR_TAIL_CHARS = 300  # how much of a failed command's stderr goes into the one-line error
# What apps, setup and check commands receive of vlagent's environment: what a program needs to run
# and find its files, never the rest (secrets, API keys, tokens). A task names more (Sandbox pass_env).
PASS_ENV = ("PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "TZ", "TMPDIR", "TERM",
            "PYTHONPATH", "VIRTUAL_ENV", "XDG_RUNTIME_DIR", "XDG_DATA_DIRS", "XDG_CONFIG_DIRS", "NO_AT_BRIDGE",
            "VLAGENT_SUITE_ITEM")  # the suite's mark on an item's processes: it ends what they leave


def clean_env(display: str, xauthority: str | None = None, pass_env=(), **extra: str) -> dict[str, str]:
    """The environment of what runs in a sandbox: PASS_ENV, the LC_* locale, `pass_env`, the display
    and its cookie, and `extra`."""
    env = {k: v for k, v in os.environ.items() if k in PASS_ENV or k.startswith("LC_") or k in pass_env}
    auth = xauthority or os.environ.get("XAUTHORITY")
    return {**env, **({"XAUTHORITY": auth} if auth else {}), "DISPLAY": display, **extra}


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


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class Sandbox:
    def __init__(self, screen: tuple[int, int] = (1280, 800), display: str | None = None,
                 workdir: Path | None = None, cwd: Path | None = None,
                 progress: Callable[[str], None] | None = _stderr, pass_env=()):
        self.progress = progress or (lambda line: None)  # setup's progress lines ("setup: ...")
        self.screen = screen
        self.display = display  # None: start our own Xvfb in __enter__
        self.workdir = Path(workdir) if workdir else Path.cwd()
        self.cwd = Path(cwd) if cwd else Path.cwd()
        self.xvfb: Xvfb | None = None
        self.a11y: A11yBus | None = None  # our display's accessibility bus (apps publish their widgets)
        self.a11y_env: dict[str, str] = {}
        self.apps: list[App] = []
        self.pass_env = tuple(pass_env)  # more variables the task passes to its apps (clean_env)
        self._watchdog: tuple[subprocess.Popen, int] | None = None  # (process, our end of its pipe)

    # -- lifecycle --------------------------------------------------------------------------
    def __enter__(self) -> "Sandbox":
        become_subreaper()  # a daemonizing app is re-parented to us, so we can end and reap it
        try:
            if self.display is None:
                self.xvfb = Xvfb(self.screen)
                self.display = self.xvfb.start()
                self._start_watchdog()
                self.a11y = A11yBus(self.display, clean_env(self.display, self.xvfb.xauthority, **{TAG_VAR: self.tag}))
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
            if self.display is not None:  # what left its process group (setsid, daemons) still has the tag
                kill_tagged(self.tag)
            if self.a11y is not None:
                self.a11y.stop()
            if self.xvfb is not None:
                self.xvfb.stop()
            if self._watchdog is not None:
                os.close(self._watchdog[1])  # EOF: it looks once more, finds nothing, and exits
                kill_group(self._watchdog[0])
                self._watchdog = None

    def _start_watchdog(self) -> None:
        """A process that outlives a kill -9 of ours just long enough to end this sandbox's processes
        (sandbox.watchdog); it is not spawned to die with us, which is its point."""
        rfd, wfd = os.pipe()
        try:
            proc = subprocess.Popen([sys.executable, "-m", "sandbox.watchdog", self.tag], stdin=rfd,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                                    env=clean_env("", None), cwd=Path(__file__).resolve().parent.parent)
        except OSError:
            os.close(wfd)
            return
        finally:
            os.close(rfd)
        self._watchdog = (proc, wfd)

    @property
    def tag(self) -> str:
        return sandbox_tag(self.display or "", self.workdir)

    @property
    def env(self) -> dict[str, str]:
        """What everything the sandbox starts gets: a clean environment (clean_env), its display and
        cookie, its accessibility bus, and its tag (procs.TAG_VAR)."""
        auth = self.xvfb.xauthority if self.xvfb is not None else None
        return clean_env(self.display or "", auth, self.pass_env, **self.a11y_env, **{TAG_VAR: self.tag})

    # -- setup ------------------------------------------------------------------------------
    def run_setup(self, steps: list[SetupStep]) -> None:
        for step in steps:
            if step.launch:
                argv = [expand(a, self.workdir, self.cwd) for a in step.launch]
                self.progress(f"setup: launching {describe(argv)[:120]}")
                self.launch(argv)
            if step.run:
                argv = [expand(a, self.workdir, self.cwd) for a in step.run]
                self.progress(f"setup: running {describe(argv)[:120]} (up to {step.timeout_s:g} s)")
                self.run(argv, timeout_s=step.timeout_s)
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
        """Poll until a visible window's title matches (RE2: linear time); fail fast when a launched
        app dies; say every few seconds what it waits for, and name the windows that did appear."""
        try:
            pattern = compile_pattern(title_regex)
        except PatternError as e:
            raise SandboxError(f"wait_for_window: {e}") from None
        start = time.monotonic()
        deadline, next_note = start + timeout_s, start + PROGRESS_EVERY_S
        self.progress(f"setup: waiting up to {timeout_s:g} s for a window titled '{title_regex}'")
        while True:
            titles = [w.title for w in list_windows(self.display)]
            if any(pattern.search(t) for t in titles):
                return
            for app in self.apps:
                if app.died():
                    raise SandboxError(app.death_message(before_window=title_regex))
            now = time.monotonic()
            seen = "; windows on screen: " + (", ".join(repr(t[:60]) for t in titles[:10]) if titles else "none")
            if now >= deadline:
                ended = [a for a in self.apps if a.proc.poll() is not None]
                note = f" (app '{ended[0].name}' had exited with code 0)" if ended else ""
                raise SandboxError(f"window '{title_regex}' did not appear on {self.display} "
                                   f"within {timeout_s:g} s{note}{seen}")
            if now >= next_note:
                self.progress(f"setup: still waiting for '{title_regex}' ({now - start:.0f} of {timeout_s:g} s){seen}")
                next_note = now + PROGRESS_EVERY_S
            time.sleep(WINDOW_POLL_S)

    def check_apps(self) -> None:
        """Raise SandboxError when a launched app has died (non-zero exit or a signal)."""
        for app in self.apps:
            if app.died():
                if not self.display_alive():  # the app died of its display: the sandbox's fault, not the app's
                    raise SandboxError(f"display {self.display} died ({app.death_message()})")
                raise AppDied(app.death_message())

    def display_alive(self) -> bool:
        """Our Xvfb still runs, or (a display we were given) its socket still answers."""
        if self.xvfb is not None:
            return self.xvfb.proc is not None and self.xvfb.proc.poll() is None
        number = (self.display or "").lstrip(":").split(".")[0]
        if not number.isdigit():
            return True  # not a local display: nothing to tell from here
        import socket

        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            try:
                s.connect(f"/tmp/.X11-unix/X{number}")
                return True
            except OSError:
                return False

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
