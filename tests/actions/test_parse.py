"""The reply parser: native tool calls, bare JSON, and every malformed shape a small model produces."""
import json

import pytest

from actions import ParseError, parse_action, to_json


def call(args, name="computer_use"):
    return json.dumps({"name": name, "arguments": args})


@pytest.mark.parametrize("reply", [
    f"<tool_call>\n{call({'action': 'left_click', 'coordinate': [120, 340]})}\n</tool_call>",
    f"Thought: the Name field is at the top.\nAction: click it.\n<tool_call>{call({'action': 'left_click', 'coordinate': [120, 340]})}</tool_call>",
    call({"action": "left_click", "coordinate": [120, 340]}),
    f"```json\n{call({'action': 'left_click', 'coordinate': [120, 340]})}\n```",
])
def test_accepts_native_and_bare_replies(reply):
    action = parse_action(reply)
    assert to_json(action) == {"action": "left_click", "coordinate": [120, 340]}


@pytest.mark.parametrize("args", [
    {"action": "key", "keys": ["ctrl", "a"]},
    {"action": "type", "text": "Ada Lovelace"},
    {"action": "mouse_move", "coordinate": [0, 1000]},
    {"action": "right_click", "coordinate": [1, 2]},
    {"action": "middle_click"},
    {"action": "double_click", "coordinate": [500.5, 2]},
    {"action": "triple_click", "coordinate": [3, 4]},
    {"action": "left_click_drag", "coordinate": [900, 900]},
    {"action": "scroll", "pixels": -300},
    {"action": "hscroll", "pixels": 200, "coordinate": [10, 10]},
    {"action": "wait", "time": 1.5},
    {"action": "terminate", "status": "failure"},
    {"action": "answer", "text": "42"},
])
def test_every_native_action_round_trips(args):
    assert to_json(parse_action(call(args))) == args


@pytest.mark.parametrize("reply, reason", [
    ("", "empty reply"),
    ("I will click the button.", "no <tool_call> block"),
    ("<tool_call>{\"name\": \"computer_use\", \"arguments\": {\"action\": \"left_cl", "not closed"),
    (f"<tool_call>{call({'action': 'wait', 'time': 1})}</tool_call><tool_call>{call({'action': 'wait', 'time': 1})}</tool_call>", "more than one"),
    ('{"name": "computer_use", "arguments": {"action": "wait", "time": NaN}}', "NaN is not allowed"),
    ('{"name": "computer_use", "arguments": {"action": "wait", "time": Infinity}}', "Infinity is not allowed"),
    ('{"name": "computer_use", "arguments": {"action": "wait", "time": 1,}}', "invalid JSON"),
    (call({"action": "fly"}), "unknown action 'fly'"),
    (call({"action": "left_click", "coordinate": [10, 20], "button": "left"}), "Extra inputs"),
    (call({"action": "left_click", "coordinate": [1001, 20]}), "less than or equal to 1000"),
    (call({"action": "left_click", "coordinate": [-1, 20]}), "greater than or equal to 0"),
    (call({"action": "left_click", "coordinate": ["10", 20]}), "valid number"),
    (call({"action": "left_click", "coordinate": [10]}), "coordinate"),
    (call({"action": "scroll", "pixels": 1.5}), "valid integer"),
    (call({"action": "key", "keys": "ctrl+a"}), "valid list"),
    (call({"action": "terminate", "status": "done"}), "status"),
    (call({"action": "wait"}), "Field required"),
    (call({"action": "left_click", "coordinate": [1, 2]}, name="shell"), "unknown tool"),
    ('{"name": "computer_use", "arguments": "{\\"action\\": \\"wait\\"}"}', "must be a JSON object"),
    ('{"name": "computer_use"}', "exactly the keys"),
    ("[1, 2]", "no <tool_call> block"),
    ("<tool_call>[1, 2]</tool_call>", "not a JSON object"),
])
def test_rejects_malformed_replies_with_one_line_reason(reply, reason):
    with pytest.raises(ParseError) as e:
        parse_action(reply)
    assert reason in str(e.value)
    assert "\n" not in str(e.value)


def test_huge_and_deeply_nested_input_is_rejected_quickly():
    with pytest.raises(ParseError, match="too long"):
        parse_action("<tool_call>" + "[" * 1_000_000)
    with pytest.raises(ParseError):
        parse_action("{" + '"a":' * 3000 + "1" + "}" * 3000)
    with pytest.raises(ParseError):
        parse_action("<tool_call>" + "[" * 7000 + "]" * 7000 + "</tool_call>")


def test_huge_numbers_duplicate_keys_and_deep_nesting_are_rejected_replies_not_errors():
    from actions import Policy, check_reply

    def call(arguments: str) -> str:
        return '<tool_call>{"name": "computer_use", "arguments": %s}</tool_call>' % arguments

    for reply, reason in [
        (call('{"action": "scroll", "pixels": %s}' % ("9" * 5000)), "number of 5000 characters"),
        (call('{"action": "wait", "time": 1%s.5}' % ("0" * 400)), "number of"),
        (call('{"action": "type", "text": "hi", "text": "rm -rf /"}'), "appears twice"),
        ("<tool_call>" + "[" * 15_000 + "</tool_call>", "nested too deeply|invalid JSON"),
        (call('{"action": "wait", "time": 1e400}'), "finite"),
    ]:
        with pytest.raises(ParseError, match=reason):
            check_reply(reply, Policy())
