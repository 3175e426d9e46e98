"""Secrets: `{secret:NAME}` in typed text, filled in at the executor (the model never sees the value),
and redacted from every file and line vlagent writes.

A task names its secrets (`secrets: {PASSWORD: MY_PASSWORD_VAR}`); a value comes from that
environment variable, else from VLAGENT_SECRET_<NAME>. Loading a task registers its values here
(agent.task.load_task); from then on `redact` replaces each value, its case-folded forms and the
forms OCR makes of it (0/O, 1/l/I, 5/S, spaces between letters) with its placeholder. The trace
(steps.jsonl, result.json, task.yaml, logs), the terminal, and through them JUnit, suite files and
reports, get redacted text at the source. `mask_screenshots: true` in a task also paints over the
words OCR reads as a secret in the screenshots the trace saves (opt-in: OCR costs ~0.5 s a frame).
"""
from __future__ import annotations

import os
import re
from typing import Any

from actions.patterns import compile_pattern
from agent.errors import VlagentError

PLACEHOLDER = re.compile(r"\{secret:([A-Za-z_]\w{0,63})\}")
ENV_PREFIX = "VLAGENT_SECRET_"
MIN_CHARS = 3  # a shorter value would blank out ordinary letters everywhere
MIN_FUZZY_CHARS = 6  # OCR-style variants only for values long enough not to match by chance
# Characters OCR confuses; a secret matches any of its class.
CONFUSABLE = ("0oOQD", "1lIi|!", "5sS$", "8B", "2zZ", "6Gb", "9gq", "uUvV", "cCeE", "aA@")

_values: dict[str, str] = {}  # name -> value
# Values a name had before another task gave it a new one (two runs in one process, the console):
# still redacted, as long as this process lives.
_earlier: set[tuple[str, str]] = set()
_vars: dict[str, str] = {}  # name -> the environment variable a task reads it from
_patterns: list[tuple[str, Any]] = []  # (placeholder, compiled pattern), longest values first
mask_screens = False  # set by a task's `mask_screenshots: true`


def _fuzzy(value: str) -> str:
    parts = []
    for ch in value:
        group = next((g for g in CONFUSABLE if ch in g), None)
        parts.append("[" + re.escape(group) + "]" if group else re.escape(ch))
    return r"\s?".join(parts)


def _rebuild() -> None:
    _patterns.clear()
    for name, value in sorted({*_values.items(), *_earlier}, key=lambda kv: -len(kv[1])):
        if len(value) < MIN_CHARS:  # typed all the same, but not redactable
            continue
        body = _fuzzy(value) if len(value) >= MIN_FUZZY_CHARS else re.escape(value)
        _patterns.append(("{secret:%s}" % name, compile_pattern("(?i)" + body)))


def register(name: str, value: str) -> None:
    if value and _values.get(name) != value:
        if name in _values:
            _earlier.add((name, _values[name]))
        _values[name] = value
        _rebuild()


def snapshot() -> tuple:
    """The registry as it is (it is process-wide: tests restore it after each test)."""
    return dict(_values), dict(_vars), mask_screens, set(_earlier)


def restore(state: tuple) -> None:
    global mask_screens
    values, variables, mask_screens, earlier = state
    _values.clear()
    _values.update(values)
    _earlier.clear()
    _earlier.update(earlier)
    _vars.clear()
    _vars.update(variables)
    _rebuild()


def declare(task) -> None:
    """Register the values of a task's secrets (those set in the environment) for redaction and its
    masking choice. Which secrets a run may type is its policy's (actions.Policy(allow, secrets))."""
    global mask_screens
    for name, var in task.secrets.items():
        _vars[name] = var
        value = os.environ.get(var, os.environ.get(ENV_PREFIX + name))
        if value is not None:
            register(name, value)
    mask_screens = mask_screens or bool(getattr(task, "mask_screenshots", False))


def _from_env() -> None:
    for var, value in os.environ.items():
        if var.startswith(ENV_PREFIX):
            register(var[len(ENV_PREFIX):], value)


def value(name: str) -> str:
    if name not in _values:  # set since the task was loaded (or, for VLAGENT_SECRET_*, since start)
        late = os.environ.get(_vars.get(name, ""), os.environ.get(ENV_PREFIX + name))
        if late is not None:
            register(name, late)
    if name in _values:
        return _values[name]
    if name in _vars:
        raise VlagentError(f"the text types the secret {name!r}, which is not set: set the environment variable "
                           f"{_vars[name]} (or {ENV_PREFIX}{name})")
    raise VlagentError(f"the text types the secret {name!r}, which is not set: declare it under the task's "
                       f"secrets: and set its environment variable (or {ENV_PREFIX}{name})")


def fill(text: str) -> str:
    """'{secret:NAME}' placeholders -> their values (only at the executor, just before typing)."""
    return PLACEHOLDER.sub(lambda m: value(m.group(1)), text)


