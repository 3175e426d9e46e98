"""`--backend openai`: any OpenAI-compatible chat server (vLLM, SGLang, ...) serving Qwen3-VL.

The caller renders the native prompt; this backend only ships it. Screenshots go out as base64
PNG parts, already resized the way the local Qwen3-VL processor resizes them (multiples of
32 px within its pixel bounds), so the server sees the same image grid as the local backend.
Once per backend it compares the server's prompt-token count for one screenshot with the local
processor's and warns when they differ: serving stacks that change preprocessing are known to
collapse Qwen3-VL's grounding. Replies are constrained by a JSON schema derived from the policy
where the server takes one; the loop still parses, validates and policy-checks every reply.
"""
from __future__ import annotations

import base64
import io
import os
import uuid
import random
import threading
import time
import warnings
from typing import Any

from PIL import Image

from actions.policy import MAX_SCROLL_PX, MAX_WAIT_S, Policy
from actions.schema import MAX_MARKS, POINTER_ACTIONS
from agent.errors import BackendError
from agent.backends.qwen_images import image_config, image_tokens, resized_size
from agent.backends.base import BackendBase, Constraint, JsonSchema
from agent.backends.families import NATIVE, detect, family
from agent.backends.grammar import Spec
from agent.backends.json_bounds import bounded_schema
from agent.backends.image_cache import PerImage

TIMEOUT_S = 120.0  # one reply; a 2B model answers in seconds, a loaded server may queue
CONNECT_TIMEOUT_S = 5.0  # a server that does not accept within this is down
MAX_RETRIES = 3  # transient errors (connection reset, refused, 429, 5xx) retried this often
BACKOFF_S = 0.5  # first retry delay; doubles each retry, with jitter so agents do not retry in step
MAX_BACKOFF_S = 8.0
MAX_TOKENS = 256  # a native reply is ~40 tokens; the schema bounds every field
MAX_SCHEMA_TEXT_CHARS = 500  # strings the schema allows; longer text is rare and costs decode time
REPLY_OVERHEAD_TOKENS = 128  # the JSON around the longest string (the longest bare reply is ~110 chars)
MAX_CAUSE_DEPTH = 16  # exception chains walked for the root cause of a connection error
TRANSIENT_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})
# Qwen3-VL-2B-Instruct's image processor (preprocessor_config.json), used when no processor is given.
PROBE_TEXT = "Describe the screenshot."
_warned: set[tuple[str, str]] = set()  # (base_url, model) already warned about, once per process


class ImagePreprocessingWarning(UserWarning):
    """The server turns a screenshot into a different number of tokens than the local processor."""


def _bounded(constraint: JsonSchema) -> dict:
    """The schema with every number, string and array bounded for the token budget (the server's
    grammar then closes every reply in time); a schema too large for it goes as it is."""
    try:
        return bounded_schema(constraint.schema, constraint.max_tokens, lengths=True)
    except ValueError:
        return constraint.schema


