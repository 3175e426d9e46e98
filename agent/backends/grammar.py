"""Decoding constrained to one native reply that the policy can accept (xgrammar).

The model may only write
    <tool_call>\\n{"name": "computer_use", "arguments": {"action": ...}}\\n</tool_call>
with the allowed action kinds, integer coordinates 0..1000, bounded scroll pixels and wait time,
key chords the policy accepts, and text of at most `max_text_len` characters (capped at
MAX_TEXT_CHARS) free of the characters the policy rejects (Unicode categories Cc, Cf, Zl, Zp, less
the joiners, bidi marks and tag characters the policy keeps for emoji and right-to-left text).
Every field is bounded, so even a model with random weights ends its reply within
`max_reply_bytes(policy)` tokens (a token is at least one byte).

How, and why this way (measured with xgrammar 0.2.8, a 151k-token vocabulary, on the CPU):
- The grammar is EBNF written here, not a JSON schema: xgrammar's schema converter drops maxLength
  when a pattern is set, so a schema cannot both bound a string and keep control characters out.
- The text length is NOT in the grammar. A repetition range `tchar{0,200}` is exact, but filling
  its token mask took 1.5 to 12 s per token; a chain of 200 rules compiled for 30 s. The grammar
  says `tchar*` (about 2 ms per token inside text, microseconds elsewhere), and ReplyMatcher bans,
  while inside the text, every token that would carry it past the bound, and the tool-call tag
  tokens (the parser would read them as a second call).
- What no grammar here expresses, the policy checks after parsing: the deny_text regexes; a
  tool-call tag spelled out of smaller tokens inside text. Float coordinates and waits with over
  3 decimals, which the schema accepts, are simply never produced.
"""
from __future__ import annotations

import json
import unicodedata
from dataclasses import dataclass
from functools import cache

from actions.keys import PRINTABLE
from actions.policy import (ALLOWED_FORMAT, EDITING_KEYS, MAX_SCROLL_PX, MAX_WAIT_S, Policy, default_chord_ok,
                            denied_combo, normalize_key)
from actions.schema import ACTION_NAMES, MAX_MARKS
from agent.errors import VlagentError


MAX_REL = 1000  # coordinates are relative, 0..1000
WAIT_DECIMALS = 3
# The policy rejects these categories in typed text (Cs, surrogates, cannot occur in UTF-8 text).
FORBIDDEN_CATEGORIES = ("Cc", "Cf", "Zl", "Zp")
# Planes with assigned non-private characters (BMP, SMP, SIP, TIP, SSP); scanning only these
# keeps the class exact and takes a third of the time of all 17 planes.
ASSIGNED_PLANES = ((0, 0x40000), (0xE0000, 0xF0000))
UTF8_MAX_BYTES = 4  # per character: the worst case when every byte is its own token
MAX_REPLY_TOKENS = 4096  # no reply needs more, whatever the policy (a few seconds on a GPU)
MAX_TEXT_CHARS = (MAX_REPLY_TOKENS - 256) // UTF8_MAX_BYTES  # 256: the reply around the text
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
              if (unicodedata.category(chr(c)) in FORBIDDEN_CATEGORIES and c not in ALLOWED_FORMAT)
              or chr(c) in '"\\']
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
            if chord and default_chord_ok(chord) and denied_combo(chord) is None:
                chords.append(chord)
    return tuple(chords)


@dataclass(frozen=True)
class Spec:
    """What the grammar depends on (deny_text is left to the policy)."""

    actions: tuple[str, ...]  # allowed kinds, in ACTION_NAMES order
    chords: tuple[tuple[str, ...], ...]  # canonical chords the key action may send
    empty_text: bool  # no text at all (any other bound is ReplyMatcher's job)
    marks: bool = False  # a click may name an element mark instead of a coordinate (--marks)

    @classmethod
    def of(cls, policy: Policy | None) -> "Spec":
        policy = policy or Policy()
        chords = default_chords() if policy.chords is None else \
            tuple(sorted(c for c in policy.chords if denied_combo(c) is None))  # the policy refuses the rest
        empty = policy.allow.max_text_len == 0
        actions = tuple(a for a in ACTION_NAMES if a in policy.actions and (a != "key" or chords)
                        and (a != "ask_user" or not empty))
        return cls(actions, chords, empty, policy.marks)


