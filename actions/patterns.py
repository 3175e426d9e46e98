"""Every pattern that comes from a task file or a denylist runs here, on RE2: matching takes time
linear in the text, whatever the pattern (no catastrophic backtracking, so no regex can hang a run).
RE2 has no lookaround and no backreferences; a pattern using them is refused when the task loads."""
from __future__ import annotations

import re2

MAX_PATTERN_CHARS = 2_000
_OPTIONS = re2.Options()
_OPTIONS.log_errors = False  # RE2 would print parse errors on stderr; we raise them as one line
_OPTIONS.max_mem = 8 << 20  # a pattern whose automaton needs more is refused, not built


class PatternError(ValueError):
    """A pattern RE2 cannot compile. str() is one line."""


def compile_pattern(pattern: str):
    """A compiled RE2 pattern (search/fullmatch like `re`), or PatternError."""
    if not isinstance(pattern, str):
        raise PatternError(f"a pattern must be text, not {type(pattern).__name__}")
    if len(pattern) > MAX_PATTERN_CHARS:
        raise PatternError(f"pattern of {len(pattern)} characters is over the {MAX_PATTERN_CHARS} limit")
    try:
        return re2.compile(pattern, options=_OPTIONS)
    except re2.error as e:
        why = e.args[0].decode(errors="replace") if e.args and isinstance(e.args[0], bytes) else str(e)
        raise PatternError(f"bad regex {pattern[:80]!r}: {why} (patterns run on RE2: no lookaround, "
                           "no backreferences)") from None
