"""Faults a suite must survive, each on real sandboxes (Xvfb, Tk apps, pyautogui input): an app
that crashes mid-run, one that hangs, a display killed mid-run, a model backend that raises or
never answers, and Ctrl-C on the whole suite. Each ends with a status, a complete trace, and no
process left behind (checked through a token in the environment every descendant inherits)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from agent.suite.runner import Options, discover, run_suite
from agent.trace import load_steps
from processes import alive_with

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]

# What `vlagent run TASK --model M --trace DIR` does, with two extra models for the backend faults
# (`raise`: BackendError on the second call; `hang`: never answers).
RUNNER = textwrap.dedent("""
    import signal, sys, time
    from pathlib import Path
    from agent.backends.base import BackendBase
    from agent.backends.script import ScriptBackend
    from agent.errors import BackendError
    from agent.run.runner import run_task
    from agent.task import load_task

    WAIT = '<tool_call>{"name": "computer_use", "arguments": {"action": "wait", "time": 0.5}}</tool_call>'

    class Raising(BackendBase):
        name, calls = "raising", 0
        def generate(self, messages, policy=None):
            self.calls += 1
            if self.calls > 1:
                raise BackendError("the model server went away")
            return WAIT

    class Hanging(BackendBase):
        name = "hanging"
        def generate(self, messages, policy=None):
            time.sleep(600)

    def interrupt(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, interrupt)
    task, trace, model = sys.argv[1:4]
    backend = {"raise": Raising, "hang": Hanging}.get(model)
    backend = backend() if backend else ScriptBackend.from_file(model.removeprefix("script:"))
    try:
        result, _ = run_task(load_task(task), backend, trace_dir=Path(trace))
    except KeyboardInterrupt:
        sys.exit(130)
    sys.exit(0 if result.status == "success" else 1)
""")

WAIT = '<tool_call>{"name": "computer_use", "arguments": {"action": "wait", "time": 1}}</tool_call>'
WAIT_09 = WAIT.replace('"time": 1', '"time": 0.9')  # alternating waits: a long run, not a loop
DONE = '<tool_call>{"name": "computer_use", "arguments": {"action": "terminate", "status": "success"}}</tool_call>'
# Kills this sandbox's own Xvfb (found by the suite's marker, which it inherits) after a delay.
KILL_DISPLAY = textwrap.dedent("""
    import os, signal, time
    time.sleep(1.5)
    mine = os.environ["VLAGENT_SUITE_ITEM"].encode()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            comm = open(f"/proc/{pid}/comm").read().strip()
            env = open(f"/proc/{pid}/environ", "rb").read().split(b"\\0")
        except OSError:
            continue
        if comm == "Xvfb" and b"VLAGENT_SUITE_ITEM=" + mine in env:
            os.kill(int(pid), signal.SIGKILL)