def _either_order(first: str, second: str) -> str:
    """Two key-value pairs, the second optional, in either order."""
    return f'({first} (", " {second})? | {second} ", " {first})'


def _action_rules(spec: Spec) -> dict[str, str]:
    """One EBNF body per allowed action kind, for what follows `{"action": `."""
    text = '"\\"\\""' if spec.empty_text else '"\\"" tchar* "\\""'
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
        "ask_user": '"\\"ask_user\\", \\"text\\": \\"" tchar+ "\\""',  # a question is not empty
    }
    place = f'({coord} | "\\"mark\\": " mark)' if spec.marks else coord
    for click in ("left_click", "right_click", "middle_click", "double_click", "triple_click"):
        body[click] = f'"\\"{click}\\"" (", " {place})?'
    return {a: body[a] for a in spec.actions}


def reply_grammar(policy: Policy | None = None) -> str:
    """The EBNF grammar (xgrammar dialect) of every native reply this policy can accept."""
    return _grammar(Spec.of(policy))


@cache
def _grammar(spec: Spec) -> str:
    actions = _action_rules(spec)
    if not actions:
        raise VlagentError("the task's allow block leaves no action the policy accepts (are all its keys denied?)")
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
    if spec.marks:
        rules.append(f"mark ::= [1-9] [0-9]{{0,{len(str(MAX_MARKS)) - 1}}}")
    if "key" in actions:
        rules.append("chord ::= " + " | ".join(lit(_json_list(c)) for c in spec.chords))
    return "\n".join(rules) + "\n"


def text_bound(policy: Policy | None = None) -> int:
    """Characters of text a reply may hold: the policy's max_text_len, capped so that even a reply
    of one byte per token fits MAX_REPLY_TOKENS (longer text takes several type actions)."""
    policy = policy or Policy()
    return min(policy.allow.max_text_len, MAX_TEXT_CHARS)


def max_reply_bytes(policy: Policy | None = None) -> int:
    """An upper bound on the UTF-8 length of any reply the grammar (with the text bound) accepts:
    with one byte per token at worst, this many tokens (plus the stop token) always end a reply."""
    spec = Spec.of(policy)
    longest = [len('"left_click_drag", "coordinate": [1000, 1000], "start_coordinate": [1000, 1000]')]
    texts = [len(f'"{a}", "text": ""') for a in ("type", "answer", "ask_user") if a in spec.actions]
    if texts:
        longest.append(max(texts) + UTF8_MAX_BYTES * text_bound(policy))
    if "key" in spec.actions:
        longest.append(len('"key", "keys": ') + max(len(_json_list(c).encode()) for c in spec.chords))
    return len((OPEN + CLOSE).encode()) + max(longest)


TEXT_KEY = b'"text": "'  # the text value starts right after this (the grammar puts it nowhere else)
TAGS = (b"<tool_call>", b"</tool_call>")
QUOTE, BACKSLASH = 0x22, 0x5C


def _is_char_start(byte: int) -> bool:
    return byte & 0xC0 != 0x80  # not a UTF-8 continuation byte


def text_chars(data: bytes, escaped: bool) -> tuple[int, bool, bool]:
    """Walk bytes inside a JSON string: (characters, closed by an unescaped quote, ends escaped).
    An escape counts as one character, at its backslash; counting stops at the closing quote."""
    chars = 0
    for b in data:
        if escaped:
            escaped = False
        elif b == BACKSLASH:
            chars, escaped = chars + 1, True
        elif b == QUOTE:
            return chars, True, False
        elif _is_char_start(b):
            chars += 1
    return chars, False, escaped


