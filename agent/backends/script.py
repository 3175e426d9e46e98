"""`--model script:FILE`: scripted replies, for testing tasks, flows and policies without a model.

FILE is either a YAML list of raw replies, returned in order, or a mapping from a piece of prompt text
to its own list of replies: each call answers with the next reply of the longest key that appears in
the prompt's user messages (a flow's instruction or statement), so a flow's script does not depend
on which steps the action cache serves.
"""
from __future__ import annotations

from pathlib import Path

import yaml

from agent.backends.base import BackendBase
from agent.errors import ModelExhausted, VlagentError


class ScriptBackend(BackendBase):
    def __init__(self, replies: list[str] | dict[str, list[str]], name: str = "script", format: str | None = None):
        """`format`: the replies are written in that model family's format (agent/backends/families.py)
        and are returned as native tool calls, as a real model of that family would be."""
        from agent.backends.families import NATIVE, family

        self.reply_format = family(format) if format else NATIVE
        self.format = self.reply_format.name
        self.keyed = {k: list(v) for k, v in replies.items()} if isinstance(replies, dict) else None
        self.replies = [] if self.keyed is not None else list(replies)
        self.used: dict[str, int] = {k: 0 for k in self.keyed or {}}
        self.name = name
        self.calls = 0

    @classmethod
    def from_file(cls, path: str | Path, format: str | None = None) -> "ScriptBackend":
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except OSError as e:
            raise VlagentError(f"cannot read script {path}: {e.strerror}") from None
        except yaml.YAMLError as e:
            raise VlagentError(f"script {path} is not valid YAML: {str(e).splitlines()[0]}") from None
        keyed = isinstance(data, dict) and all(isinstance(k, str) and isinstance(v, list) and
                                               all(isinstance(r, str) for r in v) for k, v in data.items())
        if not keyed and not (isinstance(data, list) and all(isinstance(r, str) for r in data)):
            raise VlagentError(f"script {path} must be a YAML list of reply strings, or a mapping from "
                               "prompt text to a list of reply strings")
        return cls(data, name=f"script:{path}", format=format)

    def generate(self, messages, constraint=None) -> str:
        """The next scripted reply, whatever the constraint (the caller validates it as any reply)."""
        from agent.backends.base import JsonSchema

        if self.keyed is not None:
            reply = self._keyed(messages)
        else:
            if self.calls >= len(self.replies):
                raise ModelExhausted(f"the script ran out of replies after {len(self.replies)}")
            self.calls += 1
            reply = self.replies[self.calls - 1]
        self.last_reply = reply
        return reply if isinstance(constraint, JsonSchema) else self.reply_format.to_native(reply)

    def _keyed(self, messages) -> str:
        text = "\n".join(p.get("text", "") for m in messages if m.get("role") == "user"
                         for p in m.get("content", []) if p.get("type") == "text")
        keys = sorted((k for k in self.keyed if k in text), key=len, reverse=True)
        if not keys:
            raise ModelExhausted("the script has no replies for this prompt: " + text.strip().splitlines()[0][:120])
        key = keys[0]
        if self.used[key] >= len(self.keyed[key]):
            raise ModelExhausted(f"the script ran out of replies for {key!r} after {len(self.keyed[key])}")
        self.used[key] += 1
        self.calls += 1
        return self.keyed[key][self.used[key] - 1]
