"""`vlagent serve` on the tiny random Qwen3-VL (CPU, float32): the real server, engine and grammar,
talked to by the real `--backend openai` client.

A random model is the worst case for sharing: any mix-up between conversations (a wrong KV
region, a wrong row of the batch, a reused prefix that is not one) changes its replies.
"""
from __future__ import annotations

import json
import os
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from actions.policy import Allow, Policy
from agent.backends import load_backend
from agent.backends.grammar import reply_grammar, text_bound
from agent.backends.openai import OpenAIBackend, reply_schema
from agent.errors import BackendError
from agent.run.history import build_messages
from agent.trace import Step
from test_transformers_backend import FILL_FORM, form_screenshot

AGENTS = 3
CONTEXT = 8192  # KV tokens per agent: a 640x400 screenshot is 252 tokens, the tiny tokenizer's prompt ~3K
ROOT = Path(__file__).resolve().parents[2]
REPLY = '<tool_call>\n{"name": "computer_use", "arguments": {"action": "left_click", "coordinate": [100, 200]}}\n</tool_call>'


@pytest.fixture(scope="module")
def server():
    from agent.serve.app import ServedModel, Server

    with Server(ServedModel("tiny-random", AGENTS, CONTEXT, device="cpu"), port=0) as srv:
        yield srv


def client(srv, **kw) -> OpenAIBackend:
    return OpenAIBackend("tiny-random", srv.base_url, processor=srv.served.processor, **kw)


def conversation(seed: int, steps: int) -> list[dict]:
    """The chat the loop sends at step `steps + 1` of an episode with its own screenshots."""
    shots = [form_screenshot((640, 400), seed=seed * 10 + i) for i in range(steps + 1)]
    past = [Step(step=i + 1, raw=REPLY, action={"action": "left_click", "coordinate": [100 + seed, 200]},
                 screenshot=str(i)) for i in range(steps)]
    return build_messages(f"Task {seed}: fill in the form.", past, shots[-1], Policy(FILL_FORM),
                          load_image=lambda s: shots[int(s.screenshot)])


