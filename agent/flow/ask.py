"""Questions about the screen that are not actions: assert / wait_for (`{"pass": bool, "reason": str}`)
and query (JSON under the step's own schema). The reply is decoded under a grammar built from the
JSON schema where the backend can (xgrammar for the transformers backend, response_format for an
OpenAI-compatible server), then parsed and validated here either way: a reply that does not parse or
fit the schema is sent back with the reason, MAX_TRIES times, then the step fails as invalid output.
"""
from __future__ import annotations

import json
import weakref
from dataclasses import dataclass
from typing import Any

from PIL import Image

from agent.errors import VlagentError
from agent.run.history import prompt

MAX_TRIES = 3
VERDICT_TOKENS = 256  # a verdict with a short reason; a longer reply is cut and rejected
QUERY_TOKENS = 1024
REASON_CHARS = 500

VERDICT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"pass": {"type": "boolean"}, "reason": {"type": "string"}},
    "required": ["pass", "reason"],
    "additionalProperties": False,
}


class InvalidOutput(VlagentError):
    """The model's reply to an assert/query/wait_for never parsed or fit the schema."""


@dataclass
class Answer:
    value: Any  # the validated JSON value
    raw: str  # the last raw reply
    calls: int  # model calls it took


def check_schema(schema: dict) -> str | None:
    """Why `schema` is not a usable JSON schema, or None."""
    import jsonschema

    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as e:
        return f"not a valid JSON schema: {e.message}"
    return None


def validate(value: Any, schema: dict) -> str | None:
    """Why `value` does not fit `schema`, or None."""
    import jsonschema

    try:
        jsonschema.validate(value, schema)
    except jsonschema.ValidationError as e:
        where = "/".join(str(p) for p in e.absolute_path)
        return f"{where + ': ' if where else ''}{e.message}"
    return None


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def parse_json(raw: str, schema: dict) -> Any:
    """The reply as JSON that fits the schema; ValueError with a one-line reason otherwise."""
    text = raw.strip()
    if text.startswith("```"):  # models like fences even when told not to
        text = text.strip("`").removeprefix("json").strip()
    try:
        value = json.loads(text, parse_constant=_no_constant)
    except json.JSONDecodeError as e:
        raise ValueError(f"not JSON ({e.msg} at character {e.pos})") from None
    why = validate(value, schema)
    if why:
        raise ValueError(f"does not fit the schema: {why}")
    return value


def _messages(system: str, user: str, image: Image.Image, rejected: list[tuple[str, str]]) -> list[dict]:
    messages = [{"role": "system", "content": [{"type": "text", "text": system}]},
                {"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": user}]}]
    for raw, why in rejected:
        messages.append({"role": "assistant", "content": [{"type": "text", "text": raw}]})
        messages.append({"role": "user", "content": [{"type": "text", "text": prompt("flow_retry.md").strip().replace("{reason}", why)}]})
    return messages


def ask(backend, image: Image.Image, system: str, user: str, schema: dict, max_tokens: int) -> Answer:
    """Ask until the reply parses and fits `schema` (MAX_TRIES); raises InvalidOutput."""
    rejected: list[tuple[str, str]] = []
    raw = ""
    for n in range(1, MAX_TRIES + 1):
        raw = generate_json(backend, _messages(system, user, image, rejected), schema, max_tokens)
        try:
            return Answer(parse_json(raw, schema), raw, n)
        except ValueError as e:
            rejected.append((raw, str(e)))
    raise InvalidOutput(f"{MAX_TRIES} replies in a row did not fit; last: {rejected[-1][1]}: {raw[:120]!r}")


def verdict(backend, image: Image.Image, statement: str) -> Answer:
    """{"pass": bool, "reason": str} about `statement` on `image`."""
    ans = ask(backend, image, prompt("flow_assert.md").strip(),
              prompt("flow_assert_user.md").strip().replace("{statement}", statement), VERDICT_SCHEMA, VERDICT_TOKENS)
    ans.value["reason"] = " ".join(str(ans.value["reason"]).split())[:REASON_CHARS]
    return ans


