"""A scripted oracle for `vlagent eval grounding` in CI (`--model oracle:DATASET`): it answers each
sample with the centre of its target box, or, for every `miss_every`-th sample, a point just off
it, as a native tool call. It exercises the whole evaluation path (prompt, parsing, pixel mapping,
report) without weights; its accuracy says nothing about a model. With `marks`, it answers the
number of the mark on the target's element where there is one (the marks of `vlagent eval --marks`)."""
from __future__ import annotations

import json

from actions.coords import to_relative
from agent.backends.base import BackendBase
from agent.errors import ModelExhausted
from agent.eval.dataset import Sample


class OracleBackend(BackendBase):
    def __init__(self, samples: list[Sample], miss_every: int = 0, marks: bool = False):
        from PIL import Image

        from agent.targets.marks import pick

        self.name = "oracle"
        self.miss_every = miss_every
        self.calls = 0
        self._answers: list[tuple[str, dict]] = []  # in the order evaluate asks
        for s in samples:
            with Image.open(s.image) as im:
                size = im.size
            x1, y1, x2, y2 = s.box
            place = {"coordinate": list(to_relative(((x1 + x2) / 2, (y1 + y2) / 2), size))}
            if marks:
                on = [m for m in pick(s.nodes(), size) if (m.box[0], m.box[1], m.box[0] + m.box[2], m.box[1] + m.box[3]) == s.box]
                place = {"mark": on[0].n} if on else place
            self._answers.append((s.instruction, place))

    def generate(self, messages, constraint=None) -> str:
        text = "\n".join(p.get("text", "") for m in messages if m["role"] == "user" for p in m["content"]
                         if p.get("type") == "text")
        if self.calls >= len(self._answers):
            raise ModelExhausted("the oracle has answered every sample")
        instruction, place = self._answers[self.calls]
        if instruction not in text:
            raise ModelExhausted(f"the oracle expected the sample {instruction!r} next")
        self.calls += 1
        if self.miss_every and self.calls % self.miss_every == 0:
            x, y = place.get("coordinate", (0, 0))
            place = {"coordinate": [(x + 500) % 1000, (y + 500) % 1000]}  # far from the target
        call = {"name": "computer_use", "arguments": {"action": "left_click", **place}}
        return f"<tool_call>\n{json.dumps(call)}\n</tool_call>"
