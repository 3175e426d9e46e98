"""Shell-aware normalization of typed text, for the denylist tripwire (actions.policy).

A shell reads `r''m`, `r\\m`, `rm${IFS}-rf`, `$(echo rm)`, `{rm,-rf,/}` and `a=rm; $a` as `rm`;
`forms(text)` returns the text as typed plus the forms a shell would see after those rewrites,
plus any base64 in it decoded, so one denylist pattern catches them all. This is a tripwire, not a
boundary: the structural guards (no typing into terminals, `allow.text`) are what hold.

Every step is linear in the text, so a long text cannot hang a check: patterns that could backtrack
run on RE2; fixed, unambiguous ones on Python's re, whose substitutions are faster with many matches.
"""
from __future__ import annotations

import base64
import binascii
import fnmatch
import re
import unicodedata

from actions.patterns import compile_pattern

MAX_FORMS = 16  # base64 chunks decoded per text; more is noise
# Commands a glob may stand for (`/???/r? -rf /` runs /bin/rm): a word with ? * [ that matches one of
# these names reads as it.
GLOB_COMMANDS = ("rm", "sudo", "su", "doas", "pkexec", "sh", "bash", "dash", "zsh", "ksh", "dd", "mkfs",
                 *(f"mkfs.{fs}" for fs in ("ext2", "ext3", "ext4", "xfs", "btrfs", "vfat", "fat", "ntfs", "exfat")),
                 "shutdown", "reboot", "poweroff", "halt", "init", "chmod", "chown", "kill", "find", "crontab",
                 "curl", "wget", "python3", "python", "perl", "systemctl",
                 "env", "nohup", "exec", "eval", "xargs", "command", "echo", "printf")  # and wrappers
# Unicode's Default_Ignorable_Code_Point (DerivedCoreProperties.txt): invisible in most fonts, so
# `r<U+034F>m` looks like rm. Removed before matching; NFKC keeps most of them.
DEFAULT_IGNORABLE = (
    (0x00AD, 0x00AD), (0x034F, 0x034F), (0x061C, 0x061C), (0x115F, 0x1160), (0x17B4, 0x17B5),
    (0x180B, 0x180F), (0x200B, 0x200F), (0x202A, 0x202E), (0x2060, 0x206F), (0x3164, 0x3164),
    (0xFE00, 0xFE0F), (0xFEFF, 0xFEFF), (0xFFA0, 0xFFA0), (0xFFF0, 0xFFF8), (0x1BCA0, 0x1BCA3),
    (0x1D173, 0x1D17A), (0xE0000, 0xE0FFF),
)
_STRIP = {cp: None for lo, hi in DEFAULT_IGNORABLE for cp in range(lo, hi + 1)}

_ANSI_C = compile_pattern(r"\$'((?:[^'\\]|\\.)*)'")  # $'\x72\x6d' is rm
_IFS = re.compile(r"\$\{IFS[^}]{0,8}\}|\$IFS")  # $IFS, ${IFS}, ${IFS%?}
_ASSIGN = compile_pattern(r"(?:^|[\s;&|(])([A-Za-z_]\w{0,31})=([^\s;&|)]{0,200})")
_BRACES = compile_pattern(r"\{([^{}\s]*,[^{}\s]*)\}")  # {rm,-rf,/} is rm -rf /
_PROCESS_SUBST = re.compile(r"([<>])\(")  # bash <(curl ..) reads a download: keep the <
_SUBST = re.compile(r"\$\(|[`()]")
_NOOP_WORDS = re.compile(r"(?:^|\s)(?:echo|printf|eval|exec|command|builtin|nohup|env|xargs)(?:\s+-[a-zA-Z]+)*(?:\s|$)")
_BACKSLASH = re.compile(r"\\(.)", re.DOTALL)
_NO_QUOTES = str.maketrans("", "", "\"'")
_B64 = compile_pattern(r"[A-Za-z0-9+/_-]{8,}={0,2}")


def visible(text: str) -> str:
    """NFKC (fullwidth 'ｓｕｄｏ' is sudo) with every default-ignorable code point removed."""
    return unicodedata.normalize("NFKC", text.translate(_STRIP)).translate(_STRIP)


def _ansi_c(body: str) -> str:
    try:  # bash's $'...' escapes are Python's, near enough (\xHH, \NNN, \uHHHH, \n)
        return body.encode("latin-1", "backslashreplace").decode("unicode_escape")
    except (UnicodeDecodeError, ValueError):
        return body


def _variables(text: str) -> str:
    """`a=rm; $a -rf /` -> `a=rm; rm -rf /` (simple assignments, one pass)."""
    names = {m.group(1): m.group(2) for m in _ASSIGN.finditer(text)}
    for name, value in list(names.items())[:32]:
        text = text.replace("${" + name + "}", " " + value + " ").replace("$" + name, " " + value + " ")
    return text


def flatten(text: str) -> str:
    """What a shell would run, roughly: quoting, escapes, $IFS, $'..', brace lists, variables and
    command substitution undone; echo/printf/eval/env wrappers dropped; globs naming a command read as it."""
    text = _ANSI_C.sub(lambda m: _ansi_c(m.group(1)), text)
    text = _IFS.sub(" ", text)
    text = text.replace("\\\n", "")
    text = _BACKSLASH.sub(r"\1", text)
    text = text.translate(_NO_QUOTES)
    text = _variables(text)
    text = _BRACES.sub(lambda m: " " + m.group(1).replace(",", " ") + " ", text)
    text = _PROCESS_SUBST.sub(lambda m: m.group(1) + " ", text)
    text = _unglob(" ".join(_SUBST.sub(" ", text).split()))
    for _ in range(3):  # `$(echo $(echo rm))`: wrappers can nest
        text = _NOOP_WORDS.sub(" ", text)
    return " ".join(text.split())


def _unglob(text: str) -> str:
    """`/???/r? -rf /` -> `rm -rf /`: a globbing word that matches a dangerous command's name."""
    words = text.split(" ")
    for i, word in enumerate(words):
        base = word.rsplit("/", 1)[-1]
        if len(base) <= 64 and any(c in "?*[" for c in base) and any(c.isalpha() for c in base):
            words[i] = next((name for name in GLOB_COMMANDS if fnmatch.fnmatchcase(name, base)), word)
    return " ".join(words)


def _decoded(text: str) -> list[str]:
    """Text hidden in base64 tokens (`echo cm0gLXJmIC8= | base64 -d | sh`)."""
    found = []
    for m in _B64.finditer(text):
        if len(found) >= MAX_FORMS:
            break
        token = m.group(0)
        try:
            raw = base64.b64decode(token + "=" * (-len(token) % 4), altchars=b"-_" if ("-" in token or "_" in token) else None)
            plain = raw.decode("utf-8")
        except (binascii.Error, ValueError):
            continue
        if plain and sum(c.isprintable() or c.isspace() for c in plain) >= 0.9 * len(plain):
            found.append(plain)
    return found


def forms(text: str) -> list[str]:
    """The text as typed, made visible, and as a shell would read it (also any base64 in it)."""
    seen = visible(text)
    out = [text, seen, flatten(seen)]
    for plain in _decoded(seen) + _decoded(out[-1]):
        plain = visible(plain)
        out += [plain, flatten(plain)]
    return list(dict.fromkeys(out))