class OpenAIBackend(BackendBase):
    remote = True  # the server may be anywhere: frames leave this machine (agent.desktop.mask)

    def __init__(self, model: str, base_url: str, api_key: str | None = None, timeout_s: float = TIMEOUT_S,
                 max_retries: int = MAX_RETRIES, processor: Any = None, max_tokens: int = MAX_TOKENS,
                 structured: bool = True, check_image_tokens: bool = True, backoff_s: float = BACKOFF_S,
                 format: str | None = None, options=None):
        """`format`: the served model's family (agent/backends/families.py; None: from its name);
        `options` (EngineOptions) is for in-process engines and ignored here."""
        self.model = model
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key or os.environ.get("VLAGENT_API_KEY") or os.environ.get("OPENAI_API_KEY") or "EMPTY"
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_tokens = max_tokens
        self.structured = structured  # set to False when the server refuses response_format
        self.check_image_tokens = check_image_tokens
        self.name = f"openai:{model}@{self.base_url}"
        self.conversation = uuid.uuid4().hex  # this agent's conversation, for the server's KV reuse
        self.reply_format = family(format) if format else detect(model)
        self.format = self.reply_format.name
        self.image_config = image_config(processor, model)
        self.image_tokens: tuple[int, int] | None = None  # (server, local) for one screenshot
        self._lock = threading.Lock()  # guards the one-time checks; requests run concurrently
        self._checked_model = False
        self._client_pid: int | None = None
        self._client = None
        self._encoded = PerImage()  # the PNG part of each screenshot while the history holds it

    # -- the Backend interface ------------------------------------------------------------------
    def generate(self, messages: list[dict], constraint: Constraint = None) -> str:
        """The server's reply. A Policy (or None) asks for one native tool call, a JsonSchema for one
        JSON value of that schema (bounded to close within its max_tokens); both go out as
        response_format where the server takes one."""
        other = not isinstance(constraint, JsonSchema) and self.reply_format is not NATIVE
        if other:  # another family's prompt; its format is not JSON, so no response_format
            messages = self.reply_format.adapt(messages, constraint)
        wire = to_openai_messages(messages, self.image_config, self._image_part)
        images = [p for m in wire if isinstance(m["content"], list) for p in m["content"] if p["type"] == "image_url"]
        self._check_once(messages if images else None)
        kwargs: dict[str, Any] = {"max_tokens": self.max_tokens, "temperature": 0.0}
        if other:
            kwargs["max_tokens"] = max(self.max_tokens, self.reply_format.max_reply_tokens(constraint))
        elif isinstance(constraint, JsonSchema):
            kwargs["max_tokens"] = constraint.max_tokens
            if self.structured:
                kwargs["response_format"] = {"type": "json_schema", "json_schema": {
                    "name": "answer", "strict": True, "schema": _bounded(constraint)}}
        elif self.structured:
            policy = constraint or Policy()
            kwargs["response_format"] = {"type": "json_schema", "json_schema": {
                "name": "computer_use", "strict": True, "schema": reply_schema(policy)}}
            kwargs["max_tokens"] = max(self.max_tokens, reply_max_tokens(policy))
        try:
            reply = self._chat(wire, **kwargs)
        except _Refused as e:
            if "response_format" in kwargs and _about_response_format(e.message):
                self.structured = False  # this server has no JSON-schema support: plain replies
                kwargs.pop("response_format")
                reply = self._chat(wire, **kwargs)
            else:
                raise self._refusal(e, bool(images)) from None
        text = _reply_text(reply, self.base_url)
        self.last_reply = text
        return self.reply_format.to_native(text) if other else text

    def _image_part(self, image: Image.Image) -> dict:
        """image_part, encoded once per image object: the loop hands the same objects for the
        screenshots it re-sends, and a PNG encode costs ~30 ms of CPU the server could use."""
        return self._encoded.get(image, lambda im: image_part(im, self.image_config))

    # -- one-time checks --------------------------------------------------------------------------
    def _check_once(self, messages: list[dict] | None) -> None:
        with self._lock:
            if not self._checked_model:
                self._check_model()
                self._checked_model = True
            if messages is not None and self.check_image_tokens and self.image_tokens is None:
                image = next(p["image"] for m in messages if isinstance(m["content"], list)
                             for p in m["content"] if p.get("type") == "image")
                self.image_tokens = self.compare_image_tokens(image)

    def _check_model(self) -> None:
        """Fail with one clear line when the server does not serve `model`."""
        try:
            served = [m.id for m in self._retry(lambda c: c.models.list().data)]
        except _Refused as e:
            if e.status == 404:  # a server without /models: the first request will tell
                return
            raise BackendError(f"{self.base_url}: {e.message}") from None
        if self.model not in served:
            raise BackendError(f"server {self.base_url} has no model {self.model!r}; it serves: {', '.join(served) or 'nothing'}")

    def compare_image_tokens(self, image: Image.Image) -> tuple[int, int]:
        """(server, local) prompt tokens taken by one screenshot; warns once when they differ.

        The server's count is the difference between the same prompt with and without the image,
        so no local tokenizer is needed."""
        part = {"type": "image", "image": image}
        with_image = [{"role": "user", "content": [part, {"type": "text", "text": PROBE_TEXT}]}]
        without = [{"role": "user", "content": [{"type": "text", "text": PROBE_TEXT}]}]
        counts = []
        for msgs in (with_image, without):
            try:
                reply = self._chat(to_openai_messages(msgs, self.image_config), max_tokens=1, temperature=0.0)
            except _Refused as e:
                raise self._refusal(e, msgs is with_image) from None
            counts.append(reply.usage.prompt_tokens if reply.usage else None)
        local = image_tokens(image.width, image.height, self.image_config)
        if None in counts:
            return (-1, local)  # the server reports no usage: nothing to compare
        server = counts[0] - counts[1]
        if server != local and (self.base_url, self.model) not in _warned:
            _warned.add((self.base_url, self.model))
            w, h = resized_size(image.width, image.height, self.image_config)
            warnings.warn(
                f"{self.base_url} turns a {image.width}x{image.height} screenshot into {server} prompt tokens, "
                f"the local Qwen3-VL processor into {local} ({w}x{h} px): the server preprocesses images "
                "differently, which is known to collapse Qwen3-VL's grounding (see docs/serving.md)",
                ImagePreprocessingWarning, stacklevel=2)
        return (server, local)

    # -- requests ---------------------------------------------------------------------------------
    @property
    def client(self):
        """One openai client per process (it is thread-safe; a forked child makes its own)."""
        if self._client is None or self._client_pid != os.getpid():
            import openai

            self._client = openai.OpenAI(
                base_url=self.base_url, api_key=self.api_key, max_retries=0,  # retries are ours
                # `vlagent serve` reuses a conversation's KV only for requests that carry its id
                # (agent/serve/app.py); other servers ignore the header
                default_headers={"X-Vlagent-Conversation": self.conversation},
                timeout=openai.Timeout(self.timeout_s, connect=min(CONNECT_TIMEOUT_S, self.timeout_s)))
            self._client_pid = os.getpid()
        return self._client

    def _chat(self, messages: list[dict], **kwargs):
        import openai

        try:
            reply = self._retry(lambda c: c.chat.completions.create(model=self.model, messages=messages, **kwargs))
        except (ValueError, TypeError, openai.APIResponseValidationError) as e:  # HTTP 200, but not a completion
            raise BackendError(f"{self.base_url} answered something that is not a chat completion "
                               f"({type(e).__name__}: {' '.join(str(e).split())[:120]})") from None
        choices = getattr(reply, "choices", None)  # a non-JSON body comes back as a str
        if not isinstance(choices, list) or not choices:
            raise BackendError(f"{self.base_url} answered without a completion (no 'choices'): "
                               f"{' '.join(str(reply).split())[:120]!r}")
        return reply

    def _retry(self, call):
        """call(client) with bounded exponential backoff on transient errors. Raises BackendError
        for a server that stays unreachable, _Refused for a request the server rejects."""
        import openai

        for attempt in range(self.max_retries + 1):
            delay = None
            try:
                return call(self.client)
            except openai.APITimeoutError:  # not retried: the server is busy with it, and a hung
                # server would otherwise hold the run for (max_retries + 1) x timeout_s
                raise BackendError(f"no reply from {self.base_url} within {self.timeout_s:g} s") from None
            except openai.APIConnectionError as e:
                if attempt == self.max_retries:
                    raise BackendError(f"cannot reach {self.base_url}: {_cause(e)}") from None
            except openai.APIStatusError as e:
                if e.status_code not in TRANSIENT_STATUS:
                    raise _Refused(e.status_code, _server_message(e)) from None
                if attempt == self.max_retries:
                    raise BackendError(f"{self.base_url} answered HTTP {e.status_code} {self.max_retries + 1} times: "
                                       f"{_server_message(e)}") from None
                delay = _retry_after(e)
            time.sleep(delay if delay is not None else backoff_s(attempt, self.backoff_s))
        raise AssertionError("unreachable")

    def _refusal(self, e: "_Refused", had_images: bool) -> BackendError:
        text = e.message.lower()
        if e.status == 404 or ("model" in text and ("does not exist" in text or "not found" in text)):
            return BackendError(f"server {self.base_url} has no model {self.model!r}: {e.message}")
        if had_images and any(w in text for w in ("image", "multimodal", "multi-modal", "vision")):
            return BackendError(f"server {self.base_url} does not take images for {self.model!r}: {e.message}")
        if e.status in (401, 403):
            return BackendError(f"{self.base_url} refused the API key (HTTP {e.status}); set VLAGENT_API_KEY")
        return BackendError(f"{self.base_url} rejected the request (HTTP {e.status}): {e.message}")


