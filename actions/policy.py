"""The whitelist every action passes before it reaches the desktop.

A task's `allow:` block configures it; the defaults are safe for unattended runs. What each layer
guarantees (README, "Safety"):
- keys: a chord is refused when the keys it holds *contain* a denied combination, whatever else is
  held; with `allow.keys` only the listed chords pass, exactly.
- where text goes: `type`, `key` and `middle_click` (X11's paste) are refused while the focused window
  is a terminal emulator or a shell (its WM_CLASS, its process and that process's children), unless
  `allow.terminal`.
- what text: with `allow.text`, only text equal to a listed literal or matching a listed pattern
  (whole text) may be typed.
- the denylist is a tripwire on top: matched on the text made visible (NFKC, default-ignorable code
  points removed) and as a shell would read it (actions.shell). It cannot be a boundary.
Every pattern runs on RE2 (actions.patterns): no text or pattern can make a check hang.
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Callable, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from actions.keys import ALIASES, VALID_KEYS
from actions.patterns import PatternError, compile_pattern
from actions.schema import ACTION_NAMES, Action
from actions.shell import forms

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
# Key combinations that act outside the app: session kill and VT switch (ctrl+alt+anything, which also
# holds a live desktop's launcher chords such as ctrl+alt+t and ctrl+alt+l), the super/command key,
# window management (alt+tab, alt+F1..F12, alt+space, alt+esc), the start menu (ctrl+esc), screenshot
# tools and SysRq. A chord that *contains* one of these is denied, whatever else it holds.
DENIED_COMBOS: tuple[frozenset[str], ...] = tuple(frozenset(c) for c in (
    {"ctrl", "alt"}, {"win"}, {"command"}, {"sysrq"}, {"printscreen"},
    {"alt", "tab"}, {"alt", "esc"}, {"alt", "space"}, {"ctrl", "esc"},
    *({"alt", f} for f in sorted(FUNCTION_KEYS)),
))
# Where typed text would become a command. Matched on the window's WM_CLASS (instance or class, lower case).
TERMINAL_CLASSES = frozenset({
    "xterm", "uxterm", "rxvt", "urxvt", "rxvt-unicode", "aterm", "eterm", "gnome-terminal",
    "gnome-terminal-server", "org.gnome.terminal", "kgx", "org.gnome.console", "ptyxis", "konsole",
    "org.kde.konsole", "yakuake", "xfce4-terminal", "terminator", "tilix", "com.gexperts.tilix",
    "alacritty", "kitty", "st", "st-256color", "lxterminal", "mate-terminal", "qterminal",
    "terminology", "wezterm", "org.wezfurlong.wezterm", "foot", "footclient", "sakura", "guake",
    "tilda", "roxterm", "cool-retro-term", "hyper", "tabby", "blackbox", "deepin-terminal",
    "x-terminal-emulator", "termite", "zutty", "contour", "ghostty", "com.mitchellh.ghostty",
    "warp", "cosmic-term", "qps-terminal", "terminal",
})
# Process names of shells and terminal emulators: the window's own process or one of its children.
SHELLS = frozenset({
    "sh", "bash", "dash", "zsh", "fish", "ksh", "mksh", "pdksh", "tcsh", "csh", "ash", "busybox",
    "nu", "elvish", "xonsh", "pwsh", "ion", "yash", "rc", "es", "screen", "tmux", "login",
})
# Interpreters that read commands from a terminal (a REPL): python3 in an xterm, irb, node, psql.
# Counted only when the process reads a terminal (the probe says so); a GUI app written in Python is not one.
INTERPRETERS = re.compile(
    r"(?:python|pypy|ipython|perl|ruby|irb|node|nodejs|deno|bun|php|lua(?:jit)?|tclsh|wish|R|julia|ghci|"
    r"ocaml|guile|racket|sbcl|clisp|scala|jshell|gdb|lldb|psql|mysql|sqlite3|redis-cli|mongo|mongosh|"
    r"osqueryi|bc|dc|ed|ex|vi|vim|nvim|emacs|nano)[0-9.]*")
# Windows of interpreter consoles that are GUI apps (no terminal involved): IDLE's shell, Jupyter's console.
CONSOLE_CLASSES = frozenset({"idle", "idle3", "jupyter-qtconsole", "qtconsole", "ipython", "octave", "spyder"})
DEFAULT_DENY_TEXT = (
    # rm with a recursive or force option, in any argument position: rm -rf /, rm ~ -rf, rm --force
    r"(?:^|[^\w.-])rm\s(?:[^;&|\n]*\s)?-(?:-(?:recursive|force|no-preserve-root|dir)\b|[a-zA-Z]*[rRf])",
    r"(?:^|[^\w-])(?:sudo|doas|pkexec)\b", r"(?:^|[;&|(])\s*(?:\S*/)?su(?:\s+-|\s+root\b|\s*$)",
    # anything piped into a shell or an interpreter: curl .. | sh, base64 -d | bash, | env bash
    r"\|\s*(?:(?:sudo|env|exec|command|nohup|xargs)\s+|[^\s|]*/)*(?:ba|z|da|k|mk|c|tc|fi|a|ya)?sh\b",
    r"\|\s*(?:(?:sudo|env|exec)\s+|[^\s|]*/)*(?:python[0-9.]*|perl|ruby|node|php|lua)\b",
    r"(?:^|[^\w-])(?:ba|z|da|k|mk|c|tc|fi|a|ya)?sh\s+(?:-\w*c|<|-s\b)",  # sh -c "$(curl ..)", bash <(curl ..)
    r"(?:^|[^\w-])source\s+<", r"/dev/(?:tcp|udp)/",
    r"\bmkfs\b", r"\bdd\s[^;&|\n]*\b(?:if|of)=", r">\s*/dev/(?:sd|nvme|hd|vd|xvd|mmcblk)",
    r"\bch(?:mod|own|grp)\s[^;&|\n]*-R[^;&|\n]*\s/(?:\s|$|\*)", r"\bchmod\s+0?777\s+/(?:\s|$)",
    r"\bfind\s[^;&|\n]*\s-delete\b", r"\bkill\s+(?:-\S+\s+)*-1\b", r"\bcrontab\s+-r\b",
    # fork bombs, named or not: a function whose body pipes and backgrounds (:(){ :|:& };:, bomb(){..});
    # the last form also holds once normalization has dropped the parentheses
    r"\(\s*\)\s*\{[^}]*\|[^}]*&", r"\bfunction\s+[^\s(]+[^{]*\{[^}]*\|[^}]*&", r"\{[^{}]*\|[^{}]*&\s*;?\s*\}",
    # power: a bare command (alone, or before ; & | ) }), or with its usual arguments anywhere
    r"(?:^|[;&|({])\s*(?:\S*/)?(?:shutdown|reboot|poweroff|halt)\s*(?:$|[;&|)}#])",
    r"\b(?:shutdown|reboot|poweroff|halt)\s+(?:-\w+|now\b|\+\d)", r"(?:^|[;&|(\s/])init\s+[06]\b",
    r"\bsystemctl\s+(?:poweroff|reboot|halt|kexec|suspend|hibernate)\b",
)
# Invisible or layout-changing characters refused in typed text. Joiners, bidi marks and tag characters
# stay: emoji sequences (👨‍👩‍👧, flags) and right-to-left text need them.
ALLOWED_FORMAT = frozenset({0x200C, 0x200D, 0x200E, 0x200F}) | frozenset(range(0xE0020, 0xE0080))


class PolicyError(ValueError):
    """An action the policy refuses. str() is a one-line reason fit to show the model."""


@dataclass(frozen=True)
class Focus:
    """A window that would receive input (the gate's probe reports it: agent.desktop.x11): its
    WM_CLASS (instance, class), the process names of its owner and the owner's descendants, whether
    one of those holds a terminal's master side (`pty`: a terminal emulator, an editor's terminal
    pane), and the shell or interpreter among them that reads a terminal (`repl`)."""

    wm_class: tuple[str, ...] = ()
    processes: tuple[str, ...] = ()
    title: str = ""
    # No window would get keys: the focus follows the pointer (no window manager) and the pointer is
    # over the bare desktop. Typed text would be lost without a trace.
    nowhere: bool = False
    pty: bool = False
    repl: str = ""

    def why_terminal(self) -> str:
        """Why this window counts as a terminal, shell or interpreter; "" when it does not."""
        classes = {c.lower() for c in self.wm_class}
        if classes & TERMINAL_CLASSES:
            return "a terminal emulator"
        if classes & CONSOLE_CLASSES:
            return "an interpreter console"
        if self.pty:
            return "its program holds a terminal"
        if self.repl:
            return f"{self.repl[:32]} reads a terminal there"
        shell = next((p for p in self.processes if p.lower() in SHELLS), None)
        return f"it runs the shell {shell[:32]}" if shell else ""

    def is_terminal(self) -> bool:
        return bool(self.why_terminal())

    def describe(self) -> str:
        return self.title or ".".join(self.wm_class) or "?"


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


def denied_combo(chord: tuple[str, ...]) -> frozenset[str] | None:
    """The denied combination this chord holds, if any (ctrl+alt+shift+delete holds ctrl+alt)."""
    held = set(chord)
    return next((c for c in DENIED_COMBOS if c <= held), None)


class TextPattern(BaseModel):
    """`allow.text` entry matching by pattern: the whole typed text must match (RE2 syntax)."""

    model_config = ConfigDict(extra="forbid")
    pattern: str

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, p: str) -> str:
        compile_pattern(p)
        return p


class SecretPlace(BaseModel):
    """Where a secret may be typed (`allow.secrets: {PASSWORD: {field: Password, role: password text}}`):
    the focused element's accessible name or label holds `field` (case-insensitive), its role is `role`."""

    model_config = ConfigDict(extra="forbid")
    field: str | None = Field(None, min_length=1, max_length=200)
    role: str | None = Field(None, min_length=1, max_length=64)

    def matches(self, element: dict) -> bool:
        if self.role and (element.get("role") or "").lower() != self.role.lower():
            return False
        if self.field:
            words = " ".join(str(element.get(k) or "") for k in ("name", "label")).casefold()
            return self.field.casefold() in words
        return True

    def describe(self) -> str:
        parts = [f"the field {self.field!r}" if self.field else "", f"role {self.role!r}" if self.role else ""]
        return " with ".join(p for p in parts if p) or "any field"


