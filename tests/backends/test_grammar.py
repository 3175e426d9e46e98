"""The reply grammar: what it accepts, what it refuses, and that it agrees with parser and policy."""
from __future__ import annotations

import json
import random
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from actions.keys import VALID_KEYS
from actions.parse import parse_action
from actions.policy import Allow, Policy, PolicyError, normalize_chord
from actions.schema import Key
from agent.backends import grammar
from agent.errors import VlagentError
from agent.backends.grammar import (MAX_REPLY_TOKENS, ReplyMatcher, default_chords, max_reply_bytes, reply_grammar,
                           text_bound, text_chars, uint_le)

xgr = pytest.importorskip("xgrammar")
FILL_FORM = Allow(actions=["left_click", "type", "key", "scroll", "wait", "terminate"],
                  keys=["tab", "enter", "ctrl+a", "backspace"], max_text_len=200, deny_text=["(?i)password"])


def compile_text(ebnf: str):
    """Compiled without a vocabulary: enough to match strings."""
    return xgr.GrammarCompiler(xgr.TokenizerInfo([]), cache_enabled=False).compile_grammar(ebnf)


_compiled: dict = {}


def accepts(reply: str, allow: Allow | None = None, can_ask: bool = False) -> bool:
    """The grammar and the text bound (ReplyMatcher) accept the whole reply."""
    policy = Policy(allow, can_ask=can_ask)
    key = reply_grammar(policy)
    if key not in _compiled:
        _compiled[key] = compile_text(key)
    m = ReplyMatcher(xgr.GrammarMatcher(_compiled[key], terminate_without_stop_token=True), text_bound(policy))
    return m.accept_string(reply) and m.is_terminated()


def native(args: dict) -> str:
    return "<tool_call>\n" + json.dumps({"name": "computer_use", "arguments": args}, ensure_ascii=False) + "\n</tool_call>"


def passes(reply: str, allow: Allow | None = None) -> bool:
    """Parser and policy both accept the reply."""
    try:
        Policy(allow).check(parse_action(reply))
        return True
    except (ValueError, PolicyError):
        return False


@pytest.mark.parametrize("n", [0, 5, 9, 10, 59, 60, 99, 100, 101, 999, 1000, 10000, 12345])
def test_uint_le_is_exactly_0_to_n(n):
    compiled = compile_text(f"root ::= {uint_le(n)}\n")

    def ok(s):
        m = xgr.GrammarMatcher(compiled, terminate_without_stop_token=True)
        return m.accept_string(s) and m.is_terminated()

    for i in sorted(set(range(0, min(n, 1100) + 30)) | {n - 1, n, n + 1} - {-1}):
        assert ok(str(i)) == (i <= n), i
    for bad in ("01", "00", "-1", "1.0", "", " 1"):
        assert not ok(bad), bad


VALID = [
    {"action": "type", "text": "family \U0001F468\u200d\U0001F469\u200d\U0001F467 \u05e9\u05dc\u05d5\u05dd\u200f"},  # joiners, bidi marks
    {"action": "left_click", "coordinate": [0, 0]},
    {"action": "left_click", "coordinate": [1000, 1000]},
    {"action": "left_click"},
    {"action": "right_click", "coordinate": [5, 999]},
    {"action": "middle_click", "coordinate": [10, 100]},
    {"action": "double_click", "coordinate": [500, 500]},
    {"action": "triple_click", "coordinate": [1, 2]},
    {"action": "mouse_move", "coordinate": [640, 360]},
    {"action": "left_click_drag", "coordinate": [10, 20]},
    {"action": "left_click_drag", "coordinate": [10, 20], "start_coordinate": [30, 40]},
    {"action": "left_click_drag", "start_coordinate": [30, 40], "coordinate": [10, 20]},
    {"action": "scroll", "pixels": -10000},
    {"action": "scroll", "pixels": 3, "coordinate": [500, 500]},
    {"action": "scroll", "coordinate": [500, 500], "pixels": -5},
    {"action": "hscroll", "pixels": 10000},
    {"action": "wait", "time": 0},
    {"action": "wait", "time": 2.5},
    {"action": "wait", "time": 59.999},
    {"action": "wait", "time": 60},
    {"action": "terminate", "status": "success"},
    {"action": "terminate", "status": "failure"},
    {"action": "key", "keys": ["enter"]},
    {"action": "key", "keys": ["ctrl", "a"]},
    {"action": "key", "keys": ["shift"]},
    {"action": "key", "keys": ["\""]},
    {"action": "key", "keys": ["\\"]},
    {"action": "type", "text": ""},
    {"action": "type", "text": "Ada Lovelace"},
    {"action": "type", "text": "ada@example.com"},
    {"action": "type", "text": "Zoë Ünal, 東京 😀 \"quoted\" back\\slash"},
    {"action": "type", "text": "x" * 500},
    {"action": "answer", "text": "42"},
]