""")

TASKS = {
    "app_crash": dict(
        setup=[{"launch": ["{python}", "-m", "sandbox.apps.crash", "--after", "2.5"], "wait_for_window": "Crash"}],
        success=[{"window_title": "Crash"}], replies=[WAIT, WAIT_09] * 3 + [DONE]),
    "app_hang": dict(  # the app freezes and ignores SIGTERM; the run's own timeout ends it
        setup=[{"launch": ["{python}", "-m", "sandbox.apps.hang", "--after", "0.5", "--ignore-term"],
                "wait_for_window": "Hang"}],
        success=[{"screen_text": "never shown"}], timeout_s=6,
        replies=['<tool_call>{"name": "computer_use", "arguments": {"action": "left_click", "coordinate": [300, 400]}}</tool_call>']
        + [WAIT, WAIT_09] * 10),  # alternating: not a loop, so the run's timeout ends it
    "display_killed": dict(
        setup=[{"launch": ["{python}", "-m", "sandbox.apps.notes", "--out", "{workdir}/n.json"], "wait_for_window": "Notes"},
               {"launch": ["{python}", "-c", KILL_DISPLAY]}],
        success=[{"screen_text": "Saved"}], replies=[WAIT] * 10 + [DONE]),
    "model_raises": dict(
        setup=[{"launch": ["{python}", "-m", "sandbox.apps.notes", "--out", "{workdir}/n.json"], "wait_for_window": "Notes"}],
        success=[{"screen_text": "Saved"}], model="raise"),
    "model_hangs": dict(
        setup=[{"launch": ["{python}", "-m", "sandbox.apps.notes", "--out", "{workdir}/n.json"], "wait_for_window": "Notes"}],
        success=[{"screen_text": "Saved"}], timeout_s=4, model="hang"),
}


def write_task(folder: Path, name: str, spec: dict) -> Path:
    import yaml

    task = {"name": name, "goal": f"fault test {name}", "screen": {"width": 800, "height": 600},
            "setup": spec["setup"], "max_steps": 30, "timeout_s": spec.get("timeout_s", 40),
            "success": spec["success"]}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(task, sort_keys=False))
    (folder / f"{name}.replies.yaml").write_text(yaml.safe_dump(spec.get("replies", [DONE])))
    (folder / f"{name}.model").write_text(spec.get("model", f"script:{folder / name}.replies.yaml"))
    return path


def runner_command(script: Path):
    def command(item, trace, opts):
        model = (item.path.parent / f"{item.path.stem}.model").read_text()
        return [sys.executable, str(script), str(item.path), str(trace), model]
    return command


@pytest.fixture(scope="module")
def faults(tmp_path_factory):
    """All the per-item faults in one suite of two workers (they must not disturb each other)."""
    tmp = tmp_path_factory.mktemp("faults")
    suite = tmp / "suite"
    suite.mkdir()
    for name, spec in TASKS.items():
        write_task(suite, name, spec)
    script = tmp / "runner.py"
    script.write_text(RUNNER)
    token = uuid.uuid4().hex
    _, items = discover([suite])
    opts = Options(timeout_s=60, extra_env={"TEST_TOKEN": token, "PYTHONPATH": str(ROOT)})
    outcomes, interrupted = run_suite(items, tmp / "out", opts, workers=2, command=runner_command(script))
    assert not interrupted
    return {o.item.name: o for o in outcomes}, token


def assert_complete(outcome) -> dict:
    result = json.loads((outcome.trace / "result.json").read_text())
    assert result["status"] == outcome.status
    load_steps(outcome.trace)  # every line parses
    return result


def test_no_process_survives_any_fault(faults):
    outcomes, token = faults
    assert alive_with(token) == []
    # The runs ended by themselves tore their own sandboxes down: the suite had nothing to sweep.
    assert {n: o.swept for n, o in outcomes.items()} == {n: [] for n in outcomes}


def test_app_crash_mid_run_is_noticed_at_the_next_step(faults):
    o = faults[0]["app_crash"]  # crashes 2.5 s in; steps take about 1 s; 7 replies were scripted
    assert o.status == "failed" and "the run stopped at the next step" in o.reason, o.reason  # a finding about the app
    assert "exited with code 3" in o.reason
    assert 1 <= o.steps <= 4, o.steps
    assert_complete(o)


def test_app_hang(faults):
    o = faults[0]["app_hang"]
    assert o.status == "timeout", o.reason
    assert "timed out after 6 s" in o.reason
    assert o.steps >= 2
    assert_complete(o)


def test_display_killed_mid_run(faults):
    o = faults[0]["display_killed"]
    assert o.status == "error", o.reason
    assert "display" in o.reason.lower()
    assert_complete(o)


def test_model_backend_raises(faults):
    o = faults[0]["model_raises"]
    assert o.status == "error"
    assert "the model server went away" in o.reason
    assert o.steps == 1  # the step before the failure is in the trace
    assert_complete(o)


def test_model_backend_never_answers(faults):
    o = faults[0]["model_hangs"]
    assert o.status == "timeout"
    assert "waiting for the model" in o.reason
    steps = load_steps(o.trace)
    assert steps and steps[-1].error == "the model did not answer before the run's deadline"
    assert_complete(o)


DRIVER = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    sys.path[:0] = [sys.argv[3], str(Path(sys.argv[3]).parent)]  # this test's folder, and tests/ (processes.py)
    from test_faults import runner_command
    from agent.suite.runner import Options, discover, run_suite
    _, items = discover([sys.argv[1]])
    outcomes, interrupted = run_suite(items, Path(sys.argv[2]), Options(timeout_s=120), workers=2,
                                      command=runner_command(Path(sys.argv[4])))
    print(json.dumps([[o.item.name, o.status, o.reason, str(o.trace), o.swept] for o in outcomes]))
    sys.exit(130 if interrupted else 0)
""")