@pytest.mark.slow
def test_replies_are_the_same_alone_concurrent_and_local(server):
    """Five agents (more than the three regions: some wait) at different points of their episodes:
    each gets, sent together, the reply it gets alone, which is also what `vlagent run` computes
    in-process with the engine (as on a GPU: grammar-forced text is fed in its own tokenization)."""
    policy = Policy(FILL_FORM)
    chats = [conversation(seed, steps) for seed, steps in ((1, 0), (2, 1), (3, 2), (4, 0), (5, 3))]
    alone = [client(server).generate(c, policy) for c in chats]
    together = [None] * len(chats)

    def agent(i):
        together[i] = client(server).generate(chats[i], policy)

    threads = [threading.Thread(target=agent, args=(i,)) for i in range(len(chats))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert together == alone
    assert len(set(alone)) > 1  # different conversations, different replies: the rows are not mixed up
    local = load_backend("tiny-random", engine=True)
    assert local.engine is not None
    assert [local.generate(c, policy) for c in chats] == alone
    for reply in alone:
        assert reply.startswith("<tool_call>\n") and reply.endswith("\n</tool_call>")


def post(srv, body: dict, conversation: str | None = None, headers: dict | None = None) -> tuple[int, dict]:
    """One request on a new connection; `conversation`: the X-Vlagent-Conversation id that ties
    requests of one agent together (without it a conversation is the connection)."""
    extra = {"X-Vlagent-Conversation": conversation} if conversation else {}
    req = urllib.request.Request(f"{srv.base_url}/chat/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json", **extra, **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


def wire(chat: list[dict]) -> list[dict]:
    from agent.backends.openai import to_openai_messages
    from agent.backends.qwen_images import QWEN3_VL_IMAGE

    return to_openai_messages(chat, QWEN3_VL_IMAGE)


@pytest.mark.slow
def test_the_next_step_reuses_its_conversations_prefix(server):
    """Step 2 of an episode prefills only what step 1 did not have, even with other agents in between."""
    schema = {"type": "json_schema", "json_schema": {"name": "computer_use", "schema": reply_schema(Policy(FILL_FORM))}}
    first = conversation(7, 0)
    status, r1 = post(server, {"model": "tiny-random", "messages": wire(first), "response_format": schema}, "agent-7")
    assert status == 200, r1
    for seed in (8, 9):  # other agents take the other regions
        assert post(server, {"model": "tiny-random", "messages": wire(conversation(seed, 0))}, f"agent-{seed}")[0] == 200
    second = conversation(7, 1)
    status, r2 = post(server, {"model": "tiny-random", "messages": wire(second), "response_format": schema}, "agent-7")
    assert status == 200, r2
    cached = r2["usage"]["prompt_tokens_details"]["cached_tokens"]
    assert cached > r1["usage"]["prompt_tokens"] - 20, (cached, r1["usage"])  # all but the turn's boundary
    assert cached < r2["usage"]["prompt_tokens"]


def test_a_client_learns_nothing_of_another_conversations_prompt(server):
    """A second client that sends exactly what agent 11 will send next (its prompt continued) gets
    no region of agent 11's and no cached tokens: `cached_tokens` cannot be used to guess another
    agent's prompt. Agent 11 itself still reuses its own prefix afterwards."""
    schema = {"type": "json_schema", "json_schema": {"name": "computer_use", "schema": reply_schema(Policy(FILL_FORM))}}
    status, mine = post(server, {"model": "tiny-random", "messages": wire(conversation(11, 0)), "response_format": schema},
                        "agent-11-secret-id")
    assert status == 200, mine
    guess = {"model": "tiny-random", "messages": wire(conversation(11, 1)), "response_format": schema}
    for other in (None, "another-id"):  # its own connection, or its own id
        status, theirs = post(server, guess, other)
        assert status == 200, theirs
        assert theirs["usage"]["prompt_tokens_details"]["cached_tokens"] == 0, theirs["usage"]
    status, again = post(server, guess, "agent-11-secret-id")
    assert status == 200 and again["usage"]["prompt_tokens_details"]["cached_tokens"] > 0, again["usage"]
    assert again["choices"] == theirs["choices"]  # the same reply either way


def test_a_prompt_that_would_outgrow_its_region_is_refused_with_the_reason(server):
    policy = Policy(FILL_FORM)
    big = build_messages("Fill in the form.", [], form_screenshot((4000, 2400)), policy, load_image=None)
    with pytest.raises(BackendError) as e:
        client(server, max_retries=0).generate(big, policy)
    assert "HTTP 400" in str(e.value) and "--context" in str(e.value) and "exceeds" in str(e.value)
    assert client(server).generate(conversation(1, 0), policy)  # the server goes on


def test_requests_it_cannot_serve_get_a_clear_status(server):
    chat = wire(conversation(1, 0))
    status, body = post(server, {"model": "other", "messages": chat})
    assert status == 404 and "tiny-random" in body["error"]["message"]
    status, body = post(server, {"model": "tiny-random", "messages": chat,
                                 "response_format": {"type": "json_schema", "json_schema": {"schema": {"type": "object"}}}})
    assert status == 400 and "computer_use" in body["error"]["message"]
    with urllib.request.urlopen(f"{server.base_url}/models", timeout=10) as r:
        assert [m["id"] for m in json.load(r)["data"]] == ["tiny-random"]


def raw_post(srv, data: bytes) -> tuple[int, dict]:
    req = urllib.request.Request(f"{srv.base_url}/chat/completions", data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


HOSTILE = {
    "not JSON": b"{nope",
    "JSON nested past the parser's stack": b'{"messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    "a list, not an object": b"[1, 2]",
    "a message that is a number": json.dumps({"messages": [1]}).encode(),
    "a message without a role": json.dumps({"messages": [{"content": "hi"}]}).encode(),
    "an image part without its url": json.dumps({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}).encode(),
    "an image that is not one": json.dumps({"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]}).encode(),
    "a negative max_tokens": json.dumps({"max_tokens": -5, "messages": [{"role": "user", "content": "hi"}]}).encode(),
    "max_tokens not a number": json.dumps({"max_tokens": "a", "messages": [{"role": "user", "content": "hi"}]}).encode(),
    "response_format not an object": json.dumps({"response_format": "x", "messages": [{"role": "user", "content": "hi"}]}).encode(),
}


@pytest.mark.parametrize("case", HOSTILE)
def test_a_malformed_request_gets_a_400_with_its_reason_and_the_server_goes_on(server, case):
    status, body = raw_post(server, HOSTILE[case])
    assert status == 400, body
    assert body["error"]["message"] and "Traceback" not in body["error"]["message"]
    status, body = post(server, {"model": "tiny-random", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
    assert status == 200, body


@pytest.mark.parametrize("length, status", [("-1", "400"), ("abc", "400"), (str(300 * 2 ** 20), "413")])
def test_a_content_length_not_a_byte_count_or_too_large_is_refused_and_the_connection_closed(server, length, status):
    import socket
    from urllib.parse import urlparse

    url = urlparse(server.base_url)
    with socket.create_connection((url.hostname, url.port), timeout=30) as sock:
        sock.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n\r\n{{}}".encode())
        reply = b""
        while chunk := sock.recv(4096):  # the server closes the connection after the reply
            reply += chunk
    reply = reply.decode(errors="replace")
    # (a malformed length is refused by the HTTP parser, before the app sees the request)
    expected = "Invalid HTTP request" if status == "400" else "request body over 256 MiB"
    assert reply.startswith(f"HTTP/1.1 {status}") and expected in reply, reply
    status, body = post(server, {"model": "tiny-random", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
    assert status == 200, body


def test_unconstrained_request_stops_at_max_tokens(server):
    status, body = post(server, {"model": "tiny-random", "messages": wire(conversation(2, 0)), "max_tokens": 5})
    assert status == 200 and body["usage"]["completion_tokens"] <= 5
    assert body["choices"][0]["finish_reason"] in ("stop", "length")


@pytest.mark.parametrize("allow", [
    FILL_FORM,
    Allow(),
    Allow(actions=["left_click", "terminate"]),
    Allow(actions=["type", "key"], keys=["ctrl+a", "ctrl++", "+"], max_text_len=0),
    Allow(actions=["answer", "scroll"], max_text_len=3000),
    Allow(actions=["left_click", "ask_user"]),  # a client whose run a person can answer: the server asks too
])
def test_the_request_schema_gives_back_the_policys_grammar(allow):
    from agent.serve.server import policy_from_schema

    policy = Policy(allow, can_ask=True)
    back = policy_from_schema(reply_schema(policy))
    assert reply_grammar(back) == reply_grammar(policy)
    if {"type", "answer"} & policy.actions:
        assert text_bound(back) == min(text_bound(policy), 500)  # the schema caps text at 500 characters


def test_budget_says_how_many_agents_fit_a_card():
    from click.testing import CliRunner

    from agent.backends.budget import GIB, load_config, plan_agents
    from agent.cli.budget import budget

    cfg = load_config(None)
    p8 = plan_agents(cfg, 24 * GIB, 8, (1920, 1080))
    assert p8.fits and p8.agents_fit >= 8 and p8.predicted_peak_gib < 24
    assert p8.context_per_agent >= 4 * 2042 and p8.context_per_agent % 1024 == 0
    fit = p8.agents_fit
    assert not plan_agents(cfg, 24 * GIB, fit + 1, (1920, 1080)).fits
    assert plan_agents(cfg, 24 * GIB, 8, (1280, 800)).agents_fit > fit  # smaller screens, more agents
    out = CliRunner().invoke(budget, ["--agents", "8", "--device-memory", "24", "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["agents_fit"] == fit


def test_a_port_in_use_is_one_line_before_the_model_loads():
    import socket
    import subprocess
    import time

    from agent.suite.runner import VLAGENT

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        t0 = time.monotonic()
        proc = subprocess.run([*VLAGENT, "serve", "--model", "tiny-random", "--port", str(port)],
                              capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == f"Error: cannot listen on 127.0.0.1:{port}: in use (another server? pick another --port)"
    assert "Loading weights" not in proc.stderr and time.monotonic() - t0 < 60


# ---------------------------------------------------------------- suites share one server

TASK = """\
name: {name}
goal: Fill in the registration form for Ada Lovelace (ada@example.com) and submit it.
screen: {{width: 640, height: 400}}
setup:
  - launch: ["{{python}}", "-m", "sandbox.apps.form", "--out", "{{workdir}}/form.json"]
    wait_for_window: Registration
max_steps: 2
timeout_s: 120
allow:
  actions: [left_click, type, key, terminate]
  keys: [tab, enter]
  max_text_len: 20
success:
  - file_json: {{path: "{{workdir}}/form.json", equals: {{name: Ada Lovelace}}}}
"""


def tasks(root: Path, n: int) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (root / f"task{i}.yaml").write_text(TASK.format(name=f"task{i}"))
    return root


@pytest.mark.slow
def test_suite_workers_share_one_server(tmp_path):
    """`vlagent suite --workers 2 --serve` with the tiny model: one server, both items driven through
    it with --backend openai (random replies: the checks fail, nothing errors), the server gone after."""
    import subprocess

    from agent.suite.runner import VLAGENT

    out = tmp_path / "out"
    proc = subprocess.run([*VLAGENT, "suite", str(tasks(tmp_path / "suite", 2)), "--model", "tiny-random",
                           "--workers", "2", "--serve", "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1, proc.stderr[-3000:]  # random replies do not fill the form
    assert "model server for 2 workers" in proc.stderr
    items = json.loads((out / "suite.json").read_text())["items"]
    assert [it["status"] for it in items] != ["error"] * 2, items
    for it in items:
        assert it["status"] in ("failed", "invalid_output"), it
        steps = [json.loads(line) for line in (Path(it["trace"]) / "steps.jsonl").read_text().splitlines()]
        assert steps and all(s["raw"].startswith("<tool_call>") for s in steps)
    log = (out / "logs" / "task0.log").read_text() + (out / "logs" / "serve.log").read_text()
    assert "serving tiny-random" in log
    port = proc.stderr.split("127.0.0.1:")[1].split("/")[0]
    with pytest.raises(OSError):  # stopped with the suite
        urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5)


@pytest.mark.slow
def test_a_crashed_server_fails_the_items_with_the_reason(tmp_path):
    """The server dies while the first item runs: every task item ends, as error with the server's
    fate in its reason, within seconds; nothing waits for a reply that cannot come."""
    from agent.serve.process import ServeProcess
    from agent.suite.runner import Options, discover, run_suite

    _, items = discover([tasks(tmp_path / "suite", 3)])
    server = ServeProcess("tiny-random", agents=1, log=tmp_path / "serve.log", context=CONTEXT).start()
    opts = Options(model="tiny-random", backend="openai", base_url=server.base_url, retries=1)

    def crash():
        while not (tmp_path / "out" / "traces").exists():
            time.sleep(0.1)
        server.proc.kill()

    threading.Thread(target=crash, daemon=True).start()
    t0 = time.monotonic()
    try:
        outcomes, interrupted = run_suite(items, tmp_path / "out", opts, workers=1, server=server)
    finally:
        server.stop()
    assert not interrupted and time.monotonic() - t0 < 120
    assert [o.status for o in outcomes] == ["error"] * 3, [(o.status, o.reason) for o in outcomes]
    assert all("the model server exited" in o.reason for o in outcomes)
    assert [o.attempts for o in outcomes] == [1, 0, 0]  # not retried, the others not started: it will not come back