# Labels of fields that hold a secret, in the languages a desktop is most often set to. English words
# name the secret (PIN code -> PIN); any other language's word for a password names it PASSWORD.
SECRET_LABEL_RE = compile_pattern(
    r"(?i)\b(pass(?:word|code|phrase)?|secret|pin|token|otp|2fa|passwd)\b|"
    r"(?i)(passwort|kennwort|geheimzahl|mot de passe|code secret|contrase\x{00f1}a|clave|senha|palavra-passe|"
    r"parola d'ordine|wachtwoord|has\x{0142}o|heslo|jelsz\x{00f3}|salasana|l\x{00f6}senord|adgangskode|passord|"
    r"\x{015f}ifre|\x{043f}\x{0430}\x{0440}\x{043e}\x{043b}\x{044c}|\x{5bc6}\x{7801}|\x{5bc6}\x{78bc}|"
    r"\x{30d1}\x{30b9}\x{30ef}\x{30fc}\x{30c9}|\x{6697}\x{8a3c}\x{756a}\x{53f7}|\x{be44}\x{bc00}\x{bc88}\x{d638}|"
    r"\x{0643}\x{0644}\x{0645}\x{0629} \x{0627}\x{0644}\x{0645}\x{0631}\x{0648}\x{0631}|\x{05e1}\x{05d9}\x{05e1}\x{05de}\x{05d4}|"
    r"\x{092a}\x{093e}\x{0938}\x{0935}\x{0930}\x{094d}\x{0921}|m\x{1ead}t kh\x{1ea9}u|kata sandi)")
PASSWORD_ROLES = frozenset({"password text"})  # AT-SPI's role of a field that hides what is typed


def label_secret(label: str, declared=()) -> str | None:
    """The secret a field with this label holds: a declared name the label names, the English word
    (PASSWORD, PIN, TOKEN), PASSWORD for another language's word; None when it looks like no secret."""
    for name in declared:
        if re.search(rf"(?i)\b{re.escape(name)}\b", label):
            return name
    m = SECRET_LABEL_RE.search(label)
    if m is None:
        return None
    return re.sub(r"\W", "_", m.group(1).upper()) if m.group(1) else "PASSWORD"


def focused_secret(nodes, declared=()) -> str | None:
    """The secret the focused field of an accessibility tree (sandbox.atspi nodes) holds: a
    password field by its role, whatever label it has or lacks; else by its name or the label left of
    or above it. Focus that came by Tab, or on its own, is seen here, not only a clicked field."""
    node = next((n for n in nodes if "focused" in n.states and "editable" in n.states), None) or \
        next((n for n in nodes if "focused" in n.states and n.role in PASSWORD_ROLES), None)
    if node is None:
        return None
    x, y, w, h = node.box
    near = [n.name for n in nodes if n.role == "label" and n.name and n.app == node.app
            and abs(n.box[1] - y) < max(h, 24) * 2 and n.box[0] < x + w]
    for label in [node.name, *near[-2:]]:
        found = label_secret(label or "", declared)
        if found:
            return found
    return "PASSWORD" if node.role in PASSWORD_ROLES else None


class PlaceholderInValue(KeyError):
    """A value from the screen carries a secret's placeholder (flows treat it as a missing value)."""


def inert(value: str) -> str:
    """A value read off the screen (a flow's query) on its way into typed text: it may not carry a
    `{secret:NAME}` placeholder, or a page could make a secret typed wherever it likes."""
    if PLACEHOLDER.search(value):
        raise PlaceholderInValue("a value read off the screen holds a {secret:...} placeholder: not used")
    return value


def redact(text: str) -> str:
    """Every registered value (and its case and OCR variants) in `text` -> its placeholder."""
    for placeholder, pattern in _patterns:
        if pattern.search(text):
            text = pattern.sub(placeholder.replace("\\", "\\\\"), text)
    return text


def redact_data(data: Any) -> Any:
    """redact() on every string in a JSON-like structure (keys included)."""
    if isinstance(data, str):
        return redact(data) if _patterns else data
    if isinstance(data, dict):
        return {redact_data(k): redact_data(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [redact_data(v) for v in data]
    return data


def redact_files(paths) -> None:
    """Rewrite text files (logs) with their secrets redacted; unreadable or binary ones are left."""
    if not _patterns:
        return
    for path in paths:
        try:
            text = path.read_text(encoding="utf-8")
            clean = redact(text)
            if clean != text:
                path.write_text(clean, encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue


def mask(image):
    """Paint over the words OCR reads as a secret (when a task asked for it). Returns the image."""
    if not (mask_screens and _patterns):
        return image
    from PIL import ImageDraw

    from agent.ocr import ocr_words

    words = ocr_words(image)
    hits = [w for w in words if redact(w.text) != w.text]
    if hits:
        image = image.copy()
        draw = ImageDraw.Draw(image)
        for w in hits:
            x, y, bw, bh = w.box
            draw.rectangle((x - 2, y - 2, x + bw + 2, y + bh + 2), fill="black")
    return image


_from_env()
