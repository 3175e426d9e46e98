"""`--model script:FILE`: a YAML list of raw replies, returned in order. For testing tasks and
policies without a model."""
from __future__ import annotations

from pathlib import Path

import yaml

from agent.errors import ModelExhausted, VlagentError


class ScriptBackend:
    def __init__(self, replies: list[str], name: str = "script"):
        self.replies = list(replies)
        self.name = name
        self.calls = 0

    @classmethod
    def from_file(cls, path: str | Path) -> "ScriptBackend":
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except OSError as e:
            raise VlagentError(f"cannot read script {path}: {e.strerror}") from None
        except yaml.YAMLError as e:
            raise VlagentError(f"script {path} is not valid YAML: {str(e).splitlines()[0]}") from None
        if not isinstance(data, list) or not all(isinstance(r, str) for r in data):
            raise VlagentError(f"script {path} must be a YAML list of reply strings")
        return cls(data, name=f"script:{path}")

    def generate(self, messages, policy=None) -> str:
        if self.calls >= len(self.replies):
            raise ModelExhausted(f"the script ran out of replies after {len(self.replies)}")
        self.calls += 1
        return self.replies[self.calls - 1]
