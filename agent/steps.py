"""The steps of a flow (a task file with `steps:` instead of `goal:`), validated by pydantic.

    steps:
      - act: Type "Ada Lovelace" into the Name field       # the agent loop on one short instruction
        max_steps: 6
      - left_click: {target: the Email field}              # one grounded click, no planning
      - type: ada@example.com                              # native actions need no model at all
      - key: enter
      - assert: The window shows the word "Saved"          # {"pass": bool, "reason": str}
        message: the form was not saved
      - query: {prompt: What name does the form show?, schema: {type: string}, as: shown}
      - wait_for: A large green "Saved" is visible
        timeout_s: 10
      - assert: The Name field holds {shown}               # values of earlier queries: {NAME}, {NAME.field}
"""
from __future__ import annotations

import json
import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from actions.policy import parse_chord
from agent import secrets

IDENT = r"[A-Za-z_]\w*"
# {name} or {name.field.0}; {secret:NAME} and other braces are left alone.
VAR_RE = re.compile(r"\{(" + IDENT + r")((?:\.(?:" + IDENT + r"|\d+))*)\}")
POINTER = ("left_click", "right_click", "middle_click", "double_click", "triple_click", "mouse_move", "scroll")
KINDS = ("act", "assert", "query", "wait_for") + POINTER + ("type", "key", "wait")
MODEL_KINDS = ("act", "assert", "query", "wait_for")  # plain steps call the model only to ground a target


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class Target(_Strict):
    """Where a plain pointer step acts: a description the model grounds, or a 0..1000 coordinate."""

    target: str | None = Field(None, min_length=1)
    coordinate: tuple[float, float] | None = None
    pixels: int | None = None  # scroll only: > 0 up, < 0 down

    @model_validator(mode="after")
    def _one(self):
        if (self.target is None) == (self.coordinate is None):
            raise ValueError("give exactly one of target (a description) or coordinate ([x, y], 0..1000)")
        return self


class Query(_Strict):
    prompt: str = Field(min_length=1)
    schema_: dict[str, Any] = Field(alias="schema")
    as_: str = Field(alias="as", pattern=f"^{IDENT}$")


class FlowStep(_Strict):
    """One step: exactly one kind, plus the options that kind takes."""

    act: str | None = Field(None, min_length=1)
    assert_: str | None = Field(None, alias="assert", min_length=1)
    query: Query | None = None
    wait_for: str | None = Field(None, min_length=1)
    left_click: Target | None = None
    right_click: Target | None = None
    middle_click: Target | None = None
    double_click: Target | None = None
    triple_click: Target | None = None
    mouse_move: Target | None = None
    scroll: Target | None = None
    type: str | None = Field(None, min_length=1)
    key: str | list[str] | None = None
    wait: float | None = Field(None, ge=0, le=60)
    # options
    max_steps: int | None = Field(None, ge=1, le=100)  # act
    message: str | None = None  # assert: the failure text
    timeout_s: float | None = Field(None, gt=0, le=3600)  # wait_for
    interval_s: float | None = Field(None, gt=0, le=60)  # wait_for

    @model_validator(mode="after")
    def _exactly_one(self):
        kinds = [k for k in KINDS if self._value(k) is not None]
        if len(kinds) != 1:
            raise ValueError(f"a step needs exactly one of {', '.join(KINDS)}" + (f" (got {', '.join(kinds)})" if kinds else ""))
        kind = kinds[0]
        for opt, only in (("max_steps", "act"), ("message", "assert"), ("timeout_s", "wait_for"), ("interval_s", "wait_for")):
            if getattr(self, opt) is not None and kind != only:
                raise ValueError(f"{opt} belongs to {only} steps, not {kind}")
        if kind == "key":
            keys = [self.key] if isinstance(self.key, str) else self.key
            if not keys or not all(isinstance(k, str) and k for k in keys):
                raise ValueError("key: a chord like 'ctrl+a' or a list of key names")
            if isinstance(self.key, str):
                parse_chord(self.key)  # raises ValueError with the bad name
        if kind == "scroll" and self.scroll.pixels is None:
            raise ValueError("scroll needs pixels (> 0 up, < 0 down)")
        if kind in POINTER and kind != "scroll" and self._value(kind).pixels is not None:
            raise ValueError("pixels belongs to scroll")
        return self

    def _value(self, kind: str):
        return getattr(self, "assert_" if kind == "assert" else kind)

    @property
    def kind(self) -> str:
        return next(k for k in KINDS if self._value(k) is not None)

    @property
    def text(self) -> str:
        """The step in words, for messages, reports and the cache key."""
        kind, value = self.kind, self._value(self.kind)
        if kind == "query":
            return value.prompt
        if isinstance(value, Target):
            return value.target or f"at {list(value.coordinate)}"
        if kind == "key":
            return value if isinstance(value, str) else "+".join(value)
        return str(value)

    def uses(self) -> set[str]:
        """Names of query results this step's texts refer to."""
        texts = [self.text] + ([self.message] if self.message else [])
        return {m.group(1) for t in texts for m in VAR_RE.finditer(t) if m.group(1) != "secret"}


def check_names(steps: list[FlowStep], where: str = "steps") -> list[str]:
    """Errors for {NAME} references to a query that has not run by then (checked at load time)."""
    known: set[str] = set()
    errors = []
    for i, step in enumerate(steps):
        for name in sorted(step.uses() - known):
            errors.append(f"{where}.{i}: {{{name}}} is not defined by an earlier query (as: {name})")
        if step.query is not None:
            known.add(step.query.as_)
    return errors


def fill(text: str, values: dict[str, Any]) -> str:
    """'{name}' and '{name.field}' replaced by the values earlier queries stored."""
    def sub(m: re.Match) -> str:
        if m.group(1) not in values:
            return m.group(0)
        value: Any = values[m.group(1)]
        for part in filter(None, m.group(2).split(".")):
            try:
                value = value[int(part)] if isinstance(value, list) else value[part]
            except (KeyError, IndexError, TypeError, ValueError):
                raise KeyError(f"{m.group(0)}: the query result has no {part!r}") from None
        return secrets.inert(value if isinstance(value, str) else json.dumps(value, ensure_ascii=False))
    return VAR_RE.sub(sub, text)
