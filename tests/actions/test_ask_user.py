"""The model's question to a person (`ask_user`): one strict action, offered by the policy only where
a person can answer (a console, --attended, a terminal), refused with one clear line elsewhere."""
from __future__ import annotations

import pytest

from actions import ParseError, Policy, PolicyError, check_reply, parse_action, to_json
from actions.policy import NOBODY_TO_ASK, Allow


def ask(text: str = "Which account should I use?") -> str:
    return ('<tool_call>\n{"name": "computer_use", "arguments": {"action": "ask_user", "text": '
            + __import__("json").dumps(text) + "}}\n</tool_call>")


def test_a_question_parses_to_one_strict_action():
    action = parse_action(ask())
    assert to_json(action) == {"action": "ask_user", "text": "Which account should I use?"}
    with pytest.raises(ParseError, match="text"):
        parse_action(ask(""))  # an empty question asks nothing
    with pytest.raises(ParseError, match="extra|permitted"):
        parse_action('<tool_call>{"name": "computer_use", "arguments": {"action": "ask_user", "text": "a", '
                     '"coordinate": [1, 2]}}</tool_call>')


def test_only_a_run_someone_can_answer_offers_the_question():
    assert "ask_user" not in Policy().actions and "ask_user" in Policy(can_ask=True).actions
    with pytest.raises(PolicyError) as refused:
        check_reply(ask(), Policy())
    assert str(refused.value) == NOBODY_TO_ASK  # one line that says why and what to do instead
    assert check_reply(ask(), Policy(can_ask=True)).text == "Which account should I use?"


def test_the_task_can_still_forbid_questions_and_bounds_their_length():
    listed = Policy(Allow(actions=["left_click", "terminate"]), can_ask=True)
    assert "ask_user" not in listed.actions and not listed.can_ask
    with pytest.raises(PolicyError, match="not allowed here"):
        check_reply(ask(), listed)
    with pytest.raises(PolicyError, match="not attended"):  # listed, but nobody to answer
        check_reply(ask(), Policy(Allow(actions=["ask_user", "terminate"])))
    short = Policy(Allow(max_text_len=10), can_ask=True)
    with pytest.raises(PolicyError, match="over the 10 character limit"):
        check_reply(ask("x" * 11), short)
