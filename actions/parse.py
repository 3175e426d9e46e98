"""Turn a model's raw reply into exactly one validated action, or a one-line reason why not."""
from __future__ import annotations

import json

from pydantic import ValidationError

from actions.schema import ACTION_ADAPTER, ACTION_NAMES, Action

MAX_REPLY_CHARS = 16_000  # a native reply is ~100 chars; anything this long is garbage
MAX_NUMBER_CHARS = 32  # no action needs a longer number; int() of 5,000 digits would raise (or be slow)
OPEN, CLOSE = "<tool_call>", "</tool_call>"
TOOL_NAME = "computer_use"


class ParseError(ValueError):
    """The reply holds no single valid action. str() is a one-line reason fit to show the model."""


def _no_constants(name: str):
    raise ParseError(f"invalid JSON: {name} is not allowed")


def _number(kind):
    def parse(text: str):
        if len(text) > MAX_NUMBER_CHARS:
            raise ParseError(f"invalid JSON: a number of {len(text)} characters (at most {MAX_NUMBER_CHARS})")
        return kind(text)
    return parse


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict:
    """A key given twice is ambiguous (which one would the policy check?): reject it."""
    out = {}
    for key, value in pairs:
        if key in out:
            raise ParseError(f"invalid JSON: the key {key[:40]!r} appears twice")
        out[key] = value
    return out


def _loads(text: str) -> object:
    try:
        return json.loads(text, parse_constant=_no_constants, parse_int=_number(int),
                          parse_float=_number(float), object_pairs_hook=_no_duplicates)
    except json.JSONDecodeError as e:
        raise ParseError(f"invalid JSON: {e.msg} at character {e.pos}") from None
    except RecursionError:
        raise ParseError("invalid JSON: nested too deeply") from None


def _payload(reply: str) -> str:
    """The JSON text of the single tool call in the reply."""
    start = reply.find(OPEN)
    if start < 0:
        body = reply.strip()
        if body.startswith("```"):  # a fenced bare object: ```json {...} ```
            body = body.strip("`").removeprefix("json").strip()
        if not body.startswith("{"):
            raise ParseError(f"no {OPEN} block and no bare JSON object in the reply")
        return body
    end = reply.find(CLOSE, start)
    if end < 0:
        raise ParseError(f"{OPEN} is not closed (reply truncated?)")
    if reply.find(OPEN, end) >= 0 or reply.find(OPEN, start + len(OPEN), end) >= 0:
        raise ParseError("more than one tool call; reply with exactly one action")
    return reply[start + len(OPEN):end].strip()


def _first_error(e: ValidationError) -> str:
    err = e.errors(include_url=False)[0]
    where = ".".join(str(p) for p in err["loc"])
    text = f"{where}: {err['msg']}" if where else err["msg"]
    return " ".join(repr(text)[1:-1].split())[:300]  # one line, whatever the model put in it


def parse_action(reply: str) -> Action:
    """Parse a raw reply: `<tool_call>{"name": "computer_use", "arguments": {...}}</tool_call>`
    (free text before it allowed) or a bare JSON object of that shape. Raises ParseError."""
    if not isinstance(reply, str):
        raise ParseError("reply is not text")
    if len(reply) > MAX_REPLY_CHARS:
        raise ParseError(f"reply is too long ({len(reply)} characters > {MAX_REPLY_CHARS})")
    if not reply.strip():
        raise ParseError("empty reply")
    call = _loads(_payload(reply))
    if not isinstance(call, dict):
        raise ParseError("the tool call is not a JSON object")
    if set(call) != {"name", "arguments"}:
        raise ParseError('the tool call must have exactly the keys "name" and "arguments"')
    if call["name"] != TOOL_NAME:
        raise ParseError(f'unknown tool {str(call["name"])[:40]!r}; the only tool is "{TOOL_NAME}"')
    args = call["arguments"]
    if not isinstance(args, dict):
        raise ParseError('"arguments" must be a JSON object')
    if args.get("action") not in ACTION_NAMES:
        raise ParseError(f"unknown action {str(args.get('action'))[:40]!r}; the actions are: {', '.join(ACTION_NAMES)}")
    try:
        return ACTION_ADAPTER.validate_python(args)
    except ValidationError as e:
        raise ParseError(f"invalid action: {_first_error(e)}") from None
