"""The HTTP side of `vlagent serve`: OpenAI-compatible chat completions for many agents.

    GET  /health               200 while the scheduler runs, 503 with the reason after it failed
    GET  /v1/models            the one served model
    POST /v1/chat/completions  greedy, non-streaming, one choice

A request carries what `--backend openai` sends: the rendered chat with screenshots as data URLs
(already resized the way the processor resizes them) and a JSON schema of the replies the task's
policy accepts. The prompt goes through the model's own processor and chat template, exactly as
in the transformers backend; the schema is read back into that policy (action kinds, key chords,
text bound) and decoding is constrained by the same native-reply grammar as `vlagent run`
(agent/backends/grammar.py), so the reply is the same `<tool_call>` text a local run would get.

Refusals say what to change, in a 4xx the client shows: a prompt plus its reply budget larger than
an agent's KV region (400), a schema other than vlagent's (400), another model name (404).
"""
from __future__ import annotations

import base64
import errno
import functools
import hashlib
import io
import json
import threading
import time
import uuid
from collections import OrderedDict
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from agent.errors import BackendError, VlagentError

DEFAULT_MAX_TOKENS = 256  # when a request names none (a native reply is ~40 tokens)
MAX_BODY_BYTES = 256 * 2 ** 20  # a request with a few full-HD PNGs is ~10-30 MB


