"""Render the model's prompt from the step log.

The newest screenshots go in as images (at most `max_images`, the current one included), older steps
as one line of text each. The window slides in chunks of `evict_chunk` steps, so between evictions
the prompt only grows at its end: a backend that keeps the KV cache of the unchanged prefix then
prefills just the new turn (issue 3).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Callable

from PIL import Image

from actions.policy import Policy
from actions.schema import to_json
from agent.backends.base import Message
from agent.backends.families import tool_json
from agent.errors import BackendError
from agent.trace import Step

PROMPTS = Path(__file__).resolve().parents[2] / "prompts"


@dataclass(frozen=True)
class HistoryConfig:
    max_images: int = 4  # screenshots sent as images, the current one included
    evict_chunk: int = 2  # older screenshots turn into text this many at a time
    max_pixels: int | None = None  # downscale screenshots above this many pixels (None: as captured)


@cache
def prompt(name: str) -> str:
    return (PROMPTS / name).read_text(encoding="utf-8")


def system_prompt(policy: Policy) -> str:
    return prompt("system.md").replace("{tools}", tool_json(policy))


def tool_call_text(action: dict) -> str:
    """A native reply for an action (used for steps that have no raw model reply)."""
    call = {"name": "computer_use", "arguments": action}
    return f"<tool_call>\n{json.dumps(call, ensure_ascii=False)}\n</tool_call>"


def step_line(step: Step) -> str:
    if step.action is not None:
        what = json.dumps(to_json(step.action), ensure_ascii=False)
    else:
        what = "(no valid action)"
    outcome = f" -> rejected: {step.error}" if step.error else ""
    if step.kind == "ask_user":
        answer, why = answer_of(step)
        outcome = f" -> answered: {answer}" if answer is not None else f" -> not answered ({why})"
    return f"Step {step.step}: {what}{outcome}"


def answer_of(step: Step) -> tuple[str | None, str]:
    """An ask_user step's (answer, or None with why nobody answered), from what the person decided."""
    d = step.decision or {}
    if d.get("verdict") == "answer" and d.get("note"):
        return d["note"], ""
    return None, d.get("note") or "no answer"


def _answer_feedback(step: Step) -> str:
    answer, why = answer_of(step)
    text = prompt("answered.md") if answer is not None else prompt("unanswered.md")
    return text.strip().replace("{question}", step.action.text).replace("{answer}", answer or "").replace("{why}", why)


def first_image_step(n_steps: int, cfg: HistoryConfig) -> int:
    """Index (0-based, into the step log) of the oldest step still shown with its screenshot.

    With n past steps, n + 1 screenshots exist (the current one last). Evicting in whole chunks keeps
    the prompt's prefix stable between evictions."""
    keep_past = max(cfg.max_images - 1, 0)
    if n_steps <= keep_past:
        return 0
    chunk = max(cfg.evict_chunk, 1)
    over = n_steps - keep_past
    return min(-(-over // chunk) * chunk, n_steps)


def fit_pixels(image: Image.Image, max_pixels: int | None) -> Image.Image:
    """Downscale (aspect kept) to at most max_pixels. Coordinates are relative, so clicks still land."""
    if not max_pixels or image.width * image.height <= max_pixels:
        return image
    scale = (max_pixels / (image.width * image.height)) ** 0.5
    return image.resize((max(int(image.width * scale), 32), max(int(image.height * scale), 32)), Image.BICUBIC)


def _image(img: Image.Image, cfg: HistoryConfig) -> dict:
    return {"type": "image", "image": fit_pixels(img, cfg.max_pixels)}


def _text(text: str) -> dict:
    return {"type": "text", "text": text}


def _observation(step_no: int, rejected: Step | None) -> str:
    feedback = prompt("rejected.md").strip().replace("{reason}", rejected.error) + "\n" if rejected and rejected.error else ""
    if rejected is not None and rejected.source == "human" and rejected.action is not None:  # the model is told
        feedback = prompt("human.md").strip().replace("{action}", json.dumps(to_json(rejected.action), ensure_ascii=False)) + "\n"
    if rejected is not None and rejected.kind == "ask_user":  # the person's answer to the model's question
        feedback = _answer_feedback(rejected) + "\n"
    return prompt("observation.md").strip().replace("{feedback}", feedback).replace("{step}", str(step_no))


def build_messages(goal: str, steps: list[Step], current: Image.Image, policy: Policy,
                   load_image: Callable[[Step], Image.Image], cfg: HistoryConfig = HistoryConfig(),
                   fits: Callable[[list[Message]], bool] | None = None, note: str = "") -> list[Message]:
    """The chat for the next step: system (tools), the task with older steps as text, then the
    recent steps as (screenshot, reply) turns, then the current screenshot (and `note` on it: the
    list of its element marks under --marks).

    `fits` (the backend's exact token check against its KV budget) makes the window give up more
    screenshots, a chunk at a time, then the oldest text lines, until the prompt fits."""
    first = first_image_step(len(steps), cfg)
    messages = _render(goal, steps, current, policy, load_image, cfg, first, 0, note)
    if fits is None or fits(messages):
        return messages
    chunk = max(cfg.evict_chunk, 1)
    while first < len(steps):
        first = min(first + chunk, len(steps))
        messages = _render(goal, steps, current, policy, load_image, cfg, first, 0, note)
        if fits(messages):
            return messages
    dropped = 0
    while dropped < first:
        dropped = min(dropped + max(first // 4, 1), first)
        messages = _render(goal, steps, current, policy, load_image, cfg, first, dropped, note)
        if fits(messages):
            return messages
    raise BackendError("the prompt does not fit the model's context even with one screenshot and no history; "
                       "lower --max-pixels")


def _render(goal, steps, current, policy, load_image, cfg, first: int, dropped: int, note: str = "") -> list[Message]:
    """`first`: the oldest step shown with its screenshot; `dropped`: oldest steps left out entirely."""
    lines = [step_line(s) for s in steps[dropped:first]]
    if dropped:
        lines.insert(0, f"({dropped} earlier steps omitted)")
    older = "\n".join(lines)
    history = f"Earlier steps (screenshots no longer shown):\n{older}" if older else ""
    task_text = prompt("task.md").replace("{goal}", goal).replace("{history}", history).strip()
    messages: list[Message] = [
        {"role": "system", "content": [_text(system_prompt(policy))]},
        {"role": "user", "content": [_text(task_text)]},
    ]
    prev: Step | None = steps[first - 1] if first > 0 else None
    for s in steps[first:]:
        messages.append({"role": "user", "content": [_image(load_image(s), cfg), _text(_observation(s.step, prev))]})
        reply = s.raw if s.raw is not None else tool_call_text(to_json(s.action) if s.action else {})
        messages.append({"role": "assistant", "content": [_text(reply)]})
        prev = s
    next_no = steps[-1].step + 1 if steps else 1
    last = _observation(next_no, prev) + (f"\n{note}" if note else "")
    messages.append({"role": "user", "content": [_image(current, cfg), _text(last)]})
    return messages
