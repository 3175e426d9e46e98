"""The whitelist every action passes before it reaches the desktop.

A task's `allow:` block configures it; the defaults are safe for unattended runs.
"""
from __future__ import annotations

import re
import unicodedata
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from actions.keys import ALIASES, VALID_KEYS
from actions.schema import ACTION_NAMES, Action

ActionName = Literal[ACTION_NAMES]  # type: ignore[valid-type]
MAX_WAIT_S = 60.0
MAX_SCROLL_PX = 10_000
MODIFIERS = ("ctrl", "alt", "shift", "win", "command", "fn")
SAFE_MODIFIERS = frozenset({"ctrl", "alt", "shift"})
FUNCTION_KEYS = frozenset(f"f{i}" for i in range(1, 13))
EDITING_KEYS = frozenset({
    "enter", "tab", "backspace", "delete", "esc", "space", "home", "end", "pageup", "pagedown",
    "up", "down", "left", "right", "insert",
}) | FUNCTION_KEYS
# Chords that leave the sandboxed app: session kill, VT switch, window close, system menus.
DENIED_CHORDS = frozenset(
    {("alt", "ctrl", "delete"), ("alt", "ctrl", "backspace"), ("alt", "f4"), ("alt", "printscreen")}
    | {("alt", "ctrl", f) for f in FUNCTION_KEYS}
)
DENIED_KEYS = frozenset({"win", "command", "sysrq"})  # any chord holding one of these
DEFAULT_DENY_TEXT = (
    r"\brm\s+(-\S*\s+)*-\S*[rRf]",               # rm -rf, rm -r, rm -fr, rm --force ...
    r"\bsudo\b", r"\bsu\s+(-|root\b)", r"\bdoas\b",
    r"\b(curl|wget|fetch)\b.*\|\s*(sudo\s+)?(ba|z|da|k|c|tc|fi)?sh\b",  # download piped to a shell
    r"\bmkfs(\.\w+)?\b", r"\bdd\s+.*\bif=", r"\bdd\s+if=",
    r":\s*\(\s*\)\s*\{.*:\s*\|\s*:.*&.*\}",       # :(){ :|:& };:
    r"\b(shutdown|reboot|poweroff|halt)\b", r"\binit\s+[06]\b", r"\bsystemctl\s+(poweroff|reboot|halt)\b",
    r">\s*/dev/(sd|nvme|hd|vd)", r"\bchmod\s+(-R\s+)?0?777\s+/",
)


class PolicyError(ValueError):
    """An action the policy refuses. str() is a one-line reason fit to show the model."""


def normalize_key(name: str) -> str:
    lowered = name if len(name) == 1 else name.strip().lower()
    if len(lowered) == 1:
        lowered = lowered.lower()
    return ALIASES.get(lowered, lowered)


