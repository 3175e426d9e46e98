"""vlagent against a real vLLM server (CPU build) serving the tiny random Qwen3-VL checkpoint.

The venv comes from .ci/vllm.sh. Without it these tests skip with the reason, except under CI
(env CI set), where a missing venv fails: the integration must not be skipped silently.
One server is shared by the module; the test that kills it runs last, and a later test that
needs it would start a fresh one.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from actions import Policy
from actions.parse import parse_action
from agent.backends.openai import OpenAIBackend
from agent.backends.qwen_images import image_tokens
from agent.task import load_task

ROOT = Path(__file__).resolve().parents[2]
VENV = Path(os.environ.get("VLAGENT_VLLM_VENV", ROOT / ".venv-vllm"))
TASK = ROOT / "tasks" / "fill_form.yaml"
VLAGENT = [sys.executable, "-c", "from agent.cli import main; main()"]
RUN_LIMIT_S = 300  # a run that takes longer than this has hung
FIRST_STEP_LIMIT_S = 180

pytestmark = pytest.mark.slow


class Servers:
    """Hands out the running server, starting one when there is none (or it was killed)."""

    def __init__(self, logs: Path):
        self.logs = logs
        self.server = None
        self.started = 0

    def get(self):
        from agent.backends.tiny import tiny_checkpoint
        from agent.backends.vllm_server import VLLMServer

        if self.server is None or self.server.proc.poll() is not None:
            if self.server is not None:
                self.server.stop()
            self.started += 1
            self.server = VLLMServer(tiny_checkpoint(), VENV, log=self.logs / f"vllm-{self.started}.log").start()
            print(f"\nvLLM ready in {self.server.start_s:.1f} s at {self.server.base_url}", file=sys.stderr)
        return self.server

    def stop(self):
        if self.server is not None:
            self.server.stop()


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    if not (VENV / "bin" / "vllm-serve").exists():
        reason = f"no vLLM venv at {VENV}: run .ci/vllm.sh to create it"
        if os.environ.get("CI"):
            pytest.fail(f"{reason} (CI must run the vLLM integration tests, not skip them)")
        pytest.skip(reason)
    holder = Servers(tmp_path_factory.mktemp("vllm"))
    yield holder
    holder.stop()


def vlagent_run(server, trace: Path, *extra: str, task: Path = TASK) -> list[str]:
    return [*VLAGENT, "run", str(task), "--backend", "openai", "--base-url", server.base_url,
            "--model", server.model, "--trace", str(trace), "--json", *extra]


def endless_task(folder: Path, name: str = "fill_form") -> Path:
    """The form task with no way to finish (no terminate, no answer), so that a random model is still
    at work when the server dies, whatever its weights answer."""
    import yaml

    task = yaml.safe_load(TASK.read_text())
    task.update(name=name, max_steps=200, timeout_s=600,
                allow={"actions": ["left_click", "type", "key", "wait", "mouse_move", "scroll"]})
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(task))
    return path


def steps(trace: Path) -> list[dict]:
    path = trace / "steps.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def screenshot(width: int, height: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(1).integers(0, 255, (height, width, 3), dtype=np.uint8))


def form_screenshot(width: int = 1280, height: int = 800) -> Image.Image:
    """A screen like the form app's: flat colours and text, which PNG compresses as it does real ones."""
    from PIL import ImageDraw

    image = Image.new("RGB", (width, height), (217, 217, 217))
    draw = ImageDraw.Draw(image)
    for i, label in enumerate(("Name", "Email", "Plan", "Subscribe to newsletter", "Submit")):
        draw.text((420, 200 + 60 * i), label, fill="black")
        draw.rectangle((560, 195 + 60 * i, 860, 220 + 60 * i), outline="gray", fill="white")
    return image


def test_server_counts_image_tokens_like_the_local_processor(servers):
    server = servers.get()
    backend = OpenAIBackend(server.model, server.base_url)
    for width, height in ((1280, 800), (1000, 700)):
        counts = backend.compare_image_tokens(screenshot(width, height))
        # image_tokens is the local processor's count; (1280, 800) is 40 x 25 merged patches + 2
        assert counts == (image_tokens(width, height, backend.image_config),) * 2
    assert backend.compare_image_tokens(screenshot(1280, 800))[1] == 1002


def test_every_reply_is_a_valid_action_for_the_policy(servers):
    """Structured output: the random model's replies are schema- and policy-valid actions."""
    server = servers.get()
    backend = OpenAIBackend(server.model, server.base_url)
    policy = Policy(load_task(TASK).allow)
    messages = [{"role": "system", "content": [{"type": "text", "text": "You are a GUI agent."}]},
                {"role": "user", "content": [{"type": "image", "image": screenshot(1280, 800)},
                                             {"type": "text", "text": "Fill in the form."}]}]
    for _ in range(3):
        action = policy.check(parse_action(backend.generate(messages, policy)))
        assert action.action in policy.actions