class TextLimit:
    """Per-tokenizer tables for the text: how many characters each token would add (from a plain or
    an escaped state), and cached bitmasks of the tokens that fit a remaining budget. Tokens holding
    a tool-call tag never fit: the parser would read them as a second tool call."""

    def __init__(self, token_bytes: list[bytes], vocab_size: int):
        import numpy as np

        self.token_bytes = tb = list(token_bytes) + [b""] * (vocab_size - len(token_bytes))
        # Most tokens hold no quote or backslash: their characters are their UTF-8 start bytes (one
        # fewer after a backslash, which swallows the first byte), counted at once with numpy; the
        # few others walk text_chars. (A Python walk over 151k tokens took 2 s per backend start.)
        lens = np.fromiter((len(b) for b in tb), dtype=np.int64, count=len(tb))
        starts = np.array([_is_char_start(b) for b in range(256)], dtype=np.int32)[
            np.frombuffer(b"".join(tb), dtype=np.uint8)]
        ends = np.cumsum(lens)
        total = np.concatenate([[0], np.cumsum(starts)])
        plain = total[ends] - total[ends - lens]
        first = np.where(lens > 0, total[np.minimum(ends - lens + 1, len(starts))] - total[ends - lens], 0)
        self.counts = np.stack([plain, plain - first]).astype(np.int32)
        self.total = plain.astype(np.int32)  # characters of the whole token (free-text spans)
        self.first = np.array([b[0] if b else -1 for b in tb], dtype=np.int16)
        self._span_masks: dict[object, object] = {}
        for i, b in enumerate(tb):
            if b'"' in b or b"\\" in b:
                self.counts[0, i], self.counts[1, i] = text_chars(b, False)[0], text_chars(b, True)[0]
        self.tags = np.array([b"tool_call>" in b and any(t in b for t in TAGS) for b in tb], dtype=bool)
        self.longest = int(self.counts.max())  # no token adds more characters than this
        self.words = (vocab_size + 31) // 32
        self._masks: dict[tuple[bool, int], object] = {}

    def allowed(self, escaped: bool, remaining: int):
        """An int32 bitmask (xgrammar's layout) of the tokens that may come next in the text."""
        key = (escaped, min(remaining, self.longest))
        if key not in self._masks:
            import numpy as np
            import torch

            fits = np.zeros(self.words * 32, dtype=bool)
            fits[: len(self.tags)] = (self.counts[int(escaped)] <= key[1]) & ~self.tags
            self._masks[key] = torch.from_numpy(np.packbits(fits, bitorder="little").view(np.int32).copy())
        return self._masks[key]

    def _packed(self, fits):
        import numpy as np
        import torch

        bits = np.zeros(self.words * 32, dtype=bool)
        bits[: len(fits)] = fits
        return torch.from_numpy(np.packbits(bits, bitorder="little").view(np.int32).copy())

    def short(self, chars: int):
        """A bitmask of the tokens of at most `chars` characters (free text inside a span)."""
        key = ("short", chars)
        if key not in self._span_masks:
            self._span_masks[key] = self._packed((self.total <= chars) & ~self.tags)
        return self._span_masks[key]

    def starting_with(self, byte: int):
        """A bitmask of the tokens whose first byte is `byte` (a span's closing byte)."""
        key = ("first", byte)
        if key not in self._span_masks:
            self._span_masks[key] = self._packed(self.first == byte)
        return self._span_masks[key]


SPAN_TOKEN_CHARS = 16  # inside a free-text span, tokens of at most this many characters


@dataclass(frozen=True)
class Span:
    """Free text in a reply format: it starts right after `opens`, ends at the first `closes` byte
    (not after an `escape` byte), and holds at most `max_chars` characters (give or take the last
    token: at most SPAN_TOKEN_CHARS - 1 more)."""

    opens: bytes
    closes: int
    max_chars: int
    escape: int | None = None