class _Refused(Exception):
    """The server answered with a non-transient error status."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def backoff_s(attempt: int, base_s: float = BACKOFF_S) -> float:
    """Exponential backoff with jitter, so agents sharing a server do not retry in lockstep."""
    return random.uniform(0.5, 1.0) * min(MAX_BACKOFF_S, base_s * 2 ** attempt)


def _retry_after(e) -> float | None:
    value = e.response.headers.get("retry-after") if e.response is not None else None
    try:
        return min(max(float(value), 0.0), MAX_BACKOFF_S) if value is not None else None
    except ValueError:
        return None


def _cause(e: BaseException) -> str:
    """The root cause of a connection error in a few words ("connection refused")."""
    for _ in range(MAX_CAUSE_DEPTH):
        if e.__cause__ is None and e.__context__ is None:
            break
        e = e.__cause__ or e.__context__
        if isinstance(e, ConnectionRefusedError) or "connection refused" in str(e).lower():
            return "connection refused"
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0][:200]


def _server_message(e) -> str:
    """The server's own error text, one line."""
    body = getattr(e, "body", None)  # the SDK unwraps {"error": {...}} already
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        body = body["error"]
    if isinstance(body, dict) and body.get("message"):
        return " ".join(str(body["message"]).split())[:300]
    text = str(getattr(e, "message", "") or e)
    return " ".join(text.split())[:300]


def _about_response_format(message: str) -> bool:
    text = message.lower()
    return any(w in text for w in ("response_format", "json_schema", "structured", "guided", "grammar"))