class Refused(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def policy_from_schema(schema: dict):
    """The Policy whose reply_schema (agent/backends/openai.py) this is, or None for another schema."""
    from actions.policy import Allow, Policy
    from agent.backends.grammar import default_chords

    try:
        if schema["properties"]["name"]["enum"] != ["computer_use"]:
            return None
        variants = schema["properties"]["arguments"]["anyOf"]
        actions, keys, text = [], None, 500  # no text action: the bound does not matter
        for v in variants:
            props = v["properties"]
            actions.append(props["action"]["enum"][0])
            if "keys" in props:
                chords = [tuple(c) for c in props["keys"]["enum"]]
                keys = None if set(chords) == set(default_chords()) else ["+".join(c) for c in chords]
            if "text" in props:
                text = int(props["text"]["maxLength"])
        return Policy(Allow(actions=actions, keys=keys, max_text_len=text))
    except (KeyError, IndexError, TypeError, ValueError):
        return None


def check_fits(model, agents: int, context: int, screen, history: int):
    """The memory plan for these agents on the model's device (None on the CPU); raises with how
    many fit when they do not, before anything is allocated."""
    import torch
    from agent.backends.budget import plan_agents

    device = next(model.parameters()).device
    if device.type != "cuda":
        return None
    free, _ = torch.cuda.mem_get_info(device)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    p = plan_agents(model.config, free + weights, agents, screen, history=history, context=context,
                    device=torch.cuda.get_device_name(device), params=sum(p.numel() for p in model.parameters()),
                    dtype_bytes=next(model.parameters()).element_size())
    if not p.fits:
        raise VlagentError(f"{agents} agents of {context:,} KV tokens each do not fit the {free / 2 ** 30:.1f} GiB "
                           f"free on {p.device}: {p.agents_fit} fit (lower --agents or --context; "
                           "`vlagent budget --agents N` plans a card)")
    return p


class ServedModel:
    """The model, its processor and grammar, the batcher and the scheduler: what the handler calls."""

    def __init__(self, model: str, agents: int, context: int | None = None, *, screen=(1920, 1080),
                 history: int = 4, name: str | None = None, device: str | None = None, dtype=None,
                 graphs: bool | None = None):
        """`context`: KV tokens per agent (default: what `screen` and `history` need, see
        agent.backends.budget.agent_context). Refuses to start when the agents would not fit."""
        from agent.backends import load_backend
        from agent.backends.budget import agent_context, vision_per_agent
        from agent.serve.batch import Batcher
        from agent.serve.scheduler import Scheduler

        self.name = name or model
        context = context or agent_context(screen, history)
        self.backend = load_backend(model, "transformers", device=device, dtype=dtype, engine=False)
        self.processor, self.tokenizer = self.backend.processor, self.backend.tokenizer
        if self.backend.constrainer is None:
            raise VlagentError("vlagent serve needs xgrammar: replies must follow the policy's grammar")
        self.plan = check_fits(self.backend.model, agents, context, screen, history)
        self.batcher = Batcher(self.backend.model, agents, context, vision_cache=agents * vision_per_agent(history),
                               graphs=graphs)
        self.batcher.warmup()
        if self.plan is not None:  # the plan is for serving: loading and fusing the weights peak higher, once
            import torch
            torch.cuda.reset_peak_memory_stats()
        eos = self.backend.model.generation_config.eos_token_id
        self.stops = set(eos if isinstance(eos, (list, tuple, set)) else [eos]) - {None}
        self._lock = threading.Lock()  # the tokenizer, processor and grammar compiler: one caller at a time
        self._images: OrderedDict[str, object] = OrderedDict()  # data URL digest -> PIL image
        # Forced strings (e.g. '", "coordinate": [') are fed in their own tokenization, as in `vlagent run`.
        # The device thread asks; a handful of strings recur, so it rarely waits for the lock.
        self.batcher.engine.tokenize = self._forced_tokens
        self.scheduler = Scheduler(self.batcher).start()

    @functools.lru_cache(maxsize=1024)
    def _forced_tokens(self, text: str) -> tuple[int, ...]:
        with self._lock:
            return tuple(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    @property
    def context(self) -> int:
        return self.batcher.scratch  # usable slots per agent

    def close(self):
        self.scheduler.stop()

    def memory(self) -> dict:
        """What the plan predicted and the device's high-water mark so far (GiB; CUDA only)."""
        b = self.batcher
        return {"agents": b.agents, "context_per_agent": b.context,
                "peak_gib": round(b.peak_bytes / 2 ** 30, 3) if self.plan else None,
                "planned_peak_gib": self.plan.predicted_peak_gib if self.plan else None}

    # ---- a request into token ids, images and a grammar

    def _image(self, url: str):
        from PIL import Image

        if not url.startswith("data:"):
            raise Refused(400, "images must be data: URLs (the server fetches nothing)")
        digest = hashlib.blake2b(url.encode(), digest_size=16).hexdigest()
        with self._lock:
            hit = self._images.get(digest)
            if hit is not None:
                self._images.move_to_end(digest)
                return hit
        try:
            image = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB")
        except Exception as e:
            raise Refused(400, f"cannot read an image: {e}") from None
        with self._lock:  # the same objects next step: their pixels and encodings are cached by identity
            self._images[digest] = image
            while len(self._images) > self.batcher.vision_size:
                self._images.popitem(last=False)
        return image

    def messages(self, wire: list) -> list[dict]:
        """OpenAI chat messages -> the HF messages the chat template takes (PIL images)."""
        out = []
        for m in wire:
            content = m.get("content")
            if isinstance(content, str):
                out.append({"role": m["role"], "content": [{"type": "text", "text": content}]})
                continue
            parts = []
            for p in content or []:
                if p.get("type") == "text":
                    parts.append({"type": "text", "text": p["text"]})
                elif p.get("type") == "image_url":
                    parts.append({"type": "image", "image": self._image(p["image_url"]["url"])})
                else:
                    raise Refused(400, f"unsupported message part {p.get('type')!r}")
            out.append({"role": m["role"], "content": parts})
        return out

    def prompt(self, messages: list[dict]):
        """(token ids, EngineImages): exactly what the transformers backend hands its engine in
        `vlagent run` (an image's patches are made only if the engine has to encode it)."""
        with self._lock:  # the backend's template and piece caches serve one caller at a time
            try:
                return self.backend.engine_inputs(messages)
            except BackendError as e:
                raise Refused(400, str(e)) from None

    def grammar(self, response_format):
        """(matcher or None, reply token bound) for the request's response_format."""
        from agent.backends.grammar import max_reply_bytes

        if not response_format or response_format.get("type") == "text":
            return None, None
        schema = (response_format.get("json_schema") or {}).get("schema")
        policy = policy_from_schema(schema) if isinstance(schema, dict) else None
        if policy is None:
            raise Refused(400, "response_format: only the computer_use JSON schema that vlagent sends is supported")
        with self._lock:
            matcher = self.backend.constrainer.matcher(policy)
        return matcher, max_reply_bytes(policy) + 1  # + the stop token

    def chat(self, body: dict, client: str | None = None) -> dict:
        from agent.serve.scheduler import Request

        if body.get("model") not in (None, self.name):
            raise Refused(404, f"model {body.get('model')!r} not found; this server serves {self.name!r}")
        if body.get("stream"):
            raise Refused(400, "streaming is not supported")
        if int(body.get("n") or 1) != 1:
            raise Refused(400, "only one choice per request (n=1)")
        if not isinstance(body.get("messages"), list) or not body["messages"]:
            raise Refused(400, "messages: a non-empty list is required")
        matcher, bound = self.grammar(body.get("response_format"))
        ids, images = self.prompt(self.messages(body["messages"]))
        asked = body.get("max_completion_tokens") or body.get("max_tokens") or DEFAULT_MAX_TOKENS
        max_new = min(int(asked), bound) if bound else int(asked)
        if max_new < 1:
            raise Refused(400, f"max_tokens must be at least 1, got {asked}")
        if len(ids) + max_new > self.context:
            raise Refused(400, f"the prompt ({len(ids)} tokens) plus its reply budget ({max_new}) exceeds the "
                               f"{self.context} tokens of KV an agent has on this server; start `vlagent serve` "
                               "with a larger --context (see `vlagent budget --agents N`), or send fewer screenshots")
        reply = self.scheduler.submit(Request(ids, images, max_new, self.stops, matcher, client)).result()
        with self._lock:
            text = self.tokenizer.decode(reply.tokens, skip_special_tokens=True)
        return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
                "model": self.name,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "finish_reason": reply.finish}],
                "usage": {"prompt_tokens": reply.prompt_tokens, "completion_tokens": len(reply.tokens),
                          "total_tokens": reply.prompt_tokens + len(reply.tokens),
                          "prompt_tokens_details": {"cached_tokens": reply.reused_tokens}},
                "timings": {"total_ms": round(reply.total_ms, 2)}}


