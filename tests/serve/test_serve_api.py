"""`vlagent serve` as any OpenAI client sees it: the official `openai` Python client, streaming
included, an API key, and the bounds on bodies, images and requests in flight (CPU, tiny model)."""
from __future__ import annotations

import base64
import io
import json
import threading
import time
import urllib.error
import urllib.request

import openai
import pytest
from PIL import Image

from actions.policy import Policy
from agent.backends.openai import OpenAIBackend, reply_schema
from test_serve import CONTEXT, conversation, wire
from test_transformers_backend import FILL_FORM

KEY = "sk-test-0123456789"


@pytest.fixture(scope="module")
def server():
    from agent.serve.app import Limits
    from agent.serve.app import ServedModel, Server

    served = ServedModel("tiny-random", 2, CONTEXT, device="cpu", max_image_pixels=2000 * 1500)
    with Server(served, port=0, limits=Limits(api_key=KEY, in_flight=2, body_bytes=8 * 2 ** 20)) as srv:
        yield srv


def sdk(srv, key=KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=srv.base_url, api_key=key, max_retries=0, timeout=120)


SCHEMA = {"type": "json_schema", "json_schema": {"name": "computer_use", "schema": reply_schema(Policy(FILL_FORM))}}


def test_the_official_client_gets_the_same_reply_streamed_or_not(server):
    client = sdk(server)
    assert [m.id for m in client.models.list()] == ["tiny-random"]
    messages = wire(conversation(3, 1))
    whole = client.chat.completions.create(model="tiny-random", messages=messages, response_format=SCHEMA)
    text = whole.choices[0].message.content
    assert text.startswith("<tool_call>") and whole.choices[0].finish_reason == "stop"
    assert whole.usage.prompt_tokens > 1000 and whole.usage.completion_tokens > 5
    chunks = list(client.chat.completions.create(model="tiny-random", messages=messages, response_format=SCHEMA,
                                                 stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(pieces) > 2  # token by token (a forced run and each choice after it), not the reply at the end
    streamed = "".join(pieces)
    assert streamed == text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    # vlagent's own client (agent.backends.openai) with the key in its environment gets the same
    backend = OpenAIBackend("tiny-random", server.base_url, api_key=KEY, processor=server.served.processor)
    assert backend.generate(conversation(3, 1), Policy(FILL_FORM)) == text


def test_without_the_key_every_api_route_is_refused(server):
    for key in ("wrong", ""):
        with pytest.raises(openai.AuthenticationError) as e:
            sdk(server, key or "EMPTY").chat.completions.create(model="tiny-random", messages=[{"role": "user", "content": "hi"}])
        assert "API key" in str(e.value)
        with pytest.raises(openai.AuthenticationError):
            sdk(server, key or "EMPTY").models.list()
    with urllib.request.urlopen(server.base_url.removesuffix("/v1") + "/health", timeout=10) as r:
        assert json.load(r)["status"] == "ok"  # process supervisors need no key


def png(w: int, h: int) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), "white").save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def test_an_image_over_the_pixel_bound_and_a_body_over_the_size_bound_are_refused(server):
    client = sdk(server)
    big = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": png(4000, 3000)}},
                                        {"type": "text", "text": "hi"}]}]  # a small PNG, 12 M pixels decoded
    with pytest.raises(openai.APIStatusError) as e:
        client.chat.completions.create(model="tiny-random", messages=big)
    assert e.value.status_code == 413 and "4000x3000" in str(e.value)
    huge = [{"role": "user", "content": "x" * (9 * 2 ** 20)}]
    with pytest.raises(openai.APIStatusError) as e:
        client.chat.completions.create(model="tiny-random", messages=huge)
    assert e.value.status_code == 413 and "over 8 MiB" in str(e.value)
    ok = client.chat.completions.create(model="tiny-random", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    assert ok.choices[0].message.content is not None


def test_requests_past_the_in_flight_bound_get_429_and_the_others_are_served(server):
    body = json.dumps({"model": "tiny-random", "messages": wire(conversation(5, 2)), "max_tokens": 20}).encode()
    codes: list[int] = []

    def one():
        req = urllib.request.Request(f"{server.base_url}/chat/completions", data=body,
                                     headers={"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"})
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                codes.append(r.status)
        except urllib.error.HTTPError as e:
            codes.append(e.code)
            if e.code == 429:
                assert e.headers["Retry-After"] == "1" and "in flight" in json.load(e)["error"]["message"]

    threads = [threading.Thread(target=one) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert sorted(set(codes)) == [200, 429], codes
    assert codes.count(200) >= 2


def test_vlagents_client_keeps_its_conversation_across_connections(server):
    """The client sends its conversation id: its next step reuses its KV even on a new connection
    (a client's pool closes idle connections after a few seconds)."""
    policy = Policy(FILL_FORM)
    backend = OpenAIBackend("tiny-random", server.base_url, api_key=KEY, processor=server.served.processor)
    backend.generate(conversation(21, 0), policy)
    before = server.served.scheduler.stats["reused_tokens"]
    backend._client.close()  # (the next request opens a new connection)
    backend._client = None
    backend.generate(conversation(21, 1), policy)
    assert server.served.scheduler.stats["reused_tokens"] - before > 1000


def test_an_unconstrained_stream_comes_in_pieces_that_add_up_to_the_reply(server):
    """Without a grammar every token is a choice: a piece per decode pass, and the pieces are the
    reply the same request gets whole (greedy)."""
    client = sdk(server)
    messages = [{"role": "user", "content": "Schreib etwas auf Deutsch, 日本語, emoji 🙂"}]
    whole = client.chat.completions.create(model="tiny-random", messages=messages, max_tokens=48)
    text = whole.choices[0].message.content
    chunks = list(client.chat.completions.create(model="tiny-random", messages=messages, max_tokens=48, stream=True,
                                                 stream_options={"include_usage": True}))
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(pieces) > 10 and "".join(pieces) == text
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens == 48


def test_pieces_never_split_a_character(server):
    """Fed one token at a time (the Qwen tokenizer cuts é, 世 and 🙂 into byte tokens), each piece
    holds whole characters, and they add up to the text."""
    from agent.serve.server import TextStream

    tok = server.served.tokenizer
    text = "Grüße, 世界! 🙂🙂 naïve café"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    stream = TextStream(lambda t: tok.decode(t, skip_special_tokens=True))
    pieces = [stream.push([i]) for i in ids] + [stream.rest()]
    assert "".join(pieces) == text and not any("\ufffd" in p for p in pieces)
    assert len([p for p in pieces if p]) < len(ids)  # some characters took more than one token


def test_a_stream_its_client_closes_is_cancelled_and_frees_its_region(server):
    sched = server.served.scheduler
    before = dict(sched.stats)
    stream = sdk(server).chat.completions.create(model="tiny-random", messages=[{"role": "user", "content": "go on"}],
                                                 max_tokens=3000, stream=True)
    got = 0
    for c in stream:
        got += bool(c.choices and c.choices[0].delta.content)
        if got == 3:
            break
    stream.close()  # the client hangs up mid-reply
    deadline = time.monotonic() + 60
    while sched.stats["cancelled"] == before["cancelled"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sched.stats["cancelled"] == before["cancelled"] + 1
    assert sched.stats["new_tokens"] - before["new_tokens"] < 3000  # it did not decode to its budget
    assert not any(r.busy for r in server.served.batcher.regions)
    ok = sdk(server).chat.completions.create(model="tiny-random", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    assert ok.choices[0].message.content is not None and not sched.error


def test_a_client_that_leaves_mid_stream_leaves_the_server_serving(server):
    """The stream's reader goes away while the device works on its request: the request's slot is
    given back when the device is done, and the scheduler goes on (a cancelled future it later
    completes would have stopped it)."""
    import socket
    from urllib.parse import urlparse

    url = urlparse(server.base_url)
    body = json.dumps({"model": "tiny-random", "messages": wire(conversation(6, 2)), "max_tokens": 30,
                       "stream": True}).encode()
    for _ in range(3):
        with socket.create_connection((url.hostname, url.port), timeout=30) as sock:
            sock.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
                         f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
            sock.recv(200)  # the first bytes of the stream, then hang up
    patient = openai.OpenAI(base_url=server.base_url, api_key=KEY, max_retries=20, timeout=120)  # 429s wait
    ok = patient.chat.completions.create(model="tiny-random", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    assert ok.choices[0].message.content is not None and not server.served.scheduler.error
    for _ in range(2):  # the slots were given back: no 429 any more
        assert sdk(server).chat.completions.create(model="tiny-random", messages=[{"role": "user", "content": "hi"}],
                                                   max_tokens=2).choices