INVALID = [
    # coordinates
    {"action": "left_click", "coordinate": [1001, 0]},
    {"action": "left_click", "coordinate": [-1, 0]},
    {"action": "left_click", "coordinate": [0.5, 0]},
    {"action": "left_click", "coordinate": ["1", 0]},
    {"action": "left_click", "coordinate": [1, 2, 3]},
    {"action": "left_click", "coordinate": [1]},
    {"action": "mouse_move"},
    {"action": "left_click_drag"},
    # structure
    {"action": "left_click", "coordinate": [1, 2], "extra": 1},
    {"action": "click", "coordinate": [1, 2]},
    {"coordinate": [1, 2], "action": "left_click"},
    {},
    # numbers
    {"action": "scroll", "pixels": 10001},
    {"action": "scroll", "pixels": 1.5},
    {"action": "scroll"},
    {"action": "wait", "time": 60.5},
    {"action": "wait", "time": 61},
    {"action": "wait", "time": -1},
    {"action": "wait", "time": 1e3},
    {"action": "terminate", "status": "done"},
    # keys
    {"action": "key", "keys": ["alt", "f4"]},
    {"action": "key", "keys": ["alt", "ctrl", "delete"]},
    {"action": "key", "keys": ["alt", "ctrl", "f2"]},
    {"action": "key", "keys": ["alt", "ctrl", "shift", "t"]},  # holds ctrl+alt
    {"action": "key", "keys": ["alt", "tab"]},
    {"action": "key", "keys": ["win"]},
    {"action": "key", "keys": ["ctrl", "win", "a"]},
    {"action": "key", "keys": ["notakey"]},
    {"action": "key", "keys": []},
    {"action": "key", "keys": ["ctrl", "a", "b"]},
    {"action": "key", "keys": "enter"},
    # text
    {"action": "type", "text": "line\nbreak"},
    {"action": "type", "text": "tab\there"},
    {"action": "type", "text": "bell\x07"},
    {"action": "type", "text": "del\x7f"},
    {"action": "type", "text": "zero\u200bwidth"},
    {"action": "type", "text": "line\u2028sep"},
    {"action": "type", "text": "bidi\u202eoverride"},
    {"action": "type", "text": "bom\ufeff"},
    {"action": "type", "text": "x" * 501},
    {"action": "type"},
    {"action": "answer", "text": "y" * 501},
]


@pytest.mark.parametrize("args", VALID, ids=lambda a: json.dumps(a)[:60])
def test_accepts_valid_replies_that_parser_and_policy_accept(args):
    reply = native(args)
    assert accepts(reply)
    assert passes(reply)


@pytest.mark.parametrize("args", INVALID, ids=lambda a: json.dumps(a)[:60])
def test_refuses_invalid_replies(args):
    assert not accepts(native(args))


@pytest.mark.parametrize("reply", [
    'Thought: click it\n<tool_call>\n{"name": "computer_use", "arguments": {"action": "left_click"}}\n</tool_call>',
    '<tool_call>\n{"name": "computer_use", "arguments": {"action": "left_click"}}\n</tool_call> done',
    '<tool_call>{"name": "computer_use", "arguments": {"action": "left_click"}}</tool_call>',
    '<tool_call>\n{"name": "computer", "arguments": {"action": "left_click"}}\n</tool_call>',
    '<tool_call>\n{"name": "computer_use", "arguments": {"action": "left_click"}}\n</tool_call>\n'
    '<tool_call>\n{"name": "computer_use", "arguments": {"action": "left_click"}}\n</tool_call>',
    '{"name": "computer_use", "arguments": {"action": "left_click"}}',
    '<tool_call>\n{"name": "computer_use", "arguments": {"action": "left_click"}}\n',  # truncated
    '<tool_call>\n{"name": "computer_use", "arguments": {"action": "type", "text": "\\n"}}\n</tool_call>',
    '<tool_call>\n{"name": "computer_use", "arguments": {"action": "type", "text": "\\u0007"}}\n</tool_call>',
    '<tool_call>\n{"name": "computer_use", "arguments": {"action": "type", "text": "\\u0041"}}\n</tool_call>',
    '<tool_call>\n{"name": "computer_use", "arguments": {"action":"left_click"}}\n</tool_call>',
])
def test_refuses_anything_but_one_canonical_tool_call(reply):
    assert not accepts(reply)


