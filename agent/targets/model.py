"""Target evidence, typed: what a recorded step aimed at (Step.target in traces, `target`, `start` and
`effect.after` in flow caches), as pydantic models with one part per kind of evidence.

    ev = Evidence.parse(step.target)      # old traces and caches load unchanged
    ev.a11y.role, ev.patch.at, ev.window.title, ev.text.at
    ev.dump() == step.target              # the same keys back (unknown ones kept)

The finder (agent.targets.evidence, agent.targets.locate) still reads the dict form; this model is the
contract for it: every key it reads is declared here, and a trace or cache whose evidence does not fit
is refused with the field that does not. Parts allow extra keys, so evidence written by a newer
version (or a replayed step's "found" and "recorded_screenshot") passes through unchanged.
"""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from agent.errors import VlagentError


class _Part(BaseModel):
    model_config = ConfigDict(extra="allow")


class Picture(_Part):
    """A gray-level crop: inline (`png`, base64) or, in a flow cache, a file next to it (`png_file`)."""

    png: str | None = None
    png_file: str | None = None
    at: list[int] = []  # where the target's point is inside the crop


class Anchor(_Part):
    """Something near the target that moves with it (a label, a border): its picture, where it is."""

    png: str | None = None
    png_file: str | None = None
    offset: list[int]  # its centre, relative to the target's point
    size: list[int]
    text: str = ""


class Text(_Part):
    at: str = ""  # the words under the point
    near: list[str] = []  # the nearest words, nearest first
    at_offset: list[int] | None = None


class Screen(_Part):
    rel: list[float]  # the point, relative to the screen
    size: list[int]


class Window(_Part):
    """The X window under the point (titles often hold per-run data: compared loosely)."""

    title: str = ""
    cls: str = ""
    offset: list[int] = []  # the point within the window
    rel: list[float] = []
    size: list[int] = []


class Element(_Part):
    """The accessibility element under the point (sandbox.atspi.describe)."""

    role: str
    name: str = ""
    app: str = ""
    states: list[str] = []
    text: str = ""
    box: list[int] = []
    at: list[float] = []  # the point inside the box, relative
    window: dict[str, Any] = {}
    path: list[str] = []
    labels: list[dict[str, Any]] = []
    order: list[int] = [0, 0]
    says: str = ""  # the element in words, for messages
    late: bool = False  # read after the input (its changing states left out)


class Evidence(_Part):
    """One target: its point on the recorded frame and every kind of evidence kept of it."""

    version: int = 1
    frame: list[int] = []
    pixel: list[int]
    patch: Picture
    context: Picture | None = None
    anchors: list[Anchor] = []
    text: Text | None = None
    screen: Screen | None = None
    window: Window | None = None
    a11y: Element | None = None
    own_text: str | None = None
    start: "Evidence | None" = None  # a drag's start

    @classmethod
    def parse(cls, data: dict) -> "Evidence":
        """The typed form of a target dict; EvidenceError (one line, the field) when it does not fit."""
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            err = e.errors(include_url=False)[0]
            where = ".".join(str(p) for p in err["loc"]) or "(top level)"
            raise EvidenceError(f"target evidence: {where}: {err['msg']}") from None

    def dump(self) -> dict:
        """The dict form, with the keys it was given (nothing added, unknown keys kept)."""
        return self.model_dump(exclude_unset=True)


class EvidenceError(VlagentError):
    """Target evidence that does not fit the model (a corrupt trace or cache)."""


def check(data: dict | None, what: str) -> None:
    """Raise EvidenceError naming `what` when `data` (a target dict, or None) is not target evidence."""
    if data is None:
        return
    try:
        Evidence.parse(data)
    except EvidenceError as e:
        raise EvidenceError(f"{what}: {e}") from None