def query(backend, image: Image.Image, question: str, schema: dict) -> Answer:
    system = prompt("flow_query.md").strip().replace("{schema}", json.dumps(schema, ensure_ascii=False))
    return ask(backend, image, system, prompt("flow_query_user.md").strip().replace("{prompt}", question),
               schema, QUERY_TOKENS)


# ------------------------------------------------------------------------ constrained decoding

def generate_json(backend, messages: list[dict], schema: dict, max_tokens: int) -> str:
    """One reply, constrained to `schema` where the backend allows it: a backend's own
    `generate_json(messages, schema, max_tokens)`, else constrained_json."""
    if hasattr(backend, "generate_json"):
        return backend.generate_json(messages, schema, max_tokens)
    return constrained_json(backend, messages, schema, max_tokens)


def constrained_json(backend, messages: list[dict], schema: dict, max_tokens: int) -> str:
    """The transformers backend decodes under xgrammar's grammar of the schema, an OpenAI-compatible
    server gets it as response_format; other backends (scripted replies) answer as they are."""
    if hasattr(backend, "constrainer") and hasattr(backend, "encode"):
        return _transformers_json(backend, messages, schema, max_tokens)
    if type(backend).__name__ == "OpenAIBackend":
        return _openai_json(backend, messages, schema, max_tokens)
    return backend.generate(messages, None)


_compilers: "weakref.WeakKeyDictionary[object, tuple[object, dict]]" = weakref.WeakKeyDictionary()


def json_grammar(backend, schema: dict):
    """xgrammar's compiled grammar of `schema` for this backend's tokenizer (compiled once per schema).
    No free whitespace: a model with weak weights cannot pad a reply forever."""
    import xgrammar as xgr

    if backend not in _compilers:
        vocab = backend.model.config.text_config.vocab_size
        info = xgr.TokenizerInfo.from_huggingface(backend.tokenizer, vocab_size=vocab)
        _compilers[backend] = (xgr.GrammarCompiler(info), {})
    compiler, compiled = _compilers[backend]
    key = json.dumps(schema, sort_keys=True)
    if key not in compiled:
        compiled[key] = compiler.compile_json_schema(key, any_whitespace=False, strict_mode=True)
    return compiled[key]


def _transformers_json(backend, messages: list[dict], schema: dict, max_tokens: int) -> str:
    from agent.errors import BackendError

    matcher = None
    if backend.constrainer is not None:  # None: xgrammar missing, decode free and validate after
        import xgrammar as xgr

        matcher = xgr.GrammarMatcher(json_grammar(backend, schema))
    with backend._lock:  # one call at a time, as TransformersBackend.generate
        inputs = backend.encode(messages)
        try:
            if backend.engine is not None:
                ids = backend.engine.generate_inputs(inputs, messages, max_tokens, matcher,
                                                     backend.model.generation_config.eos_token_id)
            else:
                from agent.backends.grammar import ReplyLogitsProcessor

                vocab = backend.model.config.text_config.vocab_size
                procs = [ReplyLogitsProcessor(matcher, vocab)] if matcher is not None else []
                ids = backend._decode(inputs, procs, max_tokens)
        except (RuntimeError, MemoryError) as e:
            raise BackendError(f"generation failed: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    return backend.tokenizer.decode(ids, skip_special_tokens=True)


def _openai_json(backend, messages: list[dict], schema: dict, max_tokens: int) -> str:
    from agent.backends.openai import to_openai_messages

    wire = to_openai_messages(messages, backend.image_config, backend._image_part)
    kwargs: dict[str, Any] = {"max_tokens": max_tokens, "temperature": 0.0}
    if backend.structured:
        kwargs["response_format"] = {"type": "json_schema", "json_schema": {
            "name": "answer", "strict": True, "schema": schema}}
    reply = backend._chat(wire, **kwargs)
    return reply.choices[0].message.content or ""