def test_only_allowed_action_kinds():
    allow = Allow(actions=["left_click"])
    assert accepts(native({"action": "left_click", "coordinate": [3, 4]}), allow)
    for args in ({"action": "type", "text": "a"}, {"action": "terminate", "status": "success"},
                 {"action": "key", "keys": ["enter"]}):
        assert not accepts(native(args), allow)
    text = reply_grammar(Policy(allow))
    assert "a_left_click" in text and "a_type" not in text and "chord" not in text


def test_only_the_policys_chords():
    allow = Allow(actions=["key"], keys=["ctrl+a", "Return"])
    assert accepts(native({"action": "key", "keys": ["ctrl", "a"]}), allow)
    assert accepts(native({"action": "key", "keys": ["enter"]}), allow)  # "Return" normalised
    for keys in (["a"], ["ctrl", "c"], ["tab"], ["Return"]):
        assert not accepts(native({"action": "key", "keys": keys}), allow), keys


def test_no_chords_allowed_drops_the_key_action():
    allow = Allow(actions=["key", "wait"], keys=[])
    assert "a_key" not in reply_grammar(Policy(allow))
    assert accepts(native({"action": "wait", "time": 1}), allow)


@pytest.mark.parametrize("n", [0, 1, 3, 200])
def test_text_is_bounded_by_max_text_len(n):
    allow = Allow(actions=["type", "answer"], max_text_len=n)
    for action in ("type", "answer"):
        assert accepts(native({"action": action, "text": "é" * n}), allow)
        assert not accepts(native({"action": action, "text": "é" * (n + 1)}), allow)
    # an escaped quote is one character of text
    if n:
        assert accepts(native({"action": "type", "text": '"' * n}), allow)


def test_fill_form_policy():
    assert accepts(native({"action": "key", "keys": ["ctrl", "a"]}), FILL_FORM)
    assert accepts(native({"action": "type", "text": "Ada Lovelace"}), FILL_FORM)
    assert not accepts(native({"action": "key", "keys": ["esc"]}), FILL_FORM)
    assert not accepts(native({"action": "answer", "text": "x"}), FILL_FORM)
    # deny_text is a regex the grammar cannot express: the policy still catches it
    reply = native({"action": "type", "text": "my password"})
    assert accepts(reply, FILL_FORM) and not passes(reply, FILL_FORM)


def test_every_default_chord_passes_the_default_policy():
    chords = default_chords()
    assert len(chords) > 500 and len(set(chords)) == len(chords)
    policy = Policy()
    for chord in chords:
        policy.check(Key(action="key", keys=list(chord)))
        assert normalize_chord(chord) == chord


@pytest.mark.slow
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(sorted(VALID_KEYS | {"control", "super", "Return", "A"})), min_size=1, max_size=3))
def test_key_grammar_is_sound_and_complete_up_to_normalisation(keys):
    reply = native({"action": "key", "keys": keys})
    if accepts(reply):
        assert passes(reply)
    if passes(reply):
        canonical = normalize_chord(keys)
        if len(canonical) == len(keys):  # the policy folds repeated modifiers; the grammar does not
            assert accepts(native({"action": "key", "keys": list(canonical)}))


@pytest.mark.slow
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=12))
def test_text_grammar_agrees_with_the_policy(text):
    allow = Allow(actions=["type"], max_text_len=10)
    reply = native({"action": "type", "text": text})
    if "<tool_call>" in text or "</tool_call>" in text:
        return  # the parser sees a second tool call; the matcher bans only the tag tokens (below)
    try:
        Policy(allow).check(parse_action(reply))
        ok = True
    except PolicyError as e:
        if "deny pattern" in str(e):
            return  # regexes are the policy's job
        ok = False
    assert accepts(reply, allow) == ok


@pytest.mark.parametrize("allow", [None, Allow(actions=["left_click"]), FILL_FORM,
                                   Allow(actions=["key"], keys=["ctrl+shift+pagedown"])])