def start_suite(tmp_path: Path, names, token: str, output) -> subprocess.Popen:
    """The suite driver on tasks that run long (the notes app, the model waiting), two workers."""
    suite = tmp_path / "suite"
    suite.mkdir()
    slow = dict(setup=[{"launch": ["{python}", "-m", "sandbox.apps.notes", "--out", "{workdir}/n.json"],
                        "wait_for_window": "Notes"}], success=[{"screen_text": "Saved"}], replies=[WAIT, WAIT_09] * 30)
    for name in names:
        write_task(suite, name, slow)
    (tmp_path / "runner.py").write_text(RUNNER)
    (tmp_path / "driver.py").write_text(DRIVER)
    env = {**os.environ, "TEST_TOKEN": token, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, str(tmp_path / "driver.py"), str(suite), str(tmp_path / "out"),
                             str(Path(__file__).resolve().parent), str(tmp_path / "runner.py")],
                            env=env, stdout=output, stderr=output, text=True)


def test_ctrl_c_on_the_whole_suite(tmp_path):
    token = uuid.uuid4().hex
    proc = start_suite(tmp_path, ("long_a", "long_b", "long_c"), token, subprocess.PIPE)  # the third waits for a worker
    traces = [tmp_path / "out" / "traces" / n / "steps.jsonl" for n in ("long_a", "long_b")]
    deadline = time.monotonic() + 60
    while not all(t.exists() and t.read_text().strip() for t in traces):  # both mid-run
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    rows = {r[0]: r for r in json.loads(out)}
    assert rows["long_a"][1] == rows["long_b"][1] == "aborted"
    assert rows["long_c"][1] == "skipped"
    for name in ("long_a", "long_b"):
        result = json.loads((Path(rows[name][3]) / "result.json").read_text())
        assert result["status"] == "aborted"
        assert load_steps(rows[name][3])
    assert alive_with(token) == []


def test_suite_killed_outright_takes_its_runs_down(tmp_path):
    """SIGKILL on the suite (OOM killer, a CI runner's hard stop): its children are told to stop
    (parent-death signal), tear their sandboxes down and complete their traces."""
    token = uuid.uuid4().hex
    proc = start_suite(tmp_path, ("long_a", "long_b"), token, subprocess.DEVNULL)
    traces = [tmp_path / "out" / "traces" / n for n in ("long_a", "long_b")]
    deadline = time.monotonic() + 60
    while not all((t / "steps.jsonl").exists() and (t / "steps.jsonl").read_text().strip() for t in traces):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.2)
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 30  # bounded: each run's teardown takes a few seconds at most
    while alive_with(token) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert alive_with(token) == []
    for t in traces:
        assert json.loads((t / "result.json").read_text())["status"] == "aborted"


# ---------------------------------------------------------------- many agents against one server

