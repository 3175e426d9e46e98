"""A JSON schema made finite for a token budget: every reply its grammar accepts closes in time.

A query step's schema says `{"type": "integer"}` or `{"type": "string"}`; xgrammar's grammar of
that lets a number or a string grow without end, and a model with weak weights fills its token
budget with digits and is cut mid-number (issue 19 item 8). Before a schema is compiled (or sent as
`response_format`), `plan` picks bounds from the budget (digits of numbers, items of arrays, one
length for every string) so that the longest reply is at most `max_tokens - 1` bytes (a token holds
at least one byte; the last token is the stop token), and `bounded` writes them into the schema.

What xgrammar 0.2.8 makes of the bounds (checked on its EBNF, timed over Qwen's 151k vocabulary):
- integer minimum/maximum: exact digit ranges; number minimum/maximum: ranges with at most
  NUMBER_DECIMALS decimals and no exponent; both compile in milliseconds.
- string maxLength: `"` char{0,n} `"`, exact, but it compiles for seconds (maxLength 30: 2 s,
  120: 11 s, 500: 21 s on the 2-core machine, against 0.03 s without). So in-process decoding
  leaves string lengths out of the grammar (`lengths=False`) and bounds them while decoding
  (grammar.JsonMatcher masks the tokens that would carry a string value past the bound, as the
  native reply's text is bounded); servers get maxLength in their response_format. A string
  character costs at most JSON_CHAR_BYTES bytes (a \\uXXXX escape).
- It ignores maxLength beside a `pattern` or a `format`, so those are left out of the grammar's
  schema: the reply is validated against the full schema afterwards and sent back with the reason
  when it does not fit (as it is when it breaks a string's own, smaller maxLength).
An untyped part (`{}`, `$ref`) cannot be bounded: `worst_case_bytes` is None for it and the
schema is compiled unbounded (a cut reply is then rejected and asked again, as before).
"""
from __future__ import annotations

import json
import math

JSON_CHAR_BYTES = 6  # a string character written as \\uXXXX
NUMBER_DECIMALS = 6  # what xgrammar's bounded number grammar allows after the point
MAX_DIGITS = 15  # integers and numbers never need more (doubles hold 15-17 significant digits)
MIN_DIGITS = 1
MAX_STRING = 1000  # a string without its own maxLength gets at most this many characters
MAX_ITEMS = 32  # an array without its own maxItems
SEP = len(", ")  # xgrammar's separators without free whitespace: ", " and ": "
DROPPED = ("pattern", "format")  # xgrammar ignores maxLength beside these


class Bounds:
    """The free knobs: digits of numbers, characters of strings, items of arrays."""

    def __init__(self, digits: int = MAX_DIGITS, chars: int = MAX_STRING, items: int = MAX_ITEMS):
        self.digits, self.chars, self.items = digits, chars, items


def _types(schema: dict) -> list[str]:
    t = schema.get("type")
    return [t] if isinstance(t, str) else list(t) if isinstance(t, list) else []


def _literal_bytes(values) -> int:
    return max((len(json.dumps(v, ensure_ascii=False, separators=(", ", ": ")).encode()) for v in values), default=0)


def _int_bytes(schema: dict, b: Bounds) -> int:
    lo, hi = schema.get("minimum"), schema.get("maximum")
    if isinstance(lo, (int, float)) and isinstance(hi, (int, float)):
        return max(len(str(int(math.floor(lo)))), len(str(int(math.ceil(hi)))))
    return b.digits + 1  # sign


def worst_case_bytes(schema, b: Bounds) -> int | None:
    """The longest reply (UTF-8 bytes) that `bounded(schema, b)` admits, or None when unbounded."""
    if schema is True or not isinstance(schema, dict):
        return None
    if "const" in schema:
        return _literal_bytes([schema["const"]])
    if "enum" in schema:
        return _literal_bytes(schema["enum"])
    for key in ("anyOf", "oneOf"):
        if key in schema:
            parts = [worst_case_bytes(_merged(schema, key, p), b) for p in schema[key]]
            return None if None in parts or not parts else max(parts)
    types = _types(schema)
    if not types or "$ref" in schema or "allOf" in schema:
        return None
    sizes = []
    for t in types:
        if t == "null":
            sizes.append(4)
        elif t == "boolean":
            sizes.append(5)
        elif t == "integer":
            sizes.append(_int_bytes(schema, b))
        elif t == "number":
            sizes.append(_int_bytes(schema, b) + 1 + NUMBER_DECIMALS)
        elif t == "string":
            sizes.append(2 + JSON_CHAR_BYTES * _string_len(schema, b))
        elif t == "array":
            item = worst_case_bytes(schema.get("items", {}), b) if schema.get("items", {}) != {} else None
            n = _items(schema, b)
            if n == 0:
                sizes.append(2)
            elif item is None:
                return None
            else:
                sizes.append(2 + n * item + SEP * (n - 1))
        elif t == "object":
            props = schema.get("properties", {})
            if not isinstance(props, dict):
                return None
            total = 2
            for key, sub in props.items():
                v = worst_case_bytes(sub, b)
                if v is None:
                    return None
                total += len(json.dumps(key, ensure_ascii=False).encode()) + SEP + v
            sizes.append(total + SEP * max(len(props) - 1, 0))
        else:
            return None
    return max(sizes)


