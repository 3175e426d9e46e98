"""Decoding constrained to one native reply that the policy can accept (xgrammar).

The model may only write
    <tool_call>\\n{"name": "computer_use", "arguments": {"action": ...}}\\n</tool_call>
with the allowed action kinds, integer coordinates 0..1000, bounded scroll pixels and wait time,
key chords the policy accepts, and text of at most `max_text_len` characters free of the characters
the policy rejects (Unicode categories Cc, Cf, Zl, Zp). Every field is bounded, so even a model with
random weights ends its reply within `max_reply_bytes(policy)` tokens (a token is at least one byte).
The grammar is written here in xgrammar's EBNF rather than derived from a JSON schema: xgrammar's
schema converter drops maxLength when a pattern is set, so a schema cannot bound a string and keep
control characters out at the same time; EBNF can, with a repetition range over a character class.

What the grammar cannot express, the policy still checks after parsing: the deny_text regexes (a
grammar cannot exclude every string matching an arbitrary regex). Float coordinates and waits over
3 decimals, which the schema accepts, are simply never produced.
"""
from __future__ import annotations

import json
import logging
import unicodedata
from dataclasses import dataclass
from functools import cache

from actions.keys import PRINTABLE
from actions.policy import (DENIED_CHORDS, DENIED_KEYS, EDITING_KEYS, MAX_SCROLL_PX, MAX_WAIT_S,
                            Policy, normalize_key)
from actions.schema import ACTION_NAMES

log = logging.getLogger(__name__)

MAX_REL = 1000  # coordinates are relative, 0..1000
WAIT_DECIMALS = 3
# The policy rejects these categories in typed text (Cs, surrogates, cannot occur in UTF-8 text).
FORBIDDEN_CATEGORIES = ("Cc", "Cf", "Zl", "Zp")
# Planes with assigned non-private characters (BMP, SMP, SIP, TIP, SSP); scanning only these
# keeps the class exact and takes a third of the time of all 17 planes.
ASSIGNED_PLANES = ((0, 0x40000), (0xE0000, 0xF0000))
UTF8_MAX_BYTES = 4  # per character: the worst case when every byte is its own token
SAFE_MODIFIER_SETS = ((), ("alt",), ("ctrl",), ("shift",), ("alt", "ctrl"), ("alt", "shift"),
                      ("ctrl", "shift"), ("alt", "ctrl", "shift"))  # sorted, as normalize_chord sorts
OPEN = '<tool_call>\n{"name": "computer_use", "arguments": {"action": '
CLOSE = "}}\n</tool_call>"


def lit(text: str) -> str:
    """An EBNF string literal matching `text` exactly."""
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif not ch.isprintable():
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def uint_le(n: int) -> str:
    """EBNF alternatives for a JSON non-negative integer 0..n (no leading zeros)."""
    s = str(n)
    if len(s) == 1:
        return f"[0-{s}]"
    alts = ["[0-9]"] + ["[1-9]" + " [0-9]" * (k - 1) for k in range(2, len(s))]
    for i, d in enumerate(s):  # same length as n: a prefix of n, one smaller digit, then anything
        lo = 1 if i == 0 else 0
        if int(d) > lo:
            head = (lit(s[:i]) + " ") if i else ""
            alts.append(f"{head}[{lo}-{int(d) - 1}]" + " [0-9]" * (len(s) - i - 1))
    alts.append(lit(s))
    return " | ".join(f"({a})" for a in alts)


def _range(lo: int, hi: int) -> str:
    esc = lambda c: f"\\U{c:08x}" if c > 0xFFFF else f"\\u{c:04x}"  # noqa: E731
    return esc(lo) if lo == hi else f"{esc(lo)}-{esc(hi)}"


@cache
def text_char_class() -> str:
    """A character class of everything the policy accepts in text, except '"' and '\\' (escaped
    separately). Computed from unicodedata, the same table the policy reads."""
    banned = [c for lo, hi in ASSIGNED_PLANES for c in range(lo, hi)
              if unicodedata.category(chr(c)) in FORBIDDEN_CATEGORIES or chr(c) in '"\\']
    ranges, start, prev = [], banned[0], banned[0]
    for c in banned[1:]:
        if c != prev + 1:
            ranges.append((start, prev))
            start = c
        prev = c
    ranges.append((start, prev))
    return "[^" + "".join(_range(lo, hi) for lo, hi in ranges) + "]"


def _json_list(names: tuple[str, ...]) -> str:
    return json.dumps(list(names), ensure_ascii=False)


@cache
def default_chords() -> tuple[tuple[str, ...], ...]:
    """Every chord the default key policy accepts, in canonical form (modifiers sorted first)."""
    singles = sorted(c for c in PRINTABLE if normalize_key(c) == c and c.isprintable())
    rest = [()] + [(k,) for k in sorted(EDITING_KEYS)] + [(c,) for c in singles]
    chords = []
    for mods in SAFE_MODIFIER_SETS:
        for r in rest:
            chord = mods + r
            if chord and chord not in DENIED_CHORDS and not DENIED_KEYS & set(chord):
                chords.append(chord)
    return tuple(chords)


