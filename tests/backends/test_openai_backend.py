"""OpenAIBackend against a small fake OpenAI-compatible server on 127.0.0.1 (a real socket).

The fake counts an image's prompt tokens the way vLLM does for Qwen3-VL (one per 32x32 px of the
image it receives, plus vision start/end), so the token-count check has something real to compare.
"""
from __future__ import annotations

import base64
import io
import json
import socket
import threading
import time
import warnings
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from PIL import Image

from actions import Policy
from actions.parse import parse_action
from actions.policy import Allow
from agent.backends.openai import ImagePreprocessingWarning, OpenAIBackend, prepare_image, reply_schema, to_openai_messages
from agent.backends.qwen_images import QWEN3_VL_IMAGE
from agent.errors import BackendError

MODEL = "fake-qwen3-vl"
REPLY = '{"name": "computer_use", "arguments": {"action": "left_click", "coordinate": [500, 300]}}'
FAST = dict(backoff_s=0.01, timeout_s=10.0)  # retries in ms, so tests stay fast


class FakeServer(ThreadingHTTPServer):
    """An OpenAI-compatible server: GET /v1/models, POST /v1/chat/completions.

    `plan` holds (status, body, headers, delay_s) answers for the next chat requests, then it
    answers REPLY. Every chat request body is kept in `requests`."""

    daemon_threads = True

    def __init__(self, patch_px: int = 32, images: bool = True):
        super().__init__(("127.0.0.1", 0), Handler)
        self.plan: list[tuple[int, dict, dict, float]] = []
        self.requests: list[dict] = []
        self.headers_seen: list[dict] = []
        self.model_lists = 0
        self.patch_px = patch_px  # 32 like Qwen3-VL; 28 plays a server that preprocesses differently
        self.images = images
        self.lock = threading.Lock()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


class Handler(BaseHTTPRequestHandler):
    server: FakeServer

    def log_message(self, *args):  # keep pytest output clean
        pass

    def _send(self, status: int, body: dict, headers: dict | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path != "/v1/models":
            return self._send(404, {"error": {"message": "not found"}})
        with self.server.lock:
            self.server.model_lists += 1
        self._send(200, {"object": "list", "data": [{"id": MODEL, "object": "model", "owned_by": "test"}]})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with self.server.lock:
            self.server.requests.append(body)
            self.server.headers_seen.append({k.lower(): v for k, v in self.headers.items()})
            step = self.server.plan.pop(0) if self.server.plan else None
        if step is not None:
            status, answer, headers, delay = step
            time.sleep(delay)
            try:
                return self._send(status, answer, headers)
            except OSError:  # the client gave up (timeout test)
                return
        if body["model"] != MODEL:
            return self._send(404, {"error": {"message": f"The model `{body['model']}` does not exist.",
                                              "type": "NotFoundError", "code": 404}})
        images = [p for m in body["messages"] if isinstance(m["content"], list) for p in m["content"]
                  if p["type"] == "image_url"]
        if images and not self.server.images:
            return self._send(400, {"error": {"message": f"{MODEL} is not a multimodal model", "code": 400}})
        self._send(200, {
            "id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": MODEL,
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": REPLY}}],
            "usage": {"prompt_tokens": self._prompt_tokens(body), "completion_tokens": 1, "total_tokens": 1}})

    def _prompt_tokens(self, body: dict) -> int:
        n = 0
        for m in body["messages"]:
            parts = m["content"] if isinstance(m["content"], list) else [{"type": "text", "text": m["content"]}]
            for p in parts:
                if p["type"] == "text":
                    n += len(p["text"].split()) + 3
                else:
                    img = decode_image(p)
                    step = self.server.patch_px
                    n += round(img.width / step) * round(img.height / step) + 2
        return n


def decode_image(part: dict) -> Image.Image:
    url = part["image_url"]["url"]
    assert url.startswith("data:image/png;base64,")
    return Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))


@pytest.fixture
def server():
    srv = FakeServer()
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def screenshot(w: int = 1000, h: int = 700) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))


def chat(image: Image.Image | None = None) -> list[dict]:
    user = [{"type": "text", "text": "Click Submit."}]
    if image is not None:
        user.insert(0, {"type": "image", "image": image})
    return [{"role": "system", "content": [{"type": "text", "text": "You are a GUI agent."}]},
            {"role": "user", "content": user}]