class _Bounded:
    """xgrammar's GrammarMatcher plus a length bound kept while decoding (a repetition or maxLength in
    the grammar compiles for seconds over Qwen's vocabulary). Same methods as the GrammarMatcher an
    engine uses. A subclass follows the reply's bytes (_advance), says which tokens its bound leaves
    (_mask: a bitmask row, or None for the grammar's own), whether the text so far is within it, and
    whether the grammar's forced text may be jumped over (not inside bounded text)."""

    def __init__(self, matcher, limit: TextLimit | None):
        self._m = matcher
        self._limit = limit

    def _advance(self, data: bytes) -> None:
        raise NotImplementedError

    def _mask(self):
        return None

    def _within(self) -> bool:
        return True

    def _in_bounded_text(self) -> bool:
        return False

    def accept_token(self, token_id: int) -> bool:
        ok = self._m.accept_token(token_id)
        if ok and self._limit is not None:
            self._advance(self._limit.token_bytes[token_id])
        return ok and self._within()

    def accept_string(self, text: str) -> bool:
        ok = self._m.accept_string(text)
        if ok:
            self._advance(text.encode())
        return ok and self._within()

    def fill_next_token_bitmask(self, bitmask, index: int = 0) -> bool:
        need = self._m.fill_next_token_bitmask(bitmask, index)
        mask = self._mask() if self._limit is not None else None
        if mask is not None:
            bitmask[index] &= mask
            need = True
        return need

    def is_terminated(self) -> bool:
        return self._m.is_terminated()

    def find_jump_forward_string(self) -> str:
        return "" if self._in_bounded_text() else self._m.find_jump_forward_string()


class SpanMatcher(_Bounded):
    """A grammar whose free text is `x*`, plus the spans' length bounds: a repetition range `x{0,n}`
    over Qwen's vocabulary compiles for 20 s; this bounds it while decoding. Inside a span only short
    tokens are offered; at the bound, only tokens that begin with the span's closing byte (the
    grammar then decides what follows)."""

    def __init__(self, matcher, spans: tuple[Span, ...], limit: TextLimit):
        super().__init__(matcher, limit)
        self.spans = spans
        self._tail = b""
        self.span: Span | None = None
        self.chars = 0
        self.escaped = False
        self._longest_open = max((len(sp.opens) for sp in spans), default=1)

    def _advance(self, data: bytes) -> None:
        for b in data:
            sp = self.span
            if sp is not None:
                if self.escaped:
                    self.escaped = False
                elif sp.escape is not None and b == sp.escape:
                    self.escaped = True
                elif b == sp.closes:
                    self.span, self._tail = None, bytes([b])
                    continue
                if _is_char_start(b):
                    self.chars += 1
                continue
            self._tail = (self._tail + bytes([b]))[-self._longest_open:]
            for cand in self.spans:
                if self._tail.endswith(cand.opens):
                    self.span, self.chars, self.escaped, self._tail = cand, 0, False, b""
                    break

    def _mask(self):
        sp = self.span
        if sp is None:
            return None
        at_bound = self.chars >= sp.max_chars and not self.escaped
        return self._limit.starting_with(sp.closes) if at_bound else self._limit.short(SPAN_TOKEN_CHARS)

    def _in_bounded_text(self) -> bool:
        return self.span is not None


class ReplyMatcher(_Bounded):
    """One action reply, plus the bound on its typed text (see the module doc)."""

    def __init__(self, matcher, max_text_len: int, limit: TextLimit | None = None):
        super().__init__(matcher, limit)
        self.max_text_len = max_text_len
        self._tail = b""  # last bytes before the text starts, to spot TEXT_KEY
        self.in_text = self.text_done = False
        self.escaped = False
        self.text_len = 0  # characters of text so far

    def _advance(self, data: bytes) -> None:
        """Follow the reply's bytes: spot where the text starts, then count its characters."""
        if self.text_done:
            return
        if not self.in_text:
            seen = self._tail + data
            at = seen.find(TEXT_KEY)
            if at < 0:
                self._tail = seen[-len(TEXT_KEY):]
                return
            data, self.in_text = seen[at + len(TEXT_KEY):], True
        n, closed, self.escaped = text_chars(data, self.escaped)
        self.text_len += n
        if closed:
            self.in_text, self.text_done = False, True  # one text per reply

    def _within(self) -> bool:
        return self.text_len <= self.max_text_len

    def _mask(self):
        return self._limit.allowed(self.escaped, self.max_text_len - self.text_len) if self.in_text else None

    def _in_bounded_text(self) -> bool:
        return self.in_text