def _merged(schema: dict, key: str, part) -> dict | bool:
    if not isinstance(part, dict):
        return part
    rest = {k: v for k, v in schema.items() if k not in ("anyOf", "oneOf")}
    return {**rest, **part}


def _string_len(schema: dict, b: Bounds) -> int:
    own = schema.get("maxLength")
    n = b.chars if not isinstance(own, int) else min(own, b.chars)
    return max(n, schema.get("minLength", 0) if isinstance(schema.get("minLength"), int) else 0)


def _items(schema: dict, b: Bounds) -> int:
    own = schema.get("maxItems")
    n = b.items if not isinstance(own, int) else min(own, b.items)
    return max(n, schema.get("minItems", 0) if isinstance(schema.get("minItems"), int) else 0)


def bounded(schema, b: Bounds, lengths: bool = True):
    """A copy of `schema` with every number and array bounded by `b`, and every string too when
    `lengths` (else its maxLength and minLength are left out: the decoder bounds strings)."""
    if not isinstance(schema, dict):
        return schema
    out = {k: v for k, v in schema.items() if k not in DROPPED or "string" not in _types(schema)}
    for key in ("anyOf", "oneOf", "allOf"):
        if isinstance(out.get(key), list):
            out[key] = [bounded(_merged(schema, key, p) if key != "allOf" else p, b, lengths) for p in out[key]]
            if key != "allOf":  # the parts carry the shared keywords now
                out = {k: v for k, v in out.items() if k in (key, "$defs", "definitions", "title", "description")}
            return out
    if "const" in out or "enum" in out:
        return out
    types = _types(out)
    top = 10 ** b.digits - 1
    if "integer" in types or "number" in types:
        out.setdefault("minimum", -top)
        out.setdefault("maximum", top)
        if "integer" in types and (out["maximum"] > top or out["minimum"] < -top):
            out["minimum"], out["maximum"] = max(out["minimum"], -top), min(out["maximum"], top)
    if "string" in types:
        if lengths:
            out["maxLength"] = _string_len(out, b)
        else:
            out.pop("maxLength", None)
            out.pop("minLength", None)
    if "array" in types:
        out["maxItems"] = _items(out, b)
        if isinstance(out.get("items"), dict):
            out["items"] = bounded(out["items"], b, lengths)
    if "object" in types and isinstance(out.get("properties"), dict):
        out["properties"] = {k: bounded(v, b, lengths) for k, v in out["properties"].items()}
    return out


def plan(schema: dict, max_tokens: int) -> Bounds:
    """The largest bounds with which the longest reply of `schema` plus the stop token fits
    `max_tokens` tokens. Strings shrink first (down to 8 characters), then arrays (down to 1 item),
    then digits (down to 1), then strings and arrays to nothing; each knob is set to the largest
    value that fits. A string never gets fewer characters than the longest enum or const string
    (the grammar forces those whole). Raises ValueError when even the smallest bounds do not fit."""
    b = Bounds()
    schema = _without_lengths(schema)  # the decoder bounds every string alike, whatever its own maxLength
    floor = _longest_literal(schema)
    budget = max_tokens - 1
    size = worst_case_bytes(bounded(schema, b), b)
    if size is None:
        return b
    steps = (("chars", max(8, floor)), ("items", 1), ("digits", MIN_DIGITS), ("chars", floor), ("items", 0))
    for knob, low in steps:
        if size <= budget:
            break
        lo, hi = min(low, getattr(b, knob)), getattr(b, knob)  # the largest value in [lo, hi] that fits, else lo
        while lo < hi:
            mid = (lo + hi + 1) // 2
            setattr(b, knob, mid)
            if worst_case_bytes(bounded(schema, b), b) <= budget:
                lo = mid
            else:
                hi = mid - 1
        setattr(b, knob, lo)
        size = worst_case_bytes(bounded(schema, b), b)
    if size > budget:
        raise ValueError(f"no reply of this schema fits {max_tokens} tokens (the shortest bound needs {size + 1})")
    return b


def bounded_schema(schema: dict, max_tokens: int, lengths: bool = True) -> dict:
    """`schema` with the bounds of `plan` written in (string lengths too when `lengths`)."""
    return bounded(schema, plan(schema, max_tokens), lengths)


def _without_lengths(schema):
    if isinstance(schema, list):
        return [_without_lengths(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {}
    for k, v in schema.items():
        if k in ("maxLength", "minLength"):
            continue
        if k in ("properties", "$defs", "definitions") and isinstance(v, dict):  # names, not keywords
            out[k] = {name: _without_lengths(sub) for name, sub in v.items()}
        else:
            out[k] = v if k in ("enum", "const") else _without_lengths(v)
    return out


def _longest_literal(schema) -> int:
    """Characters of the longest string an enum or const forces (the decoder must let it through)."""
    if isinstance(schema, list):
        return max((_longest_literal(s) for s in schema), default=0)
    if not isinstance(schema, dict):
        return 0
    n = 0
    for v in [schema.get("const")] + list(schema.get("enum") or []):
        if isinstance(v, str):
            n = max(n, len(v))
    for key, v in schema.items():
        if key in ("properties", "$defs", "definitions") and isinstance(v, dict):
            n = max(n, _longest_literal(list(v.values())))
        elif key in ("items", "anyOf", "oneOf", "allOf"):
            n = max(n, _longest_literal(v))
    return n


def schema_key(schema: dict, max_tokens: int) -> str:
    return json.dumps([schema, max_tokens], sort_keys=True)

