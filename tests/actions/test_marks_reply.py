"""A reply naming an element mark: the schema and parser take it, the policy never lets an
unresolved mark through, and check_reply resolves it before the gate judges the point."""
from __future__ import annotations

import pytest

from actions import ParseError, Policy, PolicyError, check_reply, parse_action, to_json
from actions.schema import MAX_MARKS

from fakes import reply


def test_a_mark_answer_parses_and_prints_as_it_came():
    action = parse_action(reply(action="left_click", mark=7))
    assert action.mark == 7 and action.coordinate is None
    assert to_json(action) == {"action": "left_click", "mark": 7}
    assert parse_action(reply(action="double_click", mark=MAX_MARKS)).mark == MAX_MARKS


@pytest.mark.parametrize("args, why", [
    ({"action": "left_click", "mark": 7, "coordinate": [1, 2]}, "a coordinate or a mark, not both"),
    ({"action": "left_click", "mark": 0}, "greater than or equal to 1"),
    ({"action": "left_click", "mark": MAX_MARKS + 1}, f"less than or equal to {MAX_MARKS}"),
    ({"action": "left_click", "mark": "7"}, "valid integer"),
    ({"action": "left_click", "mark": True}, "valid integer"),
    ({"action": "type", "text": "a", "mark": 3}, "Extra inputs"),
    ({"action": "mouse_move", "mark": 3}, "coordinate"),
])
def test_bad_marks_are_rejected_with_a_reason(args, why):
    with pytest.raises(ParseError, match=why):
        parse_action(reply(**args))


def test_an_unresolved_mark_never_passes_the_policy():
    with pytest.raises(PolicyError, match="answer with a coordinate"):
        check_reply(reply(action="left_click", mark=3), Policy())
    with pytest.raises(PolicyError, match="names no marked element"):
        check_reply(reply(action="left_click", mark=3), Policy(marks=True))


def test_check_reply_resolves_the_mark_before_the_policy_judges_the_point():
    seen = []

    def resolve(action):
        seen.append(action)
        return action.model_copy(update={"coordinate": (250.0, 125.5), "mark": None})

    action = check_reply(reply(action="left_click", mark=3), Policy(marks=True), resolve=resolve)
    assert action.coordinate == (250.0, 125.5) and action.mark is None and seen[0].mark == 3

    def gone(action):
        raise PolicyError("mark 3 (push button 'OK') is no longer on the screen")

    with pytest.raises(PolicyError, match="no longer on the screen"):
        check_reply(reply(action="left_click", mark=3), Policy(marks=True), resolve=gone)