class JsonMatcher(_Bounded):
    """A JSON schema's grammar, plus one length bound for every string value (keys are the schema's
    own): inside a value, the tokens that would carry it past `max_chars` characters are masked
    (TextLimit's tables), so the grammar compiles in milliseconds instead of the seconds a maxLength
    costs. Follows the reply's bytes: containers, keys, strings, escapes."""

    def __init__(self, matcher, max_chars: int, limit: TextLimit):
        super().__init__(matcher, limit)
        self.max_chars = max_chars
        self._stack: list[int] = []  # "{" or "[" bytes
        self._expect_key = False
        self.in_string = self.is_key = self.escaped = False
        self.chars = 0

    def _advance(self, data: bytes) -> None:
        i = 0
        while i < len(data):
            if self.in_string:
                was_escaped = self.escaped
                n, closed, self.escaped = text_chars(data[i:], was_escaped)
                self.chars += n
                if not closed:
                    return
                i += _closing_quote(data[i:], was_escaped) + 1
                self.in_string = self.escaped = False
                continue
            b = data[i]
            if b in b"{[":
                self._stack.append(b)
                self._expect_key = b == ord("{")
            elif b in b"}]":
                if self._stack:
                    self._stack.pop()
            elif b == ord(","):
                self._expect_key = bool(self._stack) and self._stack[-1] == ord("{")
            elif b == ord(":"):
                self._expect_key = False
            elif b == QUOTE:
                self.in_string, self.escaped, self.chars = True, False, 0
                self.is_key = self._expect_key
            i += 1

    def _in_bounded_text(self) -> bool:
        return self.in_string and not self.is_key

    def _within(self) -> bool:
        return not self._in_bounded_text() or self.chars <= self.max_chars

    def _mask(self):
        return self._limit.allowed(self.escaped, self.max_chars - self.chars) if self._in_bounded_text() else None


def _closing_quote(data: bytes, escaped: bool) -> int:
    """Index of the unescaped quote that closes the string `data` continues (text_chars found one)."""
    for j, b in enumerate(data):
        if escaped:
            escaped = False
        elif b == BACKSLASH:
            escaped = True
        elif b == QUOTE:
            return j
    return len(data)


class ReplyLogitsProcessor:
    """For transformers' generate (batch of one): like xgrammar.contrib.hf.LogitsProcessor, with the
    text bound. Single use: make a new one per generate call."""

    def __init__(self, matcher: ReplyMatcher, vocab_size: int):
        import xgrammar as xgr

        self._xgr = xgr
        self.matcher = matcher
        self._bitmask = xgr.allocate_token_bitmask(1, vocab_size)
        self._started = False

    def __call__(self, input_ids, scores):
        if self._started and not self.matcher.is_terminated():
            if not self.matcher.accept_token(int(input_ids[0, -1])):
                raise RuntimeError("the grammar refused a token its own mask allowed")  # a bug, not the model
        self._started = True
        if not self.matcher.is_terminated():
            self.matcher.fill_next_token_bitmask(self._bitmask)
            device = scores.device
            scores = scores if device.type == "cuda" else scores.to("cpu")
            self._xgr.apply_token_bitmask_inplace(scores, self._bitmask.to(scores.device))
            scores = scores.to(device)
        return scores