class MaskPlace(SecretPlace):
    """An element a run's frames hide (a task's `mask: [{field: Card number}, {role: password text}]`,
    agent.desktop.mask): matched as a secret's place is."""

    @model_validator(mode="after")
    def _names_something(self):
        if not (self.field or self.role):
            raise ValueError("a mask entry names a field, a role or both")
        return self


class Allow(BaseModel):
    """A task's `allow:` block."""

    model_config = ConfigDict(extra="forbid")
    actions: list[ActionName] | None = None  # None: every action kind
    keys: list[str] | None = None  # chords like "ctrl+a"; None: the safe defaults
    max_text_len: int = Field(500, ge=0, le=100_000)
    deny_text: list[str] = []  # more tripwire patterns (RE2), on top of the defaults
    text: list[str | TextPattern] | None = None  # None: any text; else only these (literal or {pattern})
    terminal: bool = False  # allow input into a terminal, shell or interpreter window
    secrets: dict[str, SecretPlace] | None = None  # where each secret may be typed (actions.gate)
    # Whether traces, flow caches and recordings may keep the text of editable fields (entries, text
    # areas) as evidence; by default they keep that it was a field and its label, not its content.
    store_field_text: bool = False
    confirm: dict | None = None  # attended runs: which actions wait for a person (agent/ui/attend.py ConfirmRules)

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
            compile_pattern(p)
        return patterns


