"""The one interface every model backend implements: chat messages with images in, reply text out.

A message is the Hugging Face chat shape that Qwen3-VL's processor takes:
    {"role": "system" | "user" | "assistant",
     "content": [{"type": "text", "text": str} | {"type": "image", "image": PIL.Image.Image}]}
The backend must not edit the messages. The constraint says what the reply must be:
- a `Policy`: one action reply the policy can accept, in the backend's reply format (the native
  tool call, or a model family's own format: agent/backends/families.py);
- a `JsonSchema`: one JSON value of that schema, closed within `max_tokens` tokens
  (assert / query / wait_for steps);
- None: free text (a backend may still bound it).
A backend constrains decoding where it can (xgrammar in-process, response_format on a server,
nothing for scripted replies); callers parse and validate every reply either way.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, Union, runtime_checkable

if TYPE_CHECKING:
    from actions.policy import Policy

Message = dict[str, Any]


@dataclass(frozen=True, eq=False)
class JsonSchema:
    """Constrain the reply to one JSON value of `schema`, within `max_tokens` tokens."""

    schema: dict
    max_tokens: int


Constraint = Union["Policy", JsonSchema, None]


@runtime_checkable
class Backend(Protocol):
    """What the loop, flows, replay's model fall-back and evaluation call. `name` says which model
    answers (it goes into traces and reports); `format` names its reply format (families.py)."""

    name: str

    def generate(self, messages: list[Message], constraint: Constraint = None) -> str:
        """Return the model's raw reply. Raise agent.errors.BackendError when the model fails."""
        ...

    def fits(self, messages: list[Message], constraint: Constraint = None) -> bool:
        """Whether the prompt plus the longest reply the constraint admits fit the model's context."""
        ...

    def cancel(self) -> None:
        """Stop the call in progress where possible (its caller gave up on it); else a no-op."""
        ...


class BackendBase:
    """Defaults for backends without a context limit or a way to stop a call."""

    name: str = "backend"
    format: str = "qwen3-vl"
    remote = False  # frames go out of this process (agent.desktop.mask masks password fields for such a model)

    def fits(self, messages: list[Message], constraint: Constraint = None) -> bool:
        return True

    def cancel(self) -> None:
        return None

    def prepare(self, messages: list[Message], constraint: Constraint = None, image: bool = True) -> None:
        """Optionally work ahead on a prompt the next generate() will likely get (the loop calls it,
        where a backend has it, while the desktop acts: agent/run/lookahead.py); a wrong guess must
        cost only time."""
        return None

    def idle(self, budget_s: float) -> int:
        """The caller has about budget_s with nothing else on the model's device (between steps):
        time for deferred warm-up work; how many pieces of it were done. Nothing to do by default."""
        return 0


def is_schema(constraint: Constraint) -> bool:
    return isinstance(constraint, JsonSchema)
