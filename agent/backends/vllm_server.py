"""Start and stop a local vLLM server (the CPU build from .ci/vllm.sh) for tests and benchmarks.

    with VLLMServer(tiny_checkpoint(), venv=Path(".venv-vllm")) as server:
        backend = OpenAIBackend(server.model, server.base_url)

Ready means healthy AND one real chat request answered: /health turns green before the engine
has run a forward pass, and some failures (an attention kernel the CPU build lacks) only show then.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from agent.errors import VlagentError

READY_TIMEOUT_S = 300.0  # cold start on 2 cores is ~35 s; a loaded CI machine can be much slower
POLL_S = 0.5
STOP_TIMEOUT_S = 15.0  # SIGTERM to the process group stops it in ~8 s; then SIGKILL
LOG_TAIL_LINES = 15
# Flags that work for the tiny checkpoint on vLLM's CPU backend (../shared/notes/vllm-cpu.md).
CPU_FLAGS = (
    "--dtype", "bfloat16", "--max-model-len", "16384", "--max-num-seqs", "4",
    "--limit-mm-per-prompt", '{"image": 4, "video": 0}', "--skip-mm-profiling", "--enforce-eager",
    "--structured-outputs-config", '{"backend": "xgrammar", "disable_any_whitespace": true}',
)
CPU_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1",
           "DO_NOT_TRACK": "1", "TOKENIZERS_PARALLELISM": "false"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class VLLMServer:
    def __init__(self, model_dir: str | Path, venv: str | Path, *, served_name: str = "tiny-qwen3-vl",
                 port: int | None = None, log: str | Path | None = None, extra_args: tuple[str, ...] = (),
                 ready_timeout_s: float = READY_TIMEOUT_S):
        self.model_dir = Path(model_dir)
        self.venv = Path(venv)
        self.model = served_name
        self.port = port or free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.log = Path(log) if log else Path(os.environ.get("TMPDIR", "/tmp")) / f"vlagent-vllm-{self.port}.log"
        self.extra_args = tuple(extra_args)
        self.ready_timeout_s = ready_timeout_s
        self.proc: subprocess.Popen | None = None
        self.start_s: float | None = None  # seconds from launch to ready

    def command(self) -> list[str]:
        serve = self.venv / "bin" / "vllm-serve"
        if not serve.exists():
            raise VlagentError(f"no vLLM venv at {self.venv} (run .ci/vllm.sh to create it)")
        return [str(serve), str(self.model_dir), "--served-model-name", self.model,
                "--host", "127.0.0.1", "--port", str(self.port), *CPU_FLAGS, *self.extra_args]

    def start(self) -> "VLLMServer":
        cmd = self.command()
        env = {**os.environ, **CPU_ENV}
        env.pop("DISPLAY", None)
        t0 = time.monotonic()
        with open(self.log, "wb") as out:
            # Own process group: the API server spawns engine workers; stop() signals them all.
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=env, start_new_session=True)
        try:
            self._wait_ready(t0 + self.ready_timeout_s)
        except BaseException:
            self.stop()
            raise
        self.start_s = time.monotonic() - t0
        return self

    def _wait_ready(self, deadline: float) -> None:
        while not self._get("/health"):
            self._check_alive()
            if time.monotonic() > deadline:
                raise VlagentError(f"vLLM was not healthy within {self.ready_timeout_s:g} s; {self._tail()}")
            time.sleep(POLL_S)
        body = {"model": self.model, "max_tokens": 2, "messages": [{"role": "user", "content": "Hi"}]}
        req = urllib.request.Request(f"{self.base_url}/chat/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=max(deadline - time.monotonic(), 1.0)) as r:
                json.load(r)
        except (urllib.error.URLError, OSError) as e:
            self._check_alive()
            raise VlagentError(f"vLLM is healthy but failed its first request ({e}); {self._tail()}") from None

    def _get(self, path: str) -> bool:
        url = self.base_url.removesuffix("/v1") + path
        try:
            with urllib.request.urlopen(url, timeout=2.0) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def _check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise VlagentError(f"vLLM exited with code {self.proc.returncode} while starting; {self._tail()}")

    def _tail(self) -> str:
        try:
            lines = self.log.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
        except OSError:
            lines = []
        return f"log {self.log}:\n" + "\n".join(lines)

    def kill(self) -> None:
        """Kill the server at once, as a crash would (SIGKILL to its whole process group)."""
        self._signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            self._signal(signal.SIGKILL)  # stray workers of a dead server
            return
        self._signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self._signal(signal.SIGKILL)
            self.proc.wait()
        self._signal(signal.SIGKILL)  # workers that outlived the API server

    def _signal(self, sig: int) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, sig)  # pgid == pid: start_new_session
        except (ProcessLookupError, PermissionError):
            pass

    def __enter__(self) -> "VLLMServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


if __name__ == "__main__":  # python -m agent.backends.vllm_server [VENV]: serve the tiny model until Ctrl-C
    from agent.backends.tiny import tiny_checkpoint

    with VLLMServer(tiny_checkpoint(), sys.argv[1] if len(sys.argv) > 1 else ".venv-vllm") as srv:
        print(f"serving {srv.model} at {srv.base_url} (ready in {srv.start_s:.1f} s; log {srv.log})", flush=True)
        try:
            srv.proc.wait()
        except KeyboardInterrupt:
            pass