# -- images ----------------------------------------------------------------------------------------
def prepare_image(image: Image.Image, cfg: dict) -> Image.Image:
    """The image as the processor's PIL path resizes it (RGB, bicubic), so the server resizes no more."""
    image = image.convert("RGB")
    size = resized_size(image.width, image.height, cfg)
    return image if image.size == size else image.resize(size, Image.BICUBIC)


def image_part(image: Image.Image, cfg: dict) -> dict:
    buf = io.BytesIO()
    prepare_image(image, cfg).save(buf, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
    return {"type": "image_url", "image_url": {"url": url}}


def to_openai_messages(messages: list[dict], cfg: dict, encode=None) -> list[dict]:
    """HF chat messages with PIL images -> OpenAI chat messages. Text-only content becomes a plain
    string (what every server takes); content with images stays a list of parts."""
    encode = encode or (lambda image: image_part(image, cfg))
    out = []
    for m in messages:
        content = m["content"]
        if isinstance(content, str):
            out.append({"role": m["role"], "content": content})
            continue
        parts = []
        for p in content:
            if p["type"] == "text":
                parts.append({"type": "text", "text": p["text"]})
            elif p["type"] == "image":
                parts.append(encode(p["image"]))
            else:
                raise BackendError(f"cannot send a {p['type']!r} message part to an OpenAI-compatible server")
        if all(p["type"] == "text" for p in parts):
            out.append({"role": m["role"], "content": "".join(p["text"] for p in parts)})
        else:
            out.append({"role": m["role"], "content": parts})
    return out


# -- structured output -------------------------------------------------------------------------
COORD = {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 1000}, "minItems": 2, "maxItems": 2}
JSON_CHARS_PER_CHAR = 6  # a string character can be sent as \uXXXX; a token is at least one character


def _args(action: str, **props) -> dict:
    return {"type": "object", "properties": {"action": {"enum": [action]}, **props},
            "required": ["action", *props], "additionalProperties": False}


def text_limit(policy: Policy) -> int:
    """The longest string the schema lets through for this policy."""
    actions = Spec.of(policy).actions
    return min(policy.allow.max_text_len, MAX_SCHEMA_TEXT_CHARS) if {"type", "answer", "ask_user"} & set(actions) else 0


def reply_max_tokens(policy: Policy) -> int:
    """Tokens that always suffice to finish a reply the schema allows, even one of random weights."""
    return JSON_CHARS_PER_CHAR * text_limit(policy) + REPLY_OVERHEAD_TOKENS


def reply_schema(policy: Policy) -> dict:
    """A JSON schema for one native tool call (the bare object, without the <tool_call> tags) that
    only the policy's actions satisfy: the same action kinds and key chords as the local grammar
    (agent/backends/grammar.py), every field bounded by an enum, an integer range or a length."""
    spec = Spec.of(policy)
    text = {"type": "string", "maxLength": text_limit(policy)}
    builders = {
        "key": lambda a: _args(a, keys={"enum": [list(chord) for chord in spec.chords]}),
        "type": lambda a: _args(a, text=text),
        "answer": lambda a: _args(a, text=text),
        "ask_user": lambda a: _args(a, text={**text, "minLength": 1}),
        "wait": lambda a: _args(a, time={"type": "integer", "minimum": 0, "maximum": int(MAX_WAIT_S)}),
        "terminate": lambda a: _args(a, status={"enum": ["success", "failure"]}),
        "scroll": lambda a: _args(a, pixels={"type": "integer", "minimum": -MAX_SCROLL_PX, "maximum": MAX_SCROLL_PX},
                                  coordinate=COORD),
    }
    builders["hscroll"] = builders["scroll"]
    variants = []
    for action in spec.actions:
        if action in builders:
            variants.append(builders[action](action))
        elif action in POINTER_ACTIONS:  # the native format always gives the point ...
            variants.append(_args(action, coordinate=COORD))
            if spec.marks and action.endswith("_click") and action != "left_click_drag":  # ... or a mark (--marks)
                variants.append(_args(action, mark={"type": "integer", "minimum": 1, "maximum": MAX_MARKS}))
    return {"type": "object", "properties": {"name": {"enum": ["computer_use"]}, "arguments": {"anyOf": variants}},
            "required": ["name", "arguments"], "additionalProperties": False}


def _reply_text(reply, base_url: str) -> str:
    """The completion's text, with invalid Unicode (lone surrogates a server can send) made U+FFFD:
    it goes into the trace and back to the server in the next prompt."""
    content = getattr(getattr(reply.choices[0], "message", None), "content", None)
    if content is not None and not isinstance(content, str):
        raise BackendError(f"{base_url} answered a completion whose content is not text")
    return "".join("\ufffd" if "\ud800" <= ch <= "\udfff" else ch for ch in content or "")