@dataclass(frozen=True)
class Spec:
    """What the grammar depends on (deny_text is left to the policy)."""

    actions: tuple[str, ...]  # allowed kinds, in ACTION_NAMES order
    chords: tuple[tuple[str, ...], ...]  # canonical chords the key action may send
    max_text_len: int

    @classmethod
    def of(cls, policy: Policy | None) -> "Spec":
        policy = policy or Policy()
        chords = default_chords() if policy.chords is None else tuple(sorted(policy.chords))
        actions = tuple(a for a in ACTION_NAMES if a in policy.actions and (a != "key" or chords))
        return cls(actions, chords, policy.allow.max_text_len)


def _either_order(first: str, second: str) -> str:
    """Two key-value pairs, the second optional, in either order."""
    return f'({first} (", " {second})? | {second} ", " {first})'


def _action_rules(spec: Spec) -> dict[str, str]:
    """One EBNF body per allowed action kind, for what follows `{"action": `."""
    n = spec.max_text_len
    text = '"\\"" tchar{0,%d} "\\""' % n if n else '"\\"\\""'
    coord = '"\\"coordinate\\": " coord'
    pixels = '"\\"pixels\\": " pixels'
    body = {
        "key": '"\\"key\\", \\"keys\\": " chord',
        "type": f'"\\"type\\", \\"text\\": " {text}',
        "mouse_move": f'"\\"mouse_move\\", " {coord}',
        "left_click_drag": '"\\"left_click_drag\\", " ' + _either_order(coord, '"\\"start_coordinate\\": " coord'),
        "scroll": '"\\"scroll\\", " ' + _either_order(pixels, coord),
        "hscroll": '"\\"hscroll\\", " ' + _either_order(pixels, coord),
        "wait": '"\\"wait\\", \\"time\\": " time',
        "terminate": '"\\"terminate\\", \\"status\\": " ("\\"success\\"" | "\\"failure\\"")',
        "answer": f'"\\"answer\\", \\"text\\": " {text}',
    }
    for click in ("left_click", "right_click", "middle_click", "double_click", "triple_click"):
        body[click] = f'"\\"{click}\\"" (", " {coord})?'
    return {a: body[a] for a in spec.actions}


def reply_grammar(policy: Policy | None = None) -> str:
    """The EBNF grammar (xgrammar dialect) of every native reply this policy can accept."""
    return _grammar(Spec.of(policy))


@cache
def _grammar(spec: Spec) -> str:
    actions = _action_rules(spec)
    rules = [
        f"root ::= {lit(OPEN)} action {lit(CLOSE)}",
        "action ::= " + " | ".join(f"a_{a}" for a in actions),
        *(f"a_{a} ::= {b}" for a, b in actions.items()),
        'coord ::= "[" rel ", " rel "]"',
        f"rel ::= {uint_le(MAX_REL)}",
        f'pixels ::= "-"? ({uint_le(MAX_SCROLL_PX)})',
        f'time ::= ({uint_le(int(MAX_WAIT_S) - 1)}) ("." [0-9]{{1,{WAIT_DECIMALS}}})? | {lit(str(int(MAX_WAIT_S)))}',
        f'tchar ::= {text_char_class()} | "\\\\\\"" | "\\\\\\\\"',
    ]
    if "key" in actions:
        rules.append("chord ::= " + " | ".join(lit(_json_list(c)) for c in spec.chords))
    return "\n".join(rules) + "\n"


def max_reply_bytes(policy: Policy | None = None) -> int:
    """An upper bound on the UTF-8 length of any reply the grammar accepts: with one byte per token
    at worst, decoding this many tokens (plus the stop token) always completes a reply."""
    spec = Spec.of(policy)
    longest = [len('"left_click_drag", "coordinate": [1000, 1000], "start_coordinate": [1000, 1000]')]
    if {"type", "answer"} & set(spec.actions):
        longest.append(len('"answer", "text": ""') + UTF8_MAX_BYTES * spec.max_text_len)
    if "key" in spec.actions:
        longest.append(len('"key", "keys": ') + max(len(_json_list(c).encode()) for c in spec.chords))
    return len((OPEN + CLOSE).encode()) + max(longest)


class Constrainer:
    """Compiles reply grammars for one tokenizer, once per policy, and hands out a fresh
    transformers LogitsProcessor per generate call (xgrammar's processors are single-use)."""

    def __init__(self, tokenizer, vocab_size: int):
        import xgrammar as xgr

        self._xgr = xgr
        info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size)
        self._compiler = xgr.GrammarCompiler(info)
        self._compiled: dict[Spec, object] = {}

    def compiled(self, policy: Policy | None = None):
        spec = Spec.of(policy)
        if spec not in self._compiled:
            self._compiled[spec] = self._compiler.compile_grammar(_grammar(spec))
        return self._compiled[spec]

    def matcher(self, policy: Policy | None = None):
        """A fresh xgrammar.GrammarMatcher (for engines that apply the token bitmask themselves)."""
        return self._xgr.GrammarMatcher(self.compiled(policy))

    def logits_processor(self, policy: Policy | None = None):
        from xgrammar.contrib.hf import LogitsProcessor

        return LogitsProcessor(self.compiled(policy))


_warned = False


def make_constrainer(tokenizer, vocab_size: int) -> Constrainer | None:
    """A Constrainer, or None (with one warning per process) when xgrammar is not installed."""
    global _warned
    try:
        return Constrainer(tokenizer, vocab_size)
    except ImportError as e:
        if not _warned:
            log.warning("xgrammar is not available (%s): decoding is unconstrained; replies are still "
                        "parsed and checked by the policy", e)
            _warned = True
        return None