def chat_requests(srv: FakeServer) -> list[dict]:
    """The requests of the agent, without the two token-count probes (max_tokens 1)."""
    return [r for r in srv.requests if r.get("max_tokens") != 1]


def test_reply_and_native_messages(server):
    backend = OpenAIBackend(MODEL, server.base_url, **FAST)
    reply = backend.generate(chat(screenshot()))
    assert parse_action(reply).action == "left_click"
    sent = chat_requests(server)[-1]
    assert sent["model"] == MODEL and sent["temperature"] == 0.0
    assert sent["messages"][0] == {"role": "system", "content": "You are a GUI agent."}
    parts = sent["messages"][1]["content"]
    assert [p["type"] for p in parts] == ["image_url", "text"] and parts[1]["text"] == "Click Submit."
    assert sent["response_format"]["type"] == "json_schema"


def test_image_is_sent_at_the_local_processors_size(server):
    """1000x700 -> 992x704: the size transformers' Qwen3-VL image processor resizes it to."""
    from transformers import Qwen2VLImageProcessorPil

    image = screenshot(1000, 700)
    backend = OpenAIBackend(MODEL, server.base_url, **FAST)
    backend.generate(chat(image))
    sent = decode_image(chat_requests(server)[-1]["messages"][1]["content"][0])
    processor = Qwen2VLImageProcessorPil(patch_size=16, merge_size=2, temporal_patch_size=2,
                                         size={"shortest_edge": 65536, "longest_edge": 16777216})
    _, grid_h, grid_w = processor(image)["image_grid_thw"][0]
    assert sent.size == (grid_w * 16, grid_h * 16) == (992, 704)


def test_prepared_image_gives_the_processor_identical_pixels():
    """Resizing before sending changes nothing the model sees: the processor's pixels are equal."""
    from transformers import Qwen2VLImageProcessorPil

    processor = Qwen2VLImageProcessorPil(patch_size=16, merge_size=2, temporal_patch_size=2,
                                         size={"shortest_edge": 65536, "longest_edge": 16777216})
    image = screenshot(1000, 700)
    direct = processor(image)["pixel_values"]
    via_wire = processor(prepare_image(image, dict(QWEN3_VL_IMAGE)))["pixel_values"]
    assert np.array_equal(np.asarray(direct), np.asarray(via_wire))


@pytest.mark.slow
def test_resent_screenshots_are_encoded_once(server):
    backend = OpenAIBackend(MODEL, server.base_url, check_image_tokens=False, **FAST)
    first, second = screenshot(), screenshot(640, 400)
    backend.generate(chat(first))
    backend.generate(chat(first) + chat(second)[1:])  # the history re-sends the first screenshot
    sent = [p["image_url"]["url"] for r in server.requests for m in r["messages"]
            if isinstance(m["content"], list) for p in m["content"] if p["type"] == "image_url"]
    assert len(sent) == 3 and sent[0] == sent[1] != sent[2]
    assert len(backend._encoded) == 2


@pytest.mark.slow
def test_image_tokens_match_and_no_warning(server):
    backend = OpenAIBackend(MODEL, server.base_url, **FAST)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ImagePreprocessingWarning)
        backend.generate(chat(screenshot(1280, 800)))
    assert backend.image_tokens == (1002, 1002)  # 40 x 25 merged patches + vision start/end


@pytest.mark.slow
def test_token_mismatch_warns_once():
    srv = FakeServer(patch_px=28)  # a server that preprocesses like Qwen2-VL
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        first = OpenAIBackend(MODEL, srv.base_url, **FAST)
        with pytest.warns(ImagePreprocessingWarning, match="collapse Qwen3-VL's grounding"):
            first.generate(chat(screenshot(1280, 800)))
        server_count, local = first.image_tokens
        assert server_count != local == 1002
        with warnings.catch_warnings():
            warnings.simplefilter("error", ImagePreprocessingWarning)
            OpenAIBackend(MODEL, srv.base_url, **FAST).generate(chat(screenshot(1280, 800)))
            first.generate(chat(screenshot(1280, 800)))
    finally:
        srv.shutdown()
        srv.server_close()