FAKE_SERVER = textwrap.dedent("""
    # An OpenAI-compatible server that answers every chat request after DELAY seconds and records
    # how many requests were in flight at once.
    import json, sys, threading, time
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    state_file, delay = sys.argv[1], float(sys.argv[2])
    state = {"in_flight": 0, "max_in_flight": 0, "requests": 0}
    lock = threading.Lock()
    def save():
        with open(state_file + ".tmp", "w") as f:
            json.dump(state, f)
        import os; os.replace(state_file + ".tmp", state_file)
    class H(BaseHTTPRequestHandler):
        def log_message(self, *a): pass
        def send(self, body):
            data = json.dumps(body).encode()
            self.send_response(200); self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data))); self.end_headers(); self.wfile.write(data)
        def do_GET(self):
            self.send({"object": "list", "data": [{"id": "fake-qwen", "object": "model", "owned_by": "t"}]})
        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            with lock:
                state["in_flight"] += 1; state["requests"] += 1
                state["max_in_flight"] = max(state["max_in_flight"], state["in_flight"]); save()
            time.sleep(delay)
            with lock:
                state["in_flight"] -= 1; n = state["requests"]; save()
            reply = json.dumps({"name": "computer_use", "arguments": {"action": "wait", "time": 0.1 + n / 1000}})
            self.send({"id": "c", "object": "chat.completion", "created": 0, "model": "fake-qwen",
                       "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": reply}}],
                       "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}})
    srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
    srv.daemon_threads = True
    print(srv.server_address[1], flush=True)
    srv.serve_forever()
""")


def start_fake_server(tmp: Path, delay_s: float):
    (tmp / "server.py").write_text(FAKE_SERVER)
    state = tmp / "server.json"
    proc = subprocess.Popen([sys.executable, str(tmp / "server.py"), str(state), str(delay_s)],
                            stdout=subprocess.PIPE, text=True)
    port = int(proc.stdout.readline())
    return proc, f"http://127.0.0.1:{port}/v1", state


