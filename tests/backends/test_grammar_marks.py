"""Marks in the reply grammar: under --marks (Policy(marks=True)) a click names a point or a mark
1..MAX_MARKS, never both; without --marks no mark is written at all."""
from __future__ import annotations

import json

import pytest

from actions.policy import Allow, Policy
from actions.schema import MAX_MARKS
from agent.backends.grammar import ReplyMatcher, reply_grammar, text_bound
from test_grammar import allowed_ids, tiny_constrainer  # noqa: F401  (a fixture of that file, shared)

xgr = pytest.importorskip("xgrammar")
CLICKS = ("left_click", "right_click", "middle_click", "double_click", "triple_click")


def accepts(reply: str, policy: Policy) -> bool:
    compiled = xgr.GrammarCompiler(xgr.TokenizerInfo([]), cache_enabled=False).compile_grammar(reply_grammar(policy))
    m = ReplyMatcher(xgr.GrammarMatcher(compiled, terminate_without_stop_token=True), text_bound(policy))
    return m.accept_string(reply) and m.is_terminated()


def native(**args) -> str:
    return "<tool_call>\n" + json.dumps({"name": "computer_use", "arguments": args}) + "\n</tool_call>"


@pytest.mark.parametrize("click", CLICKS)
def test_under_marks_a_click_names_a_mark_or_a_point(click):
    marks = Policy(marks=True)
    assert accepts(native(action=click, mark=7), marks)
    assert accepts(native(action=click, mark=MAX_MARKS), marks)
    assert accepts(native(action=click, coordinate=[500, 320]), marks)
    assert accepts(native(action=click), marks)
    assert not accepts(native(action=click, mark=7), Policy())  # no --marks: no mark


@pytest.mark.parametrize("args", [
    {"action": "left_click", "mark": 0},
    {"action": "left_click", "mark": MAX_MARKS + 1},
    {"action": "left_click", "mark": 7, "coordinate": [1, 2]},
    {"action": "left_click", "coordinate": [1, 2], "mark": 7},
    {"action": "left_click", "mark": "7"},
    {"action": "left_click", "mark": 7.0},
    {"action": "mouse_move", "mark": 7},
    {"action": "scroll", "pixels": 5, "mark": 7},
    {"action": "left_click_drag", "mark": 7},
])
def test_under_marks_the_grammar_refuses_what_the_schema_refuses(args):
    assert not accepts(native(**args), Policy(marks=True))


def test_marks_follow_the_policys_actions():
    only_type = Policy(Allow(actions=["type", "left_click"]), marks=True)
    assert accepts(native(action="left_click", mark=3), only_type)
    assert not accepts(native(action="double_click", mark=3), only_type)
    assert "mark ::=" not in reply_grammar(Policy())


def test_a_served_model_under_marks_may_answer_a_mark_in_its_response_format():
    """--backend openai: the JSON schema sent as response_format takes a mark where the grammar does."""
    from agent.backends.openai import reply_schema
    from test_openai_backend import _bounded, _valid

    schema = reply_schema(Policy(Allow(actions=["left_click", "type"]), marks=True))

    def ok(args):
        return _valid({"name": "computer_use", "arguments": args}, schema)

    assert _bounded(schema) and ok({"action": "left_click", "mark": 7}) and ok({"action": "left_click", "coordinate": [1, 2]})
    assert not ok({"action": "left_click", "mark": 0}) and not ok({"action": "left_click", "mark": MAX_MARKS + 1})
    assert not ok({"action": "left_click", "mark": 7, "coordinate": [1, 2]})
    assert not _valid({"name": "computer_use", "arguments": {"action": "left_click", "mark": 7}}, reply_schema(Policy()))


@pytest.mark.slow  # builds the tiny checkpoint's tokenizer
def test_random_token_walks_under_marks_end_in_a_reply_the_parser_takes(tiny_constrainer):
    """Over a real tokenizer, any tokens the marks grammar allows end in a reply that parses: a
    click at a point, at a mark 1..MAX_MARKS, or where the pointer is."""
    import random

    from actions.parse import parse_action

    tok, c = tiny_constrainer
    policy = Policy(Allow(actions=list(CLICKS)), marks=True)
    bitmask = xgr.allocate_token_bitmask(1, c.vocab_size)
    marks = set()
    for seed in range(40):
        rng = random.Random(seed)
        m, out = c.matcher(policy), []
        while not m.is_terminated():
            m.fill_next_token_bitmask(bitmask)
            ids = allowed_ids(bitmask, c.vocab_size)
            t = rng.choice(ids)
            assert m.accept_token(t)
            out.append(t)
        action = parse_action(tok.decode(out, skip_special_tokens=True))
        assert action.action in CLICKS and (action.mark is None or 1 <= action.mark <= MAX_MARKS)
        marks.add(action.mark is not None)
    assert marks == {True, False}  # both kinds of answer were written
