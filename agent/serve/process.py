"""`vlagent serve` as a child process, for suites and tests:

    with ServeProcess("tiny-random", agents=2, log=path) as server:
        ... --backend openai --base-url server.base_url --model server.name ...

Ready means /health answers 200 (the model is loaded and the decode graphs captured). The server
dies with its parent (PR_SET_PDEATHSIG) and is stopped with its whole process group.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from agent.errors import VlagentError

READY_TIMEOUT_S = 600.0  # a cold GPU start (weights, graphs) takes ~30 s; a loaded CI machine longer
POLL_S = 0.25
PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
STOP_TIMEOUT_S = 10.0
VLAGENT = [sys.executable, "-c", "import sys; sys.argv[0] = 'vlagent'; from agent.cli import main; main()"]


def _stop_with(parent_pid: int):
    """preexec_fn: the server gets SIGTERM (a graceful stop) when its parent dies, even by SIGKILL."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)

    def setup() -> None:
        signal.pthread_sigmask(signal.SIG_SETMASK, [])  # an inherited mask would block the SIGTERM
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent_pid:  # the parent died between fork and prctl
            os._exit(1)

    return setup


def _last_line(log: Path) -> str:
    try:
        lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "no output"
    return lines[-1][:300] if lines else "no output"


class ServeProcess:
    def __init__(self, model: str, agents: int, log: Path, *, context: int | None = None,
                 screen: str | None = None, history: int | None = None, port: int | None = None,
                 ready_timeout_s: float = READY_TIMEOUT_S, env: dict | None = None, api_key: str | None = None):
        """`api_key`: the server requires it (passed in its environment, not on its command line,
        where `ps` shows it); its clients send it as VLAGENT_API_KEY."""
        from agent.backends.vllm_server import free_port

        self.name, self.agents, self.log = model, agents, Path(log)
        self.port = port or free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.args = ["serve", "--model", model, "--agents", str(agents), "--port", str(self.port)]
        for flag, value in (("--context", context), ("--screen", screen), ("--history", history)):
            if value is not None:
                self.args += [flag, str(value)]
        self.ready_timeout_s = ready_timeout_s
        self.env = {**os.environ, **(env or {})}
        self.env.pop("VLAGENT_SERVE_API_KEY", None)  # only the key given here, never one inherited by accident
        if api_key:
            self.env["VLAGENT_SERVE_API_KEY"] = api_key
        self.proc: subprocess.Popen | None = None
        self.error: str | None = None  # why it did not start

    def start(self) -> "ServeProcess":
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen([*VLAGENT, *self.args], stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=self.env, start_new_session=True,
                                         preexec_fn=_stop_with(os.getpid()))
        deadline = time.monotonic() + self.ready_timeout_s
        try:
            while not self._healthy():
                if self.poll() is not None:
                    raise VlagentError(f"vlagent serve did not start: {self.poll()}")
                if time.monotonic() > deadline:
                    raise VlagentError(f"vlagent serve was not ready within {self.ready_timeout_s:g} s "
                                       f"(log {self.log}: {_last_line(self.log)})")
                time.sleep(POLL_S)
        except BaseException as e:
            self.error = str(e) if isinstance(e, VlagentError) else f"did not start: {type(e).__name__}"
            self.stop()
            raise
        return self

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.base_url.removesuffix("/v1") + "/health", timeout=2.0) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def poll(self) -> str | None:
        """None while the server runs; else why it is gone (exit code and its last log line)."""
        if self.error:
            return self.error
        if self.proc is None or self.proc.poll() is None:
            return None
        return f"exited with code {self.proc.returncode} ({_last_line(self.log)})"

    def stop(self) -> None:
        if self.proc is None:
            return
        for sig, wait in ((signal.SIGTERM, STOP_TIMEOUT_S), (signal.SIGKILL, None)):
            try:
                os.killpg(self.proc.pid, sig)  # pgid == pid: start_new_session
            except (ProcessLookupError, PermissionError):
                break
            try:
                self.proc.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        self.proc.poll()  # reap it if it was already gone

    def __enter__(self) -> "ServeProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