class Constrainer:
    """The one xgrammar compiler of a tokenizer. Compiles reply grammars once per (action kinds,
    chords) and JSON-schema grammars once per (schema, token budget), and hands out a fresh matcher
    or logits processor per generate call (they hold the state of one reply)."""

    def __init__(self, tokenizer, vocab_size: int):
        import xgrammar as xgr

        self._xgr = xgr
        self.vocab_size = vocab_size
        info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size)
        self._compiler = xgr.GrammarCompiler(info)
        self._limit = TextLimit(info.decoded_vocab, vocab_size)
        self._compiled: dict[object, object] = {}

    @property
    def token_bytes(self) -> list[bytes]:
        """Each token id's bytes (the decoded vocabulary; stop tokens are empty)."""
        return self._limit.token_bytes

    def compiled(self, policy: Policy | None = None):
        spec = Spec.of(policy)
        if spec not in self._compiled:
            self._compiled[spec] = self._compiler.compile_grammar(_grammar(spec))
        return self._compiled[spec]

    def compiled_json(self, schema: dict, max_tokens: int):
        """(xgrammar's grammar of `schema` with its numbers and arrays bounded, the characters every
        string may hold) so that every reply closes within `max_tokens` (agent/backends/json_bounds.py).
        No free whitespace: weak weights cannot pad forever."""
        from agent.backends.json_bounds import MAX_STRING, bounded, plan, schema_key

        key = ("json", schema_key(schema, max_tokens))
        if key not in self._compiled:
            try:
                bounds = plan(schema, max_tokens)
            except ValueError as e:
                raise VlagentError(f"the JSON schema cannot be answered in {max_tokens} tokens: {e}") from None
            grammar = self._compiler.compile_json_schema(json.dumps(bounded(schema, bounds, lengths=False)),
                                                         any_whitespace=False, strict_mode=True)
            self._compiled[key] = (grammar, min(bounds.chars, MAX_STRING))
        return self._compiled[key]

    def json_matcher(self, schema: dict, max_tokens: int) -> "JsonMatcher":
        """A fresh matcher for one reply under `schema` (the engine and the logits processor take it)."""
        grammar, chars = self.compiled_json(schema, max_tokens)
        return JsonMatcher(self._xgr.GrammarMatcher(grammar), chars, self._limit)

    def compile_ebnf(self, ebnf: str):
        """Any other grammar over this tokenizer (the model families' reply formats, benchmarks)."""
        key = ("ebnf", ebnf)
        if key not in self._compiled:
            self._compiled[key] = self._compiler.compile_grammar(ebnf)
        return self._compiled[key]

    def span_matcher(self, ebnf: str, spans: tuple[Span, ...]) -> SpanMatcher:
        """A fresh matcher of `ebnf` (free text written `x*`) with the spans' lengths bounded."""
        return SpanMatcher(self._xgr.GrammarMatcher(self.compile_ebnf(ebnf)), spans, self._limit)

    def ebnf_matcher(self, ebnf: str, max_text_len: int | None = None):
        """A fresh matcher of `ebnf`; with `max_text_len`, the text after `"text": "` is bounded as in
        native replies (ReplyMatcher)."""
        m = self._xgr.GrammarMatcher(self.compile_ebnf(ebnf))
        return m if max_text_len is None else ReplyMatcher(m, max_text_len, self._limit)

    def matcher(self, policy: Policy | None = None) -> ReplyMatcher:
        """For engines that apply the token bitmask themselves."""
        return ReplyMatcher(self._xgr.GrammarMatcher(self.compiled(policy)), text_bound(policy), self._limit)

    def logits_processor(self, policy: Policy | None = None) -> ReplyLogitsProcessor:
        return ReplyLogitsProcessor(self.matcher(policy), self.vocab_size)


def make_constrainer(tokenizer, vocab_size: int) -> Constrainer:
    """The Constrainer; xgrammar is a hard dependency, so its absence is an error, never a silent
    fallback to unconstrained decoding (constrained=False asks for that explicitly)."""
    try:
        return Constrainer(tokenizer, vocab_size)
    except ImportError as e:
        raise VlagentError(f"constrained decoding needs xgrammar ({e}): pip install 'xgrammar==0.2.8'") from None
