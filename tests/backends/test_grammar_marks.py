"""Marks in the reply grammar: under --marks (Policy(marks=True)) a click names a point or a mark
1..MAX_MARKS, never both; without --marks no mark is written at all."""
from __future__ import annotations

import json

import pytest

from actions.policy import Allow, Policy
from actions.schema import MAX_MARKS
from agent.backends.grammar import ReplyMatcher, reply_grammar, text_bound

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