def server_state(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {"in_flight": 0, "max_in_flight": 0, "requests": 0}


def openai_suite(tmp: Path, names: list[str], max_steps: int) -> Path:
    import yaml

    suite = tmp / "suite"
    suite.mkdir()
    for name in names:
        (suite / f"{name}.yaml").write_text(yaml.safe_dump({
            "name": name, "goal": "save a note", "screen": {"width": 800, "height": 600},
            "setup": [{"launch": ["{python}", "-m", "sandbox.apps.notes", "--out", "{workdir}/n.json"],
                       "wait_for_window": "Notes"}],
            "max_steps": max_steps, "timeout_s": 90, "success": [{"screen_text": "Saved"}]}))
    return suite


def suite_cli(suite: Path, base_url: str, out: Path, workers: int, env: dict) -> subprocess.Popen:
    from agent.suite.runner import VLAGENT

    return subprocess.Popen([*VLAGENT, "suite", str(suite), "--backend", "openai", "--base-url", base_url,
                             "--model", "fake-qwen", "--workers", str(workers), "--out", str(out),
                             "--junit", str(out / "junit.xml")],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def junit_cases(path: Path) -> dict[str, tuple[str, str]]:
    import xml.etree.ElementTree as ET

    cases = {}
    for c in ET.parse(path).getroot().iter("testcase"):
        bad = c.find("failure") if c.find("failure") is not None else c.find("error")
        cases[c.get("name")] = (bad.get("type"), bad.get("message")) if bad is not None else ("success", "")
    return cases


def test_workers_send_model_requests_concurrently(tmp_path):
    server, url, state = start_fake_server(tmp_path, delay_s=1.0)
    token = uuid.uuid4().hex
    try:
        proc = suite_cli(openai_suite(tmp_path, ["agent_a", "agent_b"], max_steps=2), url, tmp_path / "out", 2,
                         {**os.environ, "TEST_TOKEN": token})
        out, err = proc.communicate(timeout=240)
    finally:
        server.kill()
        server.wait()
    assert proc.returncode == 1, err  # both ran their 2 steps and failed their check, as planned
    cases = junit_cases(tmp_path / "out" / "junit.xml")
    assert {n: c[0] for n, c in cases.items()} == {"agent_a": "failed", "agent_b": "failed"}
    assert all("max_steps" in c[1] for c in cases.values())
    seen = server_state(state)
    assert seen["max_in_flight"] == 2 and seen["requests"] >= 4  # two agents' requests at once
    assert alive_with(token) == []


def test_server_killed_mid_run_ends_every_task_with_error(tmp_path):
    server, url, state = start_fake_server(tmp_path, delay_s=0.5)
    token = uuid.uuid4().hex
    proc = suite_cli(openai_suite(tmp_path, ["agent_a", "agent_b"], max_steps=100), url, tmp_path / "out", 2,
                     {**os.environ, "TEST_TOKEN": token})
    deadline = time.monotonic() + 90
    while server_state(state)["requests"] < 6:  # both agents are mid-run
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.2)
    server.kill()
    server.wait()
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err
    cases = junit_cases(tmp_path / "out" / "junit.xml")
    assert {n: c[0] for n, c in cases.items()} == {"agent_a": "error", "agent_b": "error"}, cases
    assert all(url in c[1] for c in cases.values()), cases  # the reason names the server
    for name in ("agent_a", "agent_b"):
        assert json.loads((tmp_path / "out" / "traces" / name / "result.json").read_text())["status"] == "error"
    assert alive_with(token) == []


# -- a server that answers HTTP 200 with something that is not a completion ----------------------

def _bad_server(body: bytes, ctype: str):
    import http.server
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _send(self, payload: bytes, kind: str):
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def do_GET(self):  # /models
            self._send(json.dumps({"object": "list", "data": [{"id": "m", "object": "model"}]}).encode(), "application/json")

        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self._send(body, ctype)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


SURROGATE_REPLY = ('<tool_call>{"name": "computer_use", "arguments": {"action": "answer", "text": "a'
                   + chr(0xD800) + 'b"}}</tool_call>')


@pytest.mark.parametrize("body, ctype, reason", [
    (b"<html>proxy error</html>", "text/html", "no 'choices'"),
    (b'{"id": "x", "object": "chat.completion"}', "application/json", "no 'choices'"),
    (b'{"id": ', "application/json", "not a chat completion"),
])
def test_a_server_answering_200_without_a_completion_gives_a_reason(body, ctype, reason):
    from agent.backends.openai import OpenAIBackend
    from agent.errors import BackendError

    server = _bad_server(body, ctype)
    try:
        backend = OpenAIBackend("m", base_url=f"http://127.0.0.1:{server.server_port}/v1", max_retries=0)
        with pytest.raises(BackendError, match=reason):
            backend.generate([{"role": "user", "content": [{"type": "text", "text": "hi"}]}])
    finally:
        server.shutdown()


def test_a_lone_surrogate_from_a_server_is_recorded_safely():
    from agent.backends.openai import OpenAIBackend

    body = json.dumps({"choices": [{"index": 0, "finish_reason": "stop",
                                    "message": {"role": "assistant", "content": SURROGATE_REPLY}}]}).encode()
    server = _bad_server(body, "application/json")
    try:
        backend = OpenAIBackend("m", base_url=f"http://127.0.0.1:{server.server_port}/v1", max_retries=0)
        reply = backend.generate([{"role": "user", "content": [{"type": "text", "text": "hi"}]}])
    finally:
        server.shutdown()
    assert "a\ufffdb" in reply
    reply.encode("utf-8")  # strict: it can go into a trace and back to a server


# -- the real CLI, as a user or an attacker runs it --------------------------------------------------

def call(action: str, **args) -> str:
    return '<tool_call>{"name": "computer_use", "arguments": %s}</tool_call>' % json.dumps({"action": action, **args})


def vlagent_run(tmp_path: Path, task: dict, replies: list[str], *extra: str, env: dict | None = None,
                timeout: float = 150, wait: bool = True):
    import yaml

    task = {"name": "t", "goal": "fault test", "screen": {"width": 800, "height": 600}, "max_steps": 20,
            "timeout_s": 60, **task}
    (tmp_path / "task.yaml").write_text(yaml.safe_dump(task, sort_keys=False))
    (tmp_path / "replies.yaml").write_text(yaml.safe_dump(replies, allow_unicode=True))
    argv = [sys.executable, "-m", "agent.cli", "run", str(tmp_path / "task.yaml"), "--model",
            f"script:{tmp_path / 'replies.yaml'}", "--trace", str(tmp_path / "trace"), *extra]
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    if not wait:
        return subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def result_of(tmp_path: Path) -> dict:
    result = json.loads((tmp_path / "trace" / "result.json").read_text())
    assert result["steps"] == len(load_steps(tmp_path / "trace"))  # every counted step is in steps.jsonl
    return result


NOTES = {"launch": ["{python}", "-m", "sandbox.apps.notes", "--out", "{workdir}/n.json"], "wait_for_window": "Notes"}


def test_detached_processes_from_setup_and_checks_are_ended_at_teardown(tmp_path):
    token = uuid.uuid4().hex
    daemon = "sleep 0.2; setsid sh -c 'sleep 301' </dev/null >/dev/null 2>&1 &"  # a double fork, own session
    task = {"setup": [NOTES, {"run": ["sh", "-c", "setsid sleep 300 </dev/null >/dev/null 2>&1 &"]},
                      {"launch": ["sh", "-c", daemon]}, {"sleep": 0.5}],
            "success": [{"command": "setsid -f sleep 302 </dev/null >/dev/null 2>&1"}]}
    proc = vlagent_run(tmp_path, task, [call("terminate", status="success")], env={"TEST_TOKEN": token})
    assert proc.returncode == 0, proc.stderr[-1500:]
    assert alive_with(token) == []


def test_typing_into_a_terminal_is_refused_and_allowed_only_when_the_task_says_so(tmp_path):
    import shutil

    if shutil.which("xterm") is None:
        pytest.skip("xterm is not installed (.ci/install installs it)")
    marker = tmp_path / "pwned"
    # large enough to lie under the pointer (the screen's centre): without a window manager it has the keys
    term = {"launch": ["xterm", "-geometry", "120x40+0+0", "-T", "term", "-e", "sh"], "wait_for_window": "term"}
    replies = [call("left_click", coordinate=[300, 200]), call("type", text=f"touch {marker}"),
               call("key", keys=["enter"]), call("wait", time=1), call("terminate", status="success")]
    check = [{"command": ["test", "-e", str(marker)]}]
    refused = vlagent_run(tmp_path, {"setup": [term], "success": check}, replies)
    assert refused.returncode == 1 and result_of(tmp_path)["status"] == "invalid_output"  # three refused in a row
    steps = load_steps(tmp_path / "trace")  # the gate judges the window each input reaches: the click too
    assert [s.error.split(" would go")[0].split(" at ")[0] for s in steps[:3]] == ["a left_click", "typing", "key presses"]
    assert all("terminal or shell window ('term'" in s.error for s in steps[:3]) and not marker.exists()

    allowed = tmp_path / "allowed"
    allowed.mkdir()
    proc = vlagent_run(allowed, {"setup": [term], "allow": {"terminal": True}, "success": check}, replies)
    assert proc.returncode == 0 and result_of(allowed)["status"] == "success", proc.stderr[-1500:]


def test_model_text_that_looks_like_markup_is_printed_as_text(tmp_path):
    text = "[/] [bold]x[/bold] [link=file:///etc]y[/link]"
    proc = vlagent_run(tmp_path, {"setup": [NOTES]}, [call("left_click", coordinate=[500, 300]),
                                                       call("type", text=text), call("answer", text="[/]")])
    assert proc.returncode == 0, proc.stderr[-1500:]
    assert "Traceback" not in proc.stderr and text in proc.stderr and "answer: [/]" in proc.stderr


def test_a_double_ctrl_c_exits_130_with_a_complete_trace(tmp_path):
    run = vlagent_run(tmp_path, {"setup": [NOTES]}, [call("wait", time=1), call("wait", time=0.9)] * 20, wait=False)
    deadline = time.monotonic() + 60
    while not (tmp_path / "trace" / "steps.jsonl").exists() or not load_steps(tmp_path / "trace"):
        assert time.monotonic() < deadline and run.poll() is None, run.communicate()[1][-1500:]
        time.sleep(0.2)
    run.send_signal(signal.SIGINT)
    time.sleep(0.05)
    run.send_signal(signal.SIGINT)
    _, err = run.communicate(timeout=60)
    assert run.returncode == 130, err[-1500:]
    assert "Traceback" not in err
    assert result_of(tmp_path)["status"] == "aborted"


@pytest.mark.skipif(os.geteuid() != 0, reason="a small filesystem (tmpfs) needs root")
def test_a_full_disk_mid_run_ends_the_run_error_with_a_parseable_trace(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=700k", "tmpfs", disk], check=True)
    try:
        filler = {"launch": ["sh", "-c", "sleep 0.3; cat /dev/zero > {workdir}/filler 2>/dev/null; sleep 60"]}
        proc = vlagent_run(disk, {"setup": [NOTES, filler]}, [call("wait", time=0.5), call("wait", time=0.4)] * 10)
        result = result_of(disk)
        assert result["status"] == "error" and "No space left on device" in result["reason"], result["reason"]
        assert proc.returncode == 1 and "Traceback" not in proc.stderr
    finally:
        subprocess.run(["umount", "-l", disk], check=True)


def test_setup_says_what_it_waits_for_and_a_missing_window_names_those_that_appeared(tmp_path):
    wait = {"wait_for_window": "^Nope$", "timeout_s": 6}
    proc = vlagent_run(tmp_path, {"setup": [NOTES, wait]}, [call("terminate", status="success")])
    result = result_of(tmp_path)
    assert result["status"] == "error" and "window '^Nope$' did not appear" in result["reason"]
    assert "windows on screen: 'Notes'" in result["reason"], result["reason"]
    assert "setup: launching python" in proc.stderr and "setup: waiting up to 6 s for a window titled '^Nope$'" in proc.stderr
    assert "setup: still waiting for '^Nope$' (5 of 6 s); windows on screen: 'Notes'" in proc.stderr


def test_denied_chords_with_extra_keys_never_reach_the_app(tmp_path):
    """As the attacker: chords holding a denied combination, with one more modifier, through `vlagent
    run` to the echo app, which logs every key it receives. Only the ordinary shortcut arrives."""
    echo = {"launch": ["{python}", "-m", "sandbox.apps.echo", "--out", "{workdir}/events.jsonl"], "wait_for_window": "Echo"}
    chords = [["ctrl", "alt", "shift", "delete"], ["ctrl", "alt", "shift", "f1"], ["alt", "shift", "f4"],
              ["ctrl", "alt", "t"], ["shift", "super", "s"], ["alt", "shift", "tab"], ["ctrl", "shift", "z"]]
    replies = [r for c in chords for r in (call("key", keys=c), call("wait", time=0.2))] + [call("terminate", status="success")]
    proc = vlagent_run(tmp_path, {"setup": [echo], "screen": {"width": 1280, "height": 800}}, replies)
    assert proc.returncode == 0, proc.stderr[-1500:]
    steps = load_steps(tmp_path / "trace")
    refused = [s for s in steps if s.error]
    assert len(refused) == 6 and all("is denied: it holds" in s.error for s in refused)
    events = [json.loads(line) for line in (tmp_path / "trace" / "workdir" / "events.jsonl").read_text().splitlines()]
    keys = [e for e in events if e["event"] == "key"]
    assert [(e["keysym"].lower(), e["ctrl"], e["shift"]) for e in keys if e["keysym"].lower() == "z"] == [("z", True, True)]
    assert not any(e["keysym"].lower() in ("delete", "f1", "f4", "t", "s", "tab") for e in keys), keys


def test_a_long_text_stops_typing_at_the_run_deadline(tmp_path):
    """A task allowing 100,000 characters and backtracking-prone deny patterns: the check answers at once
    (RE2), and typing ~12 s of text stops at the run's 4 s timeout instead of carrying the run past it."""
    task = {"setup": [NOTES], "timeout_s": 4, "allow": {"max_text_len": 100_000, "deny_text": ["(a+)+$", "(x+x+)+y"]}}
    proc = vlagent_run(tmp_path, task, [call("left_click", coordinate=[500, 400]),
                                        call("type", text=":(){ " + "a" * 5000 + "!"), call("terminate", status="success")])
    result = result_of(tmp_path)
    assert result["status"] == "timeout", result["reason"]
    steps = load_steps(tmp_path / "trace")
    assert steps[1].error is None and steps[1].timings["exec_ms"] < 6_000, steps[1].timings
    assert proc.returncode == 1