def normalize_chord(keys: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """Canonical form of a chord: modifiers sorted, then the other keys in order."""
    names = [normalize_key(k) for k in keys]
    mods = sorted({k for k in names if k in MODIFIERS})
    rest = [k for k in names if k not in MODIFIERS]
    return tuple(mods + rest)


def parse_chord(text: str) -> tuple[str, ...]:
    """'ctrl+a' -> ('ctrl', 'a'); 'ctrl++' -> ('ctrl', '+')."""
    if text.endswith("++"):
        parts = text[:-2].split("+") + ["+"]
    else:
        parts = text.split("+") if text != "+" else ["+"]
    if any(p.strip() == "" for p in parts):
        raise ValueError(f"malformed key chord {text!r}")
    return normalize_chord([p.strip() if len(p.strip()) > 0 else p for p in parts])


class Allow(BaseModel):
    """A task's `allow:` block."""

    model_config = ConfigDict(extra="forbid")
    actions: list[ActionName] | None = None  # None: every action kind
    keys: list[str] | None = None  # chords like "ctrl+a"; None: the safe defaults
    max_text_len: int = Field(500, ge=0, le=100_000)
    deny_text: list[str] = []

    @field_validator("keys")
    @classmethod
    def _valid_chords(cls, keys: list[str] | None) -> list[str] | None:
        for chord in keys or []:
            for k in parse_chord(chord):
                if k not in VALID_KEYS and k != "sysrq":
                    raise ValueError(f"unknown key {k!r} in {chord!r}")
        return keys

    @field_validator("deny_text")
    @classmethod
    def _valid_regexes(cls, patterns: list[str]) -> list[str]:
        for p in patterns:
            try:
                re.compile(p)
            except re.error as e:
                raise ValueError(f"bad regex {p!r}: {e}") from None
        return patterns


def _default_chord_ok(chord: tuple[str, ...]) -> bool:
    mods = [k for k in chord if k in MODIFIERS]
    rest = [k for k in chord if k not in MODIFIERS]
    if not set(mods) <= SAFE_MODIFIERS:
        return False
    if not rest:
        return True  # a lone modifier press is harmless
    return len(rest) == 1 and (rest[0] in EDITING_KEYS or (len(rest[0]) == 1 and rest[0].isprintable()))


class Policy:
    def __init__(self, allow: Allow | None = None):
        self.allow = allow or Allow()
        self.actions = frozenset(self.allow.actions or ACTION_NAMES)
        self.chords = None if self.allow.keys is None else frozenset(parse_chord(c) for c in self.allow.keys)
        self.deny = [re.compile(p) for p in (*DEFAULT_DENY_TEXT, *self.allow.deny_text)]

    def check(self, action: Action) -> Action:
        """Return the action if allowed, else raise PolicyError."""
        if action.action not in self.actions:
            raise PolicyError(f"action {action.action!r} is not allowed here; allowed: {', '.join(sorted(self.actions))}")
        match action.action:
            case "key":
                self._check_keys(action.keys)
            case "type":
                self._check_text(action.text)
            case "wait" if action.time > MAX_WAIT_S:
                raise PolicyError(f"wait of {action.time:g} s is over the {MAX_WAIT_S:g} s limit")
            case "scroll" | "hscroll" if abs(action.pixels) > MAX_SCROLL_PX:
                raise PolicyError(f"scroll of {action.pixels} pixels is over the {MAX_SCROLL_PX} limit")
        return action

    def _check_keys(self, keys: list[str]) -> None:
        names = [normalize_key(k) for k in keys]
        for k in names:
            if k not in VALID_KEYS:
                raise PolicyError(f"unknown key name {k[:32]!r}")
        if len(set(names)) != len(names):
            raise PolicyError(f"repeated key in chord {'+'.join(names)}")
        chord = normalize_chord(names)
        shown = "+".join(chord)
        if self.chords is not None:
            if chord not in self.chords:
                raise PolicyError(f"key {shown} is not allowed here; allowed: {', '.join('+'.join(c) for c in sorted(self.chords))}")
            return
        if chord in DENIED_CHORDS or DENIED_KEYS & set(chord):
            raise PolicyError(f"key {shown} is denied: it can leave the app (allow it explicitly in the task)")
        if not _default_chord_ok(chord):
            raise PolicyError(f"key {shown} is not in the default key set (allow it in the task's allow.keys)")

    def _check_text(self, text: str) -> None:
        limit = self.allow.max_text_len
        if len(text) > limit:
            raise PolicyError(f"text of {len(text)} characters is over the {limit} character limit")
        for ch in text:
            if unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Zl", "Zp"):
                hint = "; press Enter with a key action" if ch in "\r\n" else ""
                raise PolicyError(f"text holds control character U+{ord(ch):04X}{hint}")
        folded = unicodedata.normalize("NFKC", text)  # fullwidth 'ｓｕｄｏ' is sudo
        for rx in self.deny:
            if rx.search(folded) or rx.search(text):
                raise PolicyError(f"text matches the deny pattern {rx.pattern!r}")