def test_retries_503_then_succeeds(server):
    backend = OpenAIBackend(MODEL, server.base_url, check_image_tokens=False, max_retries=3, **FAST)
    busy = (503, {"error": {"message": "busy"}}, {}, 0.0)
    server.plan = [busy, busy]
    assert parse_action(backend.generate(chat())).action == "left_click"
    assert len(server.requests) == 3


def test_retries_are_bounded(server):
    backend = OpenAIBackend(MODEL, server.base_url, check_image_tokens=False, max_retries=2, **FAST)
    server.plan = [(500, {"error": {"message": "engine dead"}}, {}, 0.0)] * 5
    with pytest.raises(BackendError, match=r"HTTP 500 3 times: engine dead") as e:
        backend.generate(chat())
    assert len(server.requests) == 3 and "\n" not in str(e.value)


def test_429_honours_retry_after(server):
    backend = OpenAIBackend(MODEL, server.base_url, check_image_tokens=False, max_retries=1, **FAST)
    server.plan = [(429, {"error": {"message": "slow down"}}, {"Retry-After": "0"}, 0.0)]
    assert backend.generate(chat()) == REPLY
    assert len(server.requests) == 2


def test_down_server_is_one_clear_line():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    backend = OpenAIBackend(MODEL, f"http://127.0.0.1:{port}/v1", max_retries=1, backoff_s=0.01)
    with pytest.raises(BackendError) as e:
        backend.generate(chat(screenshot()))
    assert str(e.value) == f"cannot reach http://127.0.0.1:{port}/v1: connection refused"


def test_wrong_model_name_lists_served_models(server):
    backend = OpenAIBackend("Qwen/Qwen3-VL-2B", server.base_url, **FAST)
    with pytest.raises(BackendError) as e:
        backend.generate(chat(screenshot()))
    assert str(e.value) == f"server {server.base_url} has no model 'Qwen/Qwen3-VL-2B'; it serves: {MODEL}"


@pytest.mark.slow
def test_server_without_images():
    srv = FakeServer(images=False)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        backend = OpenAIBackend(MODEL, srv.base_url, **FAST)
        with pytest.raises(BackendError, match="does not take images") as e:
            backend.generate(chat(screenshot()))
        assert "not a multimodal model" in str(e.value) and "\n" not in str(e.value)
    finally:
        srv.shutdown()
        srv.server_close()


def test_timeout_is_a_backend_error(server):
    backend = OpenAIBackend(MODEL, server.base_url, check_image_tokens=False, max_retries=0,
                            timeout_s=0.3, backoff_s=0.01)
    server.plan = [(200, {}, {}, 2.0)]  # answers long after the client's timeout
    with pytest.raises(BackendError, match=r"no reply from .* within 0.3 s"):
        backend.generate(chat())


def test_server_without_json_schema_falls_back_to_plain_replies(server):
    backend = OpenAIBackend(MODEL, server.base_url, check_image_tokens=False, **FAST)
    server.plan = [(400, {"error": {"message": "response_format json_schema is not supported"}}, {}, 0.0)]
    assert backend.generate(chat()) == REPLY
    backend.generate(chat())
    assert ["response_format" in r for r in server.requests] == [True, False, False]
    assert backend.structured is False


def test_api_key_from_environment(server, monkeypatch):
    monkeypatch.setenv("VLAGENT_API_KEY", "sk-test-123")
    OpenAIBackend(MODEL, server.base_url, check_image_tokens=False, **FAST).generate(chat())
    assert server.headers_seen[-1]["authorization"] == "Bearer sk-test-123"


