"""A JSON schema made finite for a token budget: every reply its grammar accepts closes in time.

A query step's schema says `{"type": "integer"}` or `{"type": "string"}`; xgrammar's grammar of
that lets a number or a string grow without end, and a model with weak weights fills its token
budget with digits and is cut mid-number (issue 19 item 8). Before a schema is compiled (or sent as
`response_format`), `bounded_schema` gives every integer, number, string and array a bound, derived
from the budget, so that the longest reply the grammar accepts is at most `max_tokens - 1` bytes
(a token holds at least one byte; the last token is the stop token).

What xgrammar 0.2.8 makes of the bounds (checked on its EBNF):
- integer minimum/maximum: exact digit ranges; number minimum/maximum: ranges with at most
  NUMBER_DECIMALS decimals and no exponent;
- string maxLength: `"` char{0,n} `"` with char = [^"\\\r\n] (no escapes), so a character is at
  most UTF8_MAX_BYTES bytes; it ignores maxLength beside a `pattern` or a `format`, so those are
  left out of the grammar's schema (the reply is validated against the full schema afterwards and
  sent back with the reason when it does not fit).
An untyped part (`{}`, `$ref`) cannot be bounded: `worst_case_bytes` is None for it and the
schema is compiled unbounded (a cut reply is then rejected and asked again, as before).
"""
from __future__ import annotations

import json
import math

UTF8_MAX_BYTES = 4
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
            sizes.append(2 + UTF8_MAX_BYTES * _string_len(schema, b))
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


def bounded(schema, b: Bounds):
    """A copy of `schema` with every number, string and array bounded by `b` (see the module doc)."""
    if not isinstance(schema, dict):
        return schema
    out = {k: v for k, v in schema.items() if k not in DROPPED or "string" not in _types(schema)}
    for key in ("anyOf", "oneOf", "allOf"):
        if isinstance(out.get(key), list):
            out[key] = [bounded(_merged(schema, key, p) if key != "allOf" else p, b) for p in out[key]]
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
        out["maxLength"] = _string_len(out, b)
    if "array" in types:
        out["maxItems"] = _items(out, b)
        if isinstance(out.get("items"), dict):
            out["items"] = bounded(out["items"], b)
    if "object" in types and isinstance(out.get("properties"), dict):
        out["properties"] = {k: bounded(v, b) for k, v in out["properties"].items()}
    return out


def bounded_schema(schema: dict, max_tokens: int) -> dict:
    """`schema` bounded so that its longest reply plus the stop token fits `max_tokens` tokens.
    Strings shrink first (down to 8 characters), then arrays (down to 1 item), then digits (down to
    1), then strings and arrays to nothing; each knob is set to the largest value that fits. Unboundable schemas (untyped parts) get the default
    bounds where they apply. Raises ValueError when even the smallest bounds do not fit."""
    b = Bounds()
    budget = max_tokens - 1
    size = worst_case_bytes(bounded(schema, b), b)
    if size is None:
        return bounded(schema, b)
    steps = (("chars", 8), ("items", 1), ("digits", MIN_DIGITS), ("chars", 0), ("items", 0))
    for knob, floor in steps:
        if size <= budget:
            break
        lo, hi = floor, getattr(b, knob)  # the largest value in [lo, hi] that fits, else lo
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
    return bounded(schema, b)


def schema_key(schema: dict, max_tokens: int) -> str:
    return json.dumps([schema, max_tokens], sort_keys=True)