def test_max_reply_bytes_bounds_the_longest_reply(allow):
    bound = max_reply_bytes(Policy(allow))
    policy = Policy(allow)
    longest = [native({"action": "left_click_drag", "coordinate": [1000, 1000], "start_coordinate": [1000, 1000]})]
    if "type" in policy.actions:
        longest.append(native({"action": "type", "text": "😀" * policy.allow.max_text_len}))
    if "key" in policy.actions:
        longest += [native({"action": "key", "keys": list(c)}) for c in grammar.Spec.of(policy).chords]
    for reply in longest:
        if accepts(reply, allow):
            assert len(reply.encode()) <= bound
    assert bound < 4 * 500 + 200  # still a few KB at most


def test_huge_text_limits_are_capped_to_the_reply_budget():
    policy = Policy(Allow(actions=["type"], max_text_len=100_000))
    assert max_reply_bytes(policy) + 1 <= MAX_REPLY_TOKENS
    n = text_bound(policy)
    assert 500 < n < 1000
    assert accepts(native({"action": "type", "text": "x" * n}), policy.allow)
    assert not accepts(native({"action": "type", "text": "x" * (n + 1)}), policy.allow)


def test_constrainer_compiles_once_per_grammar_and_gives_fresh_matchers(tiny_constrainer):
    _, c = tiny_constrainer
    a = c.compiled(Policy(FILL_FORM))
    assert c.compiled(Policy(FILL_FORM.model_copy(update={"max_text_len": 7}))) is a  # the bound is not in the grammar
    assert c.compiled(Policy(Allow(actions=["wait"]))) is not a
    assert c.logits_processor(Policy(FILL_FORM)) is not c.logits_processor(Policy(FILL_FORM))
    assert c.matcher(Policy(FILL_FORM)).accept_string(native({"action": "key", "keys": ["tab"]}))


def test_without_xgrammar_loading_is_a_clear_error_not_unconstrained_decoding(monkeypatch):
    monkeypatch.setitem(sys.modules, "xgrammar", None)  # import xgrammar -> ImportError
    with pytest.raises(VlagentError, match="constrained decoding needs xgrammar"):
        grammar.make_constrainer(object(), 10)


def test_text_chars_counts_characters_escapes_and_the_closing_quote():
    assert text_chars(b"abc", False) == (3, False, False)
    assert text_chars(b'ab"}}', False) == (2, True, False)
    assert text_chars(b'a\\"b"', False) == (3, True, False)  # \" is one character
    assert text_chars(b"a\\", False) == (2, False, True)  # the escape counts at its backslash
    assert text_chars(b'"x', True) == (1, False, False)  # an escaped quote does not close
    assert text_chars("é世😀".encode(), False) == (3, False, False)
    assert text_chars("é".encode()[1:], False) == (0, False, False)  # a continuation byte is no new character


@pytest.fixture(scope="module")
def tiny_constrainer():
    from transformers import AutoTokenizer

    from agent.backends.tiny import tiny_checkpoint

    tok = AutoTokenizer.from_pretrained(tiny_checkpoint())
    return tok, grammar.Constrainer(tok, vocab_size=len(tok) + 38)


def allowed_ids(bitmask, vocab_size):
    import numpy as np

    bits = np.unpackbits(bitmask.numpy().view(np.uint8), bitorder="little")[:vocab_size]
    return np.flatnonzero(bits).tolist()


@pytest.mark.parametrize("allow", [Allow(actions=["type"], max_text_len=5), Allow(actions=["answer"], max_text_len=30),
                                   FILL_FORM, None], ids=["type5", "answer30", "fill_form", "default"])
def test_random_token_walks_always_end_in_a_valid_reply(tiny_constrainer, allow):
    """Any model, choosing any token the mask allows (here at random, biased to long tokens and
    escapes), ends a valid reply within the token budget."""
    tok, c = tiny_constrainer
    policy = Policy(allow)
    budget = max_reply_bytes(policy) + 1
    stop = tok.convert_tokens_to_ids("<|im_end|>")
    bitmask = xgr.allocate_token_bitmask(1, c.vocab_size)
    for seed in range(12):
        rng = random.Random(seed)
        m, out = c.matcher(policy), []
        while not m.is_terminated():
            assert len(out) < budget, tok.decode(out)
            m.fill_next_token_bitmask(bitmask)
            ids = allowed_ids(bitmask, c.vocab_size)
            tricky = [i for i in ids if b"\\" in c._limit.token_bytes[i]]
            pick = rng.random()
            if tricky and pick < 0.3:
                t = rng.choice(tricky)
            elif pick < 0.6:
                t = max(ids, key=lambda i: len(c._limit.token_bytes[i]))
            else:
                t = rng.choice(ids)
            assert m.accept_token(t)
            out.append(t)
        assert out[-1] == stop
        reply = tok.decode(out, skip_special_tokens=True)
        action = policy.check(parse_action(reply))
        if action.action in ("type", "answer"):
            assert len(action.text) <= policy.allow.max_text_len