@pytest.mark.slow
def test_concurrent_agents_share_one_backend(server):
    """Eight agent threads at once: every reply arrives, the one-time checks run once."""
    backend = OpenAIBackend(MODEL, server.base_url, **FAST)
    replies, errors = [], []

    def agent():
        try:
            replies.append(backend.generate(chat(screenshot(640, 400))))
        except Exception as e:  # collected, then asserted below
            errors.append(e)

    threads = [threading.Thread(target=agent) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == [] and replies == [REPLY] * 8
    assert server.model_lists == 1
    assert len([r for r in server.requests if r.get("max_tokens") == 1]) == 2  # one token probe pair


def _valid(value, schema) -> bool:
    """The subset of JSON Schema that reply_schema uses."""
    if "anyOf" in schema:
        return any(_valid(value, s) for s in schema["anyOf"])
    if "enum" in schema and value not in schema["enum"]:
        return False
    kind = schema.get("type")
    if kind == "object":
        props = schema["properties"]
        return (isinstance(value, dict) and set(schema["required"]) <= set(value) <= set(props)
                and all(_valid(v, props[k]) for k, v in value.items()))
    if kind == "array":
        return (isinstance(value, list) and schema["minItems"] <= len(value) <= schema["maxItems"]
                and all(_valid(v, schema["items"]) for v in value))
    if kind == "integer":
        return isinstance(value, int) and schema["minimum"] <= value <= schema["maximum"]
    if kind == "string":
        return isinstance(value, str) and len(value) <= schema["maxLength"]
    return True


def _bounded(schema) -> bool:
    """Every leaf is an enum or has explicit bounds, so even a random model's reply ends."""
    if "anyOf" in schema:
        return all(_bounded(s) for s in schema["anyOf"])
    if "enum" in schema:
        return True
    kind = schema["type"]
    if kind == "object":
        return schema["additionalProperties"] is False and all(_bounded(s) for s in schema["properties"].values())
    if kind == "array":
        return "maxItems" in schema and _bounded(schema["items"])
    if kind == "integer":
        return "minimum" in schema and "maximum" in schema
    return kind == "string" and "maxLength" in schema


def test_reply_schema_follows_the_policy():
    policy = Policy(Allow(actions=["left_click", "type", "key", "scroll", "wait", "terminate"],
                          keys=["tab", "enter", "ctrl+a"], max_text_len=200))
    schema = reply_schema(policy)
    assert _bounded(schema)
    variants = schema["properties"]["arguments"]["anyOf"]
    assert {v["properties"]["action"]["enum"][0] for v in variants} == set(policy.actions)

    def ok(args):
        return _valid({"name": "computer_use", "arguments": args}, schema)

    assert ok({"action": "left_click", "coordinate": [0, 1000]})
    assert ok({"action": "key", "keys": ["ctrl", "a"]})
    assert ok({"action": "type", "text": "Ada Lovelace"})
    assert ok({"action": "terminate", "status": "success"})
    assert not ok({"action": "right_click", "coordinate": [1, 1]})  # not allowed by the task
    assert not ok({"action": "key", "keys": ["alt", "f4"]})
    assert not ok({"action": "left_click", "coordinate": [1001, 5]})
    assert not ok({"action": "type", "text": "x" * 201})
    assert not ok({"action": "wait", "time": 61})


def test_message_conversion_keeps_text_and_rejects_unknown_parts():
    cfg = dict(QWEN3_VL_IMAGE)
    wire = to_openai_messages([{"role": "assistant", "content": [{"type": "text", "text": "<tool_call>"},
                                                                 {"type": "text", "text": "{}</tool_call>"}]},
                               {"role": "user", "content": "plain"}], cfg)
    assert wire == [{"role": "assistant", "content": "<tool_call>{}</tool_call>"}, {"role": "user", "content": "plain"}]
    with pytest.raises(BackendError, match="'video'"):
        to_openai_messages([{"role": "user", "content": [{"type": "video", "video": None}]}], cfg)


@pytest.mark.slow
def test_vlagent_run_with_server_down_ends_with_error(tmp_path):
    """The whole command: a sandbox starts, the first step finds no server, the run ends `error`."""
    import subprocess
    import sys
    from pathlib import Path

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
    task = Path(__file__).resolve().parents[2] / "tasks" / "fill_form.yaml"
    proc = subprocess.run([sys.executable, "-c", "from agent.cli import main; main()", "run", str(task),
                           "--backend", "openai", "--base-url", url, "--model", MODEL,
                           "--trace", str(tmp_path / "trace"), "--json"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    assert (result["status"], result["reason"]) == ("error", f"cannot reach {url}: connection refused")
    assert json.loads((tmp_path / "trace" / "result.json").read_text())["status"] == "error"
