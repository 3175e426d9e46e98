"""A JSON-schema grammar closes every reply within its token budget (issue 19 item 8): numbers,
strings and arrays are bounded from the budget before xgrammar compiles the schema."""
from __future__ import annotations

import json
import random

import jsonschema
import pytest

from agent.backends.json_bounds import Bounds, bounded, bounded_schema, plan, worst_case_bytes

COUNT = {"type": "object", "properties": {"count": {"type": "integer"}, "ok": {"type": "boolean"}},
         "required": ["count", "ok"], "additionalProperties": False}
VERDICT = {"type": "object", "properties": {"pass": {"type": "boolean"}, "reason": {"type": "string"}},
           "required": ["pass", "reason"], "additionalProperties": False}
QUERY = {"type": "object", "properties": {
    "name": {"type": "string", "pattern": "^[A-Z]"},
    "total": {"type": "number"},
    "tags": {"type": "array", "items": {"type": "string", "maxLength": 5}},
    "kind": {"enum": ["a", "bb"]},
    "maybe": {"anyOf": [{"type": "integer", "minimum": 0, "maximum": 9}, {"type": "null"}]}},
    "required": ["name", "total", "tags", "kind", "maybe"], "additionalProperties": False}


@pytest.mark.parametrize("schema", [COUNT, VERDICT, QUERY, {"type": "string"}, {"type": "array", "items": {"type": "integer"}}])
@pytest.mark.parametrize("budget", [24, 64, 256, 1024])
def test_the_longest_reply_of_the_bounded_schema_fits_the_budget(schema, budget):
    try:
        out = bounded_schema(schema, budget)
    except ValueError:
        smallest = Bounds(digits=1, chars=0, items=0)
        assert worst_case_bytes(bounded(schema, smallest), smallest) + 1 > budget  # keys alone need more
        return
    size = worst_case_bytes(out, Bounds())
    assert size is not None and size + 1 <= budget
    jsonschema.validators.validator_for(out).check_schema(out)


def test_bounds_are_as_large_as_the_budget_allows():
    reason = bounded_schema(VERDICT, 768)["properties"]["reason"]["maxLength"]
    assert reason >= 120  # (767 - 29 bytes around it) / 6 bytes a character (a \uXXXX escape)
    count = bounded_schema(COUNT, 64)["properties"]["count"]
    assert count["maximum"] == 10 ** 15 - 1 and count["minimum"] == -(10 ** 15 - 1)
    assert bounded_schema({"type": "string", "maxLength": 3}, 1024)["maxLength"] == 3  # its own bound stays


def test_string_lengths_stay_out_of_the_grammar_the_decoder_bounds_them():
    """maxLength costs xgrammar seconds to compile (11 s for 120 characters over Qwen's vocabulary)."""
    out = bounded_schema(VERDICT, 768, lengths=False)
    assert "maxLength" not in out["properties"]["reason"] and plan(VERDICT, 768).chars >= 120
    assert plan({"enum": ["x" * 30]}, 64).chars >= 30  # an enum's string is let through whole


def test_a_pattern_is_left_to_validation_so_the_length_bound_holds():
    """xgrammar ignores maxLength beside a pattern; the reply is validated against the full schema after."""
    out = bounded_schema(QUERY, 1024)
    assert "pattern" not in out["properties"]["name"] and out["properties"]["name"]["maxLength"] > 0
    assert QUERY["properties"]["name"]["pattern"] == "^[A-Z]"  # the caller's schema is not edited


def test_a_schema_that_cannot_fit_is_one_clear_error():
    with pytest.raises(ValueError, match="fits 10 tokens"):
        bounded_schema({"enum": ["x" * 50]}, 10)


def test_untyped_parts_are_left_unbounded():
    assert worst_case_bytes({"type": "object", "properties": {"x": {}}}, Bounds()) is None
    assert bounded_schema({"type": "object", "properties": {"x": {}}}, 64) == {"type": "object", "properties": {"x": {}}}


@pytest.fixture(scope="module")
def constrainer():
    from transformers import AutoTokenizer

    from agent.backends.grammar import make_constrainer
    from agent.backends.tiny import tiny_checkpoint

    folder = tiny_checkpoint()
    vocab = json.loads((folder / "config.json").read_text())["text_config"]["vocab_size"]
    return make_constrainer(AutoTokenizer.from_pretrained(folder), vocab)


@pytest.mark.parametrize("schema,budget", [(COUNT, 64), (VERDICT, 96), (QUERY, 200), ({"type": "number"}, 16)])
def test_random_token_walks_always_close_within_the_budget(constrainer, schema, budget):
    """Whatever the weights pick among the tokens the grammar allows (here: long tokens first, the
    worst case for length), the JSON closes before the budget's last token, the stop token."""
    import xgrammar as xgr

    rng = random.Random(7)
    mask = xgr.allocate_token_bitmask(1, constrainer.vocab_size)
    tok_bytes = constrainer.token_bytes
    for _ in range(12):
        m = constrainer.json_matcher(schema, budget)
        out, steps = b"", 0
        while True:
            m.fill_next_token_bitmask(mask)
            allowed = [t for t in _allowed(mask[0], constrainer.vocab_size) if tok_bytes[t]]
            if not allowed:  # only a stop token may follow: the reply is complete
                break
            tid = max(rng.sample(allowed, min(8, len(allowed))), key=lambda t: len(tok_bytes[t]))
            assert m.accept_token(tid)
            if m.is_terminated():  # that was a stop token (special tokens have text too)
                break
            out, steps = out + tok_bytes[tid], steps + 1
            assert steps <= budget - 1
        value = json.loads(out.decode())
        jsonschema.validate(value, bounded_schema(schema, budget, lengths=False))
        assert all(len(s) <= plan(schema, budget).chars for s in _strings(value))  # bounded while decoding


def _strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)


def _allowed(words, vocab: int) -> list[int]:
    import torch

    bits = ((words.view(-1, 1) >> torch.arange(32, dtype=torch.int32)) & 1).flatten()[:vocab]
    return torch.nonzero(bits).flatten().tolist()
