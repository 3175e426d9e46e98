"""The one interface every model backend implements: chat messages with images in, reply text out.

A message is the Hugging Face chat shape that Qwen3-VL's processor takes:
    {"role": "system" | "user" | "assistant",
     "content": [{"type": "text", "text": str} | {"type": "image", "image": PIL.Image.Image}]}
The backend must not edit the messages. `policy` (optional) lets a backend constrain decoding to
the actions that policy allows; the reply is parsed and checked by the loop either way.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from actions.policy import Policy

Message = dict[str, Any]


class Backend(Protocol):
    name: str

    def generate(self, messages: list[Message], policy: Policy | None = None) -> str:
        """Return the model's raw reply. Raise agent.errors.BackendError when the model fails."""
        ...
