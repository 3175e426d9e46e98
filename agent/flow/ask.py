"""Questions about the screen that are not actions: assert / wait_for (`{"pass": bool, "reason": str}`)
and query (JSON under the step's own schema). The reply is decoded under a grammar built from the
JSON schema where the backend can (the backend's JsonSchema constraint: xgrammar in-process, with
every number and string bounded so that the reply closes within its token budget; response_format
on an OpenAI-compatible server), then parsed and validated here either way: a reply that does not parse or
fit the schema is sent back with the reason, MAX_TRIES times, then the step fails as invalid output.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from PIL import Image

from agent.backends.base import JsonSchema
from agent.errors import VlagentError
from agent.run.history import prompt

MAX_TRIES = 3
VERDICT_TOKENS = 768  # a verdict with a short reason: decoding closes the reason by ~120 characters
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
    """One reply, constrained to `schema` where the backend can (the model interface's JsonSchema
    constraint: xgrammar in-process, response_format on a server, nothing for scripted replies)."""
    return backend.generate(messages, JsonSchema(schema, max_tokens))