def test_vlagent_run_end_to_end_through_vllm(servers, tmp_path):
    """`vlagent run` on the form task, every step through the server: a status, a full trace."""
    server = servers.get()
    trace = tmp_path / "trace"
    proc = subprocess.run(vlagent_run(server, trace, "--max-steps", "3"), capture_output=True, text=True,
                          timeout=RUN_LIMIT_S, cwd=ROOT)
    assert proc.returncode == 1, proc.stderr[-2000:]  # a random model does not fill the form
    result = json.loads(proc.stdout)
    assert result["status"] in ("failed", "invalid_output"), result["reason"]
    assert result["model"] == f"openai:{server.model}@{server.base_url}"
    log = steps(trace)
    assert 1 <= len(log) <= 3
    for step in log:
        assert step["raw"], step
        parse_action(step["raw"])  # the server's structured output always parses
        assert (trace / step["screenshot"]).is_file()
    assert (trace / "result.json").is_file()


def _step_request(server, policy: Policy):
    backend = OpenAIBackend(server.model, server.base_url)
    messages = [{"role": "system", "content": [{"type": "text", "text": "You are a GUI agent."}]},
                {"role": "user", "content": [{"type": "image", "image": form_screenshot()},
                                             {"type": "text", "text": "Fill in the form."}]}]
    backend.generate(messages, policy)  # the one-time checks and the schema compile, not measured
    return lambda: backend.generate(messages, policy)


def test_bench_step_request(servers, benchmark):
    """One agent step's request: a 1280x800 screenshot in, a constrained action out."""
    policy = Policy(load_task(TASK).allow)
    step = _step_request(servers.get(), policy)
    reply = benchmark.pedantic(step, rounds=8, warmup_rounds=1)
    assert policy.check(parse_action(reply))


def test_bench_four_concurrent_step_requests(servers, benchmark):
    """Four agents' requests at once: compare with 4 x test_bench_step_request for batching."""
    from concurrent.futures import ThreadPoolExecutor

    policy = Policy(load_task(TASK).allow)
    step = _step_request(servers.get(), policy)
    with ThreadPoolExecutor(4) as pool:
        replies = benchmark.pedantic(lambda: list(pool.map(lambda _: step(), range(4))), rounds=4, warmup_rounds=1)
    assert len(replies) == 4 and all(policy.check(parse_action(r)) for r in replies)


def kill_server_once(server, proc: subprocess.Popen, ready, why: str) -> tuple[str, str]:
    """Kill the server once ready() holds, then wait for proc's (stdout, stderr). Whatever fails, proc
    is stopped: SIGTERM first, so that vlagent tears its sandboxes down."""
    try:
        deadline = time.monotonic() + FIRST_STEP_LIMIT_S
        while not ready() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert ready(), why
        server.kill()
        return proc.communicate(timeout=RUN_LIMIT_S)
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def test_killed_server_ends_the_run_with_error(servers, tmp_path):
    """SIGKILL the server while `vlagent run` is mid-task: status error, a clear reason, no hang."""
    server = servers.get()
    trace = tmp_path / "trace"
    proc = subprocess.Popen(vlagent_run(server, trace, task=endless_task(tmp_path)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    out, err = kill_server_once(server, proc, lambda: bool(steps(trace)), "the run made no step before the server was killed")
    assert proc.returncode == 1, err[-2000:]
    result = json.loads(out)
    assert result["status"] == "error"
    assert result["reason"] == f"cannot reach {server.base_url}: connection refused"
    assert json.loads((trace / "result.json").read_text())["status"] == "error"


def test_killed_server_ends_every_running_suite_task_with_error(servers, tmp_path):
    """`vlagent suite --workers 2` against the server, killed while both agents run: every task
    ends with status error and the reason, and the suite exits."""
    server = servers.get()
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    for name in ("form_a", "form_b"):
        endless_task(tasks, name)
    out = tmp_path / "out"
    cmd = [*VLAGENT, "suite", str(tasks), "--workers", "2", "--backend", "openai", "--base-url", server.base_url,
           "--model", server.model, "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)

    def started() -> int:
        return sum(1 for p in out.rglob("steps.jsonl") if "workdir" not in p.parts and p.read_text().strip())

    output, _ = kill_server_once(server, proc, lambda: started() == 2, "both agents should be running when the server dies")
    assert proc.returncode == 1, output[-2000:]
    results = [json.loads(p.read_text()) for p in out.rglob("result.json") if "workdir" not in p.parts]
    assert sorted(r["task"] for r in results) == ["form_a", "form_b"]
    for r in results:
        assert r["status"] == "error" and r["reason"] == f"cannot reach {server.base_url}: connection refused", r