def default_chord_ok(chord: tuple[str, ...]) -> bool:
    """Whether a chord passes the default key set (no allow.keys): safe modifiers with one editing,
    navigation or printable key."""
    mods = [k for k in chord if k in MODIFIERS]
    rest = [k for k in chord if k not in MODIFIERS]
    if not set(mods) <= SAFE_MODIFIERS:
        return False
    if not rest:
        return True  # a lone modifier press is harmless
    return len(rest) == 1 and (rest[0] in EDITING_KEYS or (len(rest[0]) == 1 and rest[0].isprintable()))




FocusProbe = Callable[[], "Focus | None"]


NOBODY_TO_ASK = ("nobody can answer a question in this run (it is not attended, no console watches it and it has "
                 "no terminal); go on without asking, or terminate")


class Policy:
    def __init__(self, allow: Allow | None = None, secrets=(), marks: bool = False, can_ask: bool = False):
        """`secrets`: the names of the secrets the run's task declares (its `secrets:`); the gate lets a
        `type` use only those. Per policy, so per run: two runs in one process never share them.
        marks: a click may name an element mark (--marks; the grammar allows it). can_ask: a person can
        answer the model's `ask_user` now (a console, --attended, a terminal: agent/ui/watch.py); without
        one the action is not offered, so an unattended run never waits."""
        self.allow = allow or Allow()
        self.secrets = frozenset(secrets)
        self.marks = marks
        listed = frozenset(self.allow.actions or ACTION_NAMES)
        self.can_ask = can_ask and "ask_user" in listed
        self.actions = listed if self.can_ask else listed - {"ask_user"}
        self.chords = None if self.allow.keys is None else frozenset(parse_chord(c) for c in self.allow.keys)
        self.deny = [compile_pattern(p) for p in (*DEFAULT_DENY_TEXT, *self.allow.deny_text)]
        texts = self.allow.text
        self.literals = None if texts is None else frozenset(t for t in texts if isinstance(t, str))
        self.patterns = [] if texts is None else [compile_pattern(t.pattern) for t in texts if isinstance(t, TextPattern)]

    def check(self, action: Action, focus: FocusProbe | None = None) -> Action:
        """Return the action if allowed, else raise PolicyError. `focus` (called only for `type` and
        `key`) says which window would receive them; None where there is no desktop (check-action)."""
        if action.action == "ask_user" and not self.can_ask and "ask_user" in (self.allow.actions or ACTION_NAMES):
            raise PolicyError(NOBODY_TO_ASK)
        if action.action not in self.actions:
            raise PolicyError(f"action {action.action!r} is not allowed here; allowed: {', '.join(sorted(self.actions))}")
        if getattr(action, "mark", None) is not None:  # the run resolves a mark to a point before the gate
            raise PolicyError(f"mark {action.mark} is not a point on the screen here; "
                              + ("it names no marked element" if self.marks else "answer with a coordinate"))
        match action.action:
            case "key":
                self._check_keys(action.keys)
                self._check_target(focus, "key presses")
            case "type":
                self._check_text(action.text)
                self._check_target(focus, "typing")
            case "middle_click":  # X11 pastes the primary selection with it: text by another door
                self._check_target(focus, "a middle-click paste")
            case "ask_user" if len(action.text) > self.allow.max_text_len:
                raise PolicyError(f"a question of {len(action.text)} characters is over the {self.allow.max_text_len} character limit")
            case "wait" if action.time > MAX_WAIT_S:
                raise PolicyError(f"wait of {action.time:g} s is over the {MAX_WAIT_S:g} s limit")
            case "scroll" | "hscroll" if abs(action.pixels) > MAX_SCROLL_PX:
                raise PolicyError(f"scroll of {action.pixels} pixels is over the {MAX_SCROLL_PX} limit")
        return action

    def _check_target(self, focus: FocusProbe | None, what: str) -> None:
        window = focus() if focus is not None else None
        if window is None:
            return
        if window.nowhere and what == "typing":
            raise PolicyError("typing now would reach no window: nothing has the keyboard focus and the pointer "
                              "is over the bare desktop; click the field to type into first")
        if not self.allow.terminal and window.is_terminal():
            raise PolicyError(f"{what} into a terminal or shell window ({window.describe()[:60]!r}) is not allowed "
                              "(allow.terminal in the task)")

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
        combo = denied_combo(chord)
        if combo is not None:
            held = "+".join(normalize_chord(sorted(combo)))
            raise PolicyError(f"key {shown} is denied: it holds {held}, which acts outside the app "
                              "(list it in the task's allow.keys)")
        if not default_chord_ok(chord):
            raise PolicyError(f"key {shown} is not in the default key set (allow it in the task's allow.keys)")

    def _check_text(self, text: str) -> None:
        limit = self.allow.max_text_len
        if len(text) > limit:
            raise PolicyError(f"text of {len(text)} characters is over the {limit} character limit")
        for ch in text:
            cat = unicodedata.category(ch)
            if cat in ("Cc", "Cs", "Zl", "Zp") or (cat == "Cf" and ord(ch) not in ALLOWED_FORMAT):
                hint = "; press Enter with a key action" if ch in "\r\n" else ""
                raise PolicyError(f"text holds control character U+{ord(ch):04X}{hint}")
        if self.literals is not None and text not in self.literals and not any(p.fullmatch(text) for p in self.patterns):
            raise PolicyError("this text is not one the task allows (allow.text)")
        for form in forms(text):
            for rx in self.deny:
                if rx.search(form):
                    raise PolicyError(f"text matches the deny pattern {rx.pattern!r}")


__all__ = ["Allow", "Focus", "MaskPlace", "SecretPlace", "Policy", "PolicyError", "PatternError", "TextPattern", "normalize_chord", "parse_chord"]
