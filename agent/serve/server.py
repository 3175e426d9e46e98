"""The model side of `vlagent serve`: a chat request into token ids, images and a grammar, handed
to the scheduler; the reply back as OpenAI's chat completion (or its stream of chunks). The HTTP
routes, authentication and limits are agent/serve/app.py (Starlette on uvicorn), whose `Server` runs
them on a thread (tests, benchmarks) or in the foreground (`vlagent serve`).

A request carries what `--backend openai` sends: the rendered chat with screenshots as data URLs
(already resized the way the processor resizes them) and a JSON schema of the replies the task's
policy accepts. The prompt goes through the model's own processor and chat template, exactly as
in the transformers backend; the schema is read back into that policy (action kinds, key chords,
text bound) and decoding is constrained by the same native-reply grammar as `vlagent run`
(agent/backends/grammar.py), so the reply is the same `<tool_call>` text a local run would get.

Refusals say what to change, in a 4xx the client shows: a prompt plus its reply budget larger than
an agent's KV region (400), a schema other than vlagent's (400), another model name (404), an image
over the pixel bound (413).

Conversations are private: a request reuses KV only from the region its own conversation filled
(`Batcher(private=True)`), so its `cached_tokens` and its time say nothing about another client's prompt.
"""
from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import io
import threading
import time
import uuid
from collections import OrderedDict
from typing import Callable

from agent.errors import BackendError, VlagentError
from agent.serve.batch import Batcher

DEFAULT_MAX_TOKENS = 256  # when a request names none (a native reply is ~40 tokens)
MAX_IMAGE_PIXELS = 7680 * 4320  # one decoded image (8K); a 1080p screenshot is 2.1M
MAX_IMAGES = 64  # per request (the loop sends --history-images, 4 by default)


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
        return Policy(Allow(actions=actions, keys=keys, max_text_len=text), can_ask="ask_user" in actions)
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
                 graphs: bool | None = None, max_image_pixels: int = MAX_IMAGE_PIXELS):
        """`context`: KV tokens per agent (default: what `screen` and `history` need, see
        agent.backends.budget.agent_context). Refuses to start when the agents would not fit."""
        from agent.backends import load_backend
        from agent.backends.budget import agent_context, vision_per_agent
        from agent.serve.scheduler import Scheduler

        self.name = name or model
        context = context or agent_context(screen, history)
        self.backend = load_backend(model, "transformers", device=device, dtype=dtype, engine=False)
        self.processor, self.tokenizer = self.backend.processor, self.backend.tokenizer
        if self.backend.constrainer is None:
            raise VlagentError("vlagent serve needs xgrammar: replies must follow the policy's grammar")
        self.plan = check_fits(self.backend.model, agents, context, screen, history)
        self.max_image_pixels = max_image_pixels
        self.batcher = Batcher(self.backend.model, agents, context, private=True, vision_cache=agents * vision_per_agent(history),
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
        if not url.startswith("data:"):
            raise Refused(400, "images must be data: URLs (the server fetches nothing)")
        digest = hashlib.blake2b(url.encode(), digest_size=16).hexdigest()
        with self._lock:
            hit = self._images.get(digest)
            if hit is not None:
                self._images.move_to_end(digest)
                return hit
        try:
            data = base64.b64decode(url.split(",", 1)[1], validate=True)
        except (IndexError, binascii.Error, ValueError) as e:
            raise Refused(400, f"cannot read an image: not base64: {e}") from None
        image = self.decode(data)
        with self._lock:  # the same objects next step: their pixels and encodings are cached by identity
            self._images[digest] = image
            while len(self._images) > self.batcher.vision_size:
                self._images.popitem(last=False)
        return image

    def decode(self, data: bytes):
        """Image bytes -> RGB, its size checked before its pixels are decoded (a small PNG can
        hold a huge image)."""
        from PIL import Image

        try:
            with Image.open(io.BytesIO(data)) as im:
                w, h = im.size
                if w * h > self.max_image_pixels:
                    raise Refused(413, f"an image of {w}x{h} pixels is over this server's bound of "
                                       f"{self.max_image_pixels:,} pixels")
                return im.convert("RGB")
        except Refused:
            raise
        except Exception as e:  # PIL raises many kinds on bad bytes (and DecompressionBombError)
            raise Refused(400, f"cannot read an image: {e}") from None

    def messages(self, wire: list) -> list[dict]:
        """OpenAI chat messages -> the HF messages the chat template takes (PIL images)."""
        out = []
        images = sum(1 for m in wire if isinstance(m.get("content"), list)
                     for p in m["content"] if isinstance(p, dict) and p.get("type") == "image_url")
        if images > MAX_IMAGES:
            raise Refused(413, f"{images} images in one request; this server takes at most {MAX_IMAGES}")
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

    def prepare(self, body: dict, client: str | None = None):
        """Check a chat request and make it the scheduler's Request (blocking: images, template,
        tokenizer). `client` is the conversation's identity: only its own region is reused."""
        from agent.serve.scheduler import Request

        if body.get("model") not in (None, self.name):
            raise Refused(404, f"model {body.get('model')!r} not found; this server serves {self.name!r}")
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
        return Request(ids, images, max_new, self.stops, matcher, client)

    def submit(self, request):
        """The request's Future (its Reply), from the scheduler's device thread."""
        return self.scheduler.submit(request)

    def text(self, tokens: list[int]) -> str:
        with self._lock:
            return self.tokenizer.decode(tokens, skip_special_tokens=True)

    def completion(self, reply, cid: str | None = None) -> dict:
        """The Reply as OpenAI's chat.completion object."""
        return {"id": cid or f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
                "model": self.name,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": self.text(reply.tokens)},
                             "finish_reason": reply.finish}],
                "usage": usage(reply), "timings": {"total_ms": round(reply.total_ms, 2)}}

    def chat(self, body: dict, client: str | None = None) -> dict:
        """One request, start to end, blocking (what the HTTP route does, without the HTTP)."""
        return self.completion(self.submit(self.prepare(body, client)).result())


class TextStream:
    """A reply's tokens in as they come, its text out as it becomes whole. A byte-level token can
    hold part of a character: a piece never ends inside one, and the pieces add up to the text of
    the whole reply. Each push decodes only the tokens since the last piece shown (and those of
    that piece, for the spacing between them)."""

    def __init__(self, decode: Callable[[list[int]], str]):
        self.decode = decode
        self.tokens: list[int] = []
        self.start = self.read = 0  # tokens[start:read] made the last piece shown

    def push(self, tokens: list[int]) -> str:
        self.tokens += tokens
        shown = self.decode(self.tokens[self.start:self.read])
        text = self.decode(self.tokens[self.start:])
        if len(text) <= len(shown) or text.endswith("\ufffd"):  # nothing new, or a character cut short
            return ""
        self.start, self.read = self.read, len(self.tokens)
        return text[len(shown):]

    def rest(self) -> str:
        """What is left at the end (a reply may end inside a character: shown as the decoder shows it)."""
        shown = self.decode(self.tokens[self.start:self.read])
        text = self.decode(self.tokens[self.start:])
        self.start = self.read = len(self.tokens)
        return text[len(shown):]


def usage(reply) -> dict:
    return {"prompt_tokens": reply.prompt_tokens, "completion_tokens": len(reply.tokens),
            "total_tokens": reply.prompt_tokens + len(reply.tokens),
            "prompt_tokens_details": {"cached_tokens": reply.reused_tokens}}
