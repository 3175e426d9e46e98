"""Faults that used to end wrong, seen from outside through the CLI (issue 22, item 6): a kill -9 of
vlagent, Ctrl-C twice while it cleans up, a display killed during setup, a lone surrogate from a
server; and the CLI's answer to bad bytes."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.timeout(240)
ROOT = Path(__file__).resolve().parents[2]
NOTES = {"launch": ["{python}", "-m", "sandbox.apps.notes", "--out", "{workdir}/n.json"], "wait_for_window": "Notes"}


def call(action: str, **args) -> str:
    return '<tool_call>{"name": "computer_use", "arguments": %s}</tool_call>' % json.dumps({"action": action, **args})


def start(tmp_path: Path, task: dict, replies, *extra) -> subprocess.Popen:
    task = {"name": "t", "goal": "fault test", "screen": {"width": 800, "height": 600}, "max_steps": 30,
            "timeout_s": 60, **task}
    (tmp_path / "task.yaml").write_text(yaml.safe_dump(task))
    (tmp_path / "replies.yaml").write_text(yaml.safe_dump(replies))
    model = extra[0] if extra else f"script:{tmp_path / 'replies.yaml'}"
    return subprocess.Popen([sys.executable, "-m", "agent.cli", "run", str(tmp_path / "task.yaml"), "--model", model,
                             "--trace", str(tmp_path / "trace"), *extra[1:]], cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    return dict(kv.split("=", 1) for kv in raw.decode(errors="replace").split("\0") if "=" in kv)


def processes_with(var: str, prefix: str) -> list[tuple[int, str]]:
    out = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and environ(int(entry.name)).get(var, "").startswith(prefix):
            try:
                out.append((int(entry.name), Path(f"/proc/{entry.name}/comm").read_text().strip()))
            except OSError:
                pass
    return out


def wait_steps(tmp_path: Path, run: subprocess.Popen) -> None:
    deadline = time.monotonic() + 60
    steps = tmp_path / "trace" / "steps.jsonl"
    while not (steps.exists() and steps.read_text().strip()):
        assert time.monotonic() < deadline and run.poll() is None, run.communicate()[1][-1500:]
        time.sleep(0.2)


@pytest.mark.slow
def test_kill_9_of_vlagent_leaves_no_process_of_its_sandbox(tmp_path):
    run = start(tmp_path, {"setup": [NOTES]}, [call("wait", time=1)] * 30)
    wait_steps(tmp_path, run)
    mine = processes_with("VLAGENT_SANDBOX", f"{run.pid}:")
    display = next(environ(pid)["DISPLAY"] for pid, _ in mine)
    # the session bus, the accessibility launcher and its own bus: this sandbox's, by display and parentage
    buses = [p for p in processes_with("DISPLAY", display) if environ(p[0]).get("DISPLAY") == display
             and p[1] in ("dbus-daemon", "at-spi-bus-laun") and _descends(p[0], run.pid)]
    assert len(buses) >= 2, (mine, buses)
    os.kill(run.pid, signal.SIGKILL)
    run.communicate()
    deadline = time.monotonic() + 40  # the watchdog is a fresh interpreter on a loaded machine
    while time.monotonic() < deadline:
        left = processes_with("VLAGENT_SANDBOX", f"{run.pid}:") + [p for p in buses if Path(f"/proc/{p[0]}").exists()
                                                                    and _state(p[0]) != "Z"]
        if not left:
            break
        time.sleep(0.3)
    assert not left, left


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"


def _descends(pid: int, ancestor: int) -> bool:
    for _ in range(16):
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError):
            return False
        if pid == ancestor:
            return True
        if pid <= 1:
            return False
    return False


@pytest.mark.slow
@pytest.mark.parametrize("delay", [0.0, 0.3, 1.0])
def test_a_second_ctrl_c_while_cleaning_up_exits_130(tmp_path, delay):
    run = start(tmp_path, {"setup": [NOTES]}, [call("wait", time=1)] * 30)
    wait_steps(tmp_path, run)
    run.send_signal(signal.SIGINT)
    time.sleep(delay)
    run.send_signal(signal.SIGINT)
    _, err = run.communicate(timeout=60)
    assert run.returncode == 130 and "Traceback" not in err, err[-1500:]


@pytest.mark.slow
@pytest.mark.parametrize("setup", [[{**NOTES, "wait_for_window": "Never", "timeout_s": 30}], [NOTES, {"sleep": 20}]])
def test_a_display_killed_during_setup_ends_error(tmp_path, setup):
    """The display dies while setup waits for a window, or sleeps after the app came up (the app then
    dies of it: that is the display's fault, not a crash of the app under test)."""
    run = start(tmp_path, {"setup": setup}, [])
    deadline = time.monotonic() + 30
    while not processes_with("VLAGENT_SANDBOX", f"{run.pid}:"):  # setup has launched the app
        assert time.monotonic() < deadline and run.poll() is None, "setup never launched its app"
        time.sleep(0.2)
    xvfb = [pid for pid in _children_of(run.pid) if _comm(pid) == "Xvfb"]  # this run's own display, no other
    assert len(xvfb) == 1, xvfb
    time.sleep(0.5)
    os.kill(xvfb[0], signal.SIGKILL)
    _, err = run.communicate(timeout=90)
    result = json.loads((tmp_path / "trace" / "result.json").read_text())
    assert result["status"] == "error" and run.returncode == 1, (result["status"], result["reason"], err[-800:])


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _children_of(parent: int) -> list[int]:
    out = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if int(Path(f"/proc/{entry.name}/stat").read_text().rsplit(")", 1)[1].split()[1]) == parent:
                    out.append(int(entry.name))
            except (OSError, ValueError):
                continue
    return out


class _Surrogate(BaseHTTPRequestHandler):
    def do_GET(self):  # /v1/models
        body = b'{"object": "list", "data": [{"id": "m", "object": "model"}]}'
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        body = b'{"choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", ' \
               b'"content": "<tool_call>{\\"name\\": \\"computer_use\\", \\"arguments\\": {\\"action\\": \\"type\\", ' \
               b'\\"text\\": \\"a\\ud800b\\"}}</tool_call>"}}]}'
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass


@pytest.mark.slow
def test_a_lone_surrogate_from_a_server_ends_invalid_output(tmp_path):
    server = HTTPServer(("127.0.0.1", 0), _Surrogate)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        run = start(tmp_path, {"setup": [NOTES], "success": [{"file_contains": {"path": "{workdir}/n.json", "text": "x"}}]},
                    [], "m", "--backend", "openai", "--base-url", f"http://127.0.0.1:{server.server_port}/v1")
        _, err = run.communicate(timeout=120)
    finally:
        server.shutdown()
    result = json.loads((tmp_path / "trace" / "result.json").read_text())
    assert result["status"] == "invalid_output", (result["status"], result["reason"], err[-800:])


def test_check_action_given_invalid_utf8_is_one_line():
    done = subprocess.run([sys.executable, "-m", "agent.cli", "check-action", "-"], input=b"\xff\xfe<tool_call>\x80",
                          cwd=ROOT, capture_output=True, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})
    err = done.stderr.decode(errors="replace").strip()
    assert done.returncode in (1, 2) and "Traceback" not in err and len(err.splitlines()) == 1, err