class Handler(BaseHTTPRequestHandler):
    served: ServedModel  # set on the subclass made per server
    protocol_version = "HTTP/1.1"  # keep-alive: the openai client reuses its connections
    timeout = 300  # s of socket silence: a client that stops sending mid-request gives its thread back

    def log_message(self, fmt, *args):  # quiet: one line per request is noise for an agent suite
        pass

    def _send(self, status: int, body: dict):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str):
        kind = "invalid_request_error" if status < 500 else "server_error"
        self._send(status, {"error": {"message": message, "type": kind, "code": status}})

    def do_GET(self):
        s = self.served
        if self.path.rstrip("/") == "/health":
            if s.scheduler.error:
                self._error(503, s.scheduler.error)
            else:
                self._send(200, {"status": "ok", "model": s.name, **s.memory(),
                                 "stats": {k: round(v, 1) for k, v in s.scheduler.stats.items()}})
        elif self.path.rstrip("/") == "/v1/models":
            self._send(200, {"object": "list", "data": [{"id": s.name, "object": "model", "owned_by": "vlagent"}]})
        else:
            self._error(404, f"no route {self.path}")

    def do_POST(self):
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0 or length > MAX_BODY_BYTES:  # (a negative one would read until the client hangs up)
            self.close_connection = True  # its body is not read: no next request on this connection
            if length < 0:
                self._error(400, "malformed request: Content-Length must be a byte count")
            else:
                self._error(413, f"request body over {MAX_BODY_BYTES // 2 ** 20} MiB")
            return
        raw = self.rfile.read(length)
        if self.path.rstrip("/") != "/v1/chat/completions":
            self._error(404, f"no route {self.path}")
            return
        try:
            body = json.loads(raw)
        except (ValueError, RecursionError) as e:  # (nesting deep enough to exhaust the parser's stack)
            self._error(400, f"malformed request: not JSON: {type(e).__name__}: {str(e)[:200]}")
            return
        try:
            self._send(200, self.served.chat(body, "%s:%s" % self.client_address[:2]))
        except Refused as e:
            self._error(e.status, e.message)
        except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as e:
            self._error(400, f"malformed request: {type(e).__name__}: {e}")
        except VlagentError as e:  # the device failed (503: the client retries), or the engine refused (400)
            from agent.serve.scheduler import DeviceError
            self._error(503 if isinstance(e, DeviceError) else 400, str(e))
        except Exception as e:  # keep serving the others; the client sees the reason
            self._error(500, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")


def check_listen(host: str, port: int) -> None:
    """Fail in a second, not after loading the model, when the address cannot be listened on."""
    try:
        probe = ThreadingHTTPServer((host, port), BaseHTTPRequestHandler)  # (the same reuse rules)
    except OSError as e:
        raise VlagentError(_listen_error(host, port, e)) from None
    probe.server_close()


def _listen_error(host: str, port: int, e: OSError) -> str:
    why = "in use (another server? pick another --port)" if e.errno == errno.EADDRINUSE else (e.strerror or str(e))
    return f"cannot listen on {host}:{port}: {why}"


class Server:
    """A ServedModel behind an HTTP server on a thread (`vlagent serve` runs serve_forever)."""

    def __init__(self, served: ServedModel, host: str = "127.0.0.1", port: int = 8000):
        handler = type("BoundHandler", (Handler,), {"served": served})
        self.served = served
        try:
            self.httpd = ThreadingHTTPServer((host, port), handler)
        except OSError as e:
            raise VlagentError(_listen_error(host, port, e)) from None
        self.httpd.daemon_threads = True
        self.base_url = f"http://{host}:{self.httpd.server_address[1]}/v1"
        self._thread: threading.Thread | None = None

    def start(self) -> "Server":
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="vlagent-serve-http", daemon=True)
        self._thread.start()
        return self

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.served.close()

    def __enter__(self) -> "Server":
        return self.start()

    def __exit__(self, *exc):
        self.stop()