def test_at_the_text_limit_only_the_closing_quote_fits(tiny_constrainer):
    tok, c = tiny_constrainer
    policy = Policy(Allow(actions=["type"], max_text_len=4))
    m = c.matcher(policy)
    assert m.accept_string('<tool_call>\n{"name": "computer_use", "arguments": {"action": "type", "text": "ab\\')
    assert (m.in_text, m.text_len, m.escaped) == (True, 3, True)
    assert m.accept_string('"')  # completes the escape: still 3 characters
    bitmask = xgr.allocate_token_bitmask(1, c.vocab_size)
    m.fill_next_token_bitmask(bitmask)
    fits = [c._limit.token_bytes[i] for i in allowed_ids(bitmask, c.vocab_size)]
    assert all(text_chars(b, False)[0] <= 1 for b in fits) and b'"' in fits
    assert m.accept_string("z")
    m.fill_next_token_bitmask(bitmask)
    assert all(c._limit.token_bytes[i].startswith(b'"') for i in allowed_ids(bitmask, c.vocab_size))
    assert not m.accept_string("y")  # one past the bound


def test_tool_call_tag_tokens_never_appear_inside_text(tiny_constrainer):
    tok, c = tiny_constrainer
    m = c.matcher(Policy(Allow(actions=["type"])))
    assert m.accept_string('<tool_call>\n{"name": "computer_use", "arguments": {"action": "type", "text": "a')
    bitmask = xgr.allocate_token_bitmask(1, c.vocab_size)
    m.fill_next_token_bitmask(bitmask)
    ids = allowed_ids(bitmask, c.vocab_size)
    assert tok.convert_tokens_to_ids("<tool_call>") not in ids
    assert tok.convert_tokens_to_ids("</tool_call>") not in ids
    assert len(ids) > 500  # ordinary text tokens still fit


def test_an_allow_block_leaving_no_action_is_one_clear_error():
    from agent.errors import VlagentError

    with pytest.raises(VlagentError, match="leaves no action"):
        reply_grammar(Policy(Allow(actions=["key"], keys=["ctrl+alt+t"])))  # every listed chord is denied


def test_text_limit_counts_equal_the_byte_walk():
    """TextLimit counts most tokens with numpy; every count equals text_chars' walk."""
    import numpy as np

    toks = [b"ab", b'"x', b'\\"', "é".encode(), b"", b"\x80a", b"a\\\\b", "<tool_call>".encode(), "日本".encode(),
            b"\\", b'x"y', "é".encode()[1:] + b"z"]
    limit = grammar.TextLimit(toks, 16)
    ref = np.array([[grammar.text_chars(b, esc)[0] for b in limit.token_bytes] for esc in (False, True)])
    assert (limit.counts == ref).all()
    assert limit.tags.tolist() == [b == "<tool_call>".encode() for b in limit.token_bytes]


def test_a_question_is_in_the_grammar_only_where_a_person_can_answer():
    question = native({"action": "ask_user", "text": "Which of the two accounts?"})
    assert not accepts(question) and not passes(question)  # unattended: never even decoded
    assert accepts(question, can_ask=True)
    assert not accepts(native({"action": "ask_user", "text": ""}), can_ask=True)  # the schema refuses it too
    short = Allow(max_text_len=5)
    assert accepts(native({"action": "ask_user", "text": "12345"}), short, can_ask=True)
    assert not accepts(native({"action": "ask_user", "text": "123456"}), short, can_ask=True)
    longest = native({"action": "ask_user", "text": "😀" * 500})
    assert accepts(longest, can_ask=True) and len(longest.encode()) <= max_reply_bytes(Policy(can_ask=True))
    assert reply_grammar(Policy()) == reply_grammar(Policy(Allow(), can_ask=False))  # unattended prompts unchanged
