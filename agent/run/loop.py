"""The agent loop: observe, ask the model, parse, check the policy, execute, record.

The model and the desktop are passed in; the loop builds nothing itself. It returns why it stopped;
agent.run.runner turns that and the task's success checks into the run's status.
"""
from __future__ import annotations

import copy
import threading
import time
from dataclasses import dataclass, field

from PIL import Image

from actions import ParseError, Policy, PolicyError, check_reply, to_json
from agent.backends.base import Backend
from agent.desktop.base import Desktop
from agent.errors import BackendError
from agent.desktop.change import differs
from agent.run import events as ev
from agent.run.control import RunControl
from agent.run.executor import execute
from agent.run.history import HistoryConfig, build_messages
from agent.run.lookahead import Lookahead
from agent.run.status import End as LoopEnd
from agent.targets.evidence import pointer_pixels
from agent.targets.marks import Marker, marked_pixels
from agent.trace import Step, Trace

MAX_REJECTIONS = 3  # rejected replies in a row before the run ends as invalid_output
MAX_REPEATS = 6  # the same action this many times in a row, screen unchanged: the agent is looping
IMAGE_CACHE = 16  # screenshots kept in memory for the prompt (older ones reload from the trace)


@dataclass
class LoopConfig:
    max_steps: int = 20
    timeout_s: float = 300.0
    history: HistoryConfig = field(default_factory=HistoryConfig)
    settle_max_s: float = 2.0
    marks: bool = False  # number the tree's interactive elements on the frame; a click may name one
    lookahead: bool = True  # prepare the next step's prompt while the desktop acts (agent/run/lookahead.py)


def _generate(backend: Backend, messages, policy: Policy, deadline: float):
    """Call the model, but never past the run's deadline (a hung model or server must not hang the run)."""
    box: dict = {}

    def target():
        try:
            box["reply"] = backend.generate(messages, policy)
        except BaseException as e:  # re-raised in the loop's thread
            box["error"] = e

    worker = threading.Thread(target=target, daemon=True, name="model")
    worker.start()
    worker.join(max(deadline - time.monotonic(), 0))
    if worker.is_alive():  # deadline passed: stop the abandoned call where the backend can
        backend.cancel()
        return None
    if "error" in box:
        raise box["error"]
    return box["reply"]


def run_loop(goal: str, backend: Backend, desktop: Desktop, policy: Policy, trace: Trace,
             cfg: LoopConfig, on_step=None, run=None) -> LoopEnd:
    """run: the RunSession this loop drives (its events and its pause/stop control), if any."""
    # What each pointer action aims at (windows, accessibility element, text), as a recording keeps it.
    targets = _step_targets(desktop, policy.allow.store_field_text)
    if cfg.marks and targets is not None and getattr(backend, "format", "qwen3-vl") == "qwen3-vl":  # native only
        marker, policy = Marker(targets.tree), copy.copy(policy)
        policy.marks = True  # the grammar and the policy take a mark (the rest of the run's policy as it is)
    else:
        marker = None
    ahead = Lookahead(backend, policy, prepare=cfg.lookahead)  # also the backend's deferred warm-up
    try:
        return _run_loop(goal, backend, desktop, policy, trace, cfg, on_step, targets, run or _Unwatched(), marker, ahead)
    finally:
        ahead.close()
        if targets is not None:
            targets.close()


def _run_loop(goal: str, backend: Backend, desktop: Desktop, policy: Policy, trace: Trace,
              cfg: LoopConfig, on_step, targets, run, marker, ahead: Lookahead) -> LoopEnd:
    deadline = time.monotonic() + cfg.timeout_s
    # Backends with a KV budget say whether a prompt fits; the history shrinks until it does.
    fits = lambda messages: backend.fits(messages, policy)  # noqa: E731 (the history shrinks until it fits)
    images: dict[int, object] = {}
    rejections = 0
    # A pointer step whose target evidence (OCR of the frame) is still being read: it is written after
    # the next model call, which that reading overlaps, instead of holding up the next capture.
    held: list[tuple[Step, object]] = []

    def write_held():
        while held:
            step, pending = held.pop(0)
            try:
                step.target = _target(pending)
            finally:  # a second Ctrl-C while waiting: the step is written without its evidence
                _write(trace, step, on_step)

    def load_image(step: Step):
        if step.step not in images:
            trace.flush()
            images[step.step] = Image.open(trace.folder / step.screenshot).convert("RGB")
        return images[step.step]

    try:
        for _ in range(cfg.max_steps):
            if time.monotonic() >= deadline:
                return LoopEnd("timeout", f"timed out after {cfg.timeout_s:g} s")
            desktop.check_abort()
            if run.control.paused:
                write_held()  # while it waits a person may add steps of their own (agent/ui/human.py)
            run.control.wait_turn()  # paused from the console: wait here, between steps
            n = max([s.step for s in trace.steps] + [s.step for s, _ in held], default=0) + 1
            t0 = time.perf_counter()
            frame = desktop.capture()
            run.publish(ev.FrameCaptured, step=n, image=frame)
            marked = marker.look(frame, desktop.size()) if marker is not None else None  # the tree now, drawn
            if targets is not None:
                targets.look(marked.nodes if marked else None)  # the accessibility tree of this frame, read while the model thinks
            step = Step(step=n, screenshot=trace.save_screen(frame, f"{n:04d}"), frame=frame.size)
            if marked is not None and marked.marks:
                step.marks = trace.save_screen(marked.image, f"{n:04d}-marks")
            resolve = _mark_resolver(marker, marked, step, desktop) if marked is not None else None
            t1 = time.perf_counter()
            done = trace.steps + [step for step, _ in held]
            messages = build_messages(goal, done, marked.image if marked else frame, policy, load_image, cfg.history,
                                      fits, note=marked.note if marked else "")
            images[n] = frame
            for old in [k for k in images if k <= n - IMAGE_CACHE]:
                del images[old]
            t_prompt = time.perf_counter()
            run.publish(ev.ModelAsked, step=n)
            raw = _generate(backend, messages, policy, deadline)
            t2 = time.perf_counter()
            if raw is not None:
                run.publish(ev.ModelAnswered, step=n, raw=raw, ms=(t2 - t_prompt) * 1e3)
            write_held()
            step.timings = {"capture_ms": (t1 - t0) * 1e3, "prompt_ms": (t_prompt - t1) * 1e3,
                            "model_ms": (t2 - t_prompt) * 1e3}
            if marked is not None:
                step.timings.update(marks_tree_ms=marked.tree_ms, marks_draw_ms=marked.draw_ms)
            if raw is None:
                step.error = "the model did not answer before the run's deadline"
                _record(trace, step, t0, on_step)
                return LoopEnd("timeout", f"timed out after {cfg.timeout_s:g} s waiting for the model")
            step.raw = raw
            try:
                action = check_reply(raw, policy, desktop, frame.size, resolve)  # actions.gate: policy + the window that receives it
            except (ParseError, PolicyError) as e:
                step.error = str(e)
                run.publish(ev.ActionRefused, step=n, reason=step.error)
                _record(trace, step, t0, on_step)
                rejections += 1
                if rejections >= MAX_REJECTIONS:
                    return LoopEnd("invalid_output", f"{rejections} rejected replies in a row; last: {e}")
                continue
            rejections = 0
            step.action = action
            run.publish(ev.ActionChecked, step=n, action=to_json(action))
            if action.action == "ask_user":  # the person's answer is the next step's feedback (history.py)
                go_on = run.attendant.question(step, action, deadline)  # (the policy offers it only with one)
                step.timings["person_ms"] = (time.perf_counter() - t2) * 1e3
                _record(trace, step, t0, on_step)
                if not go_on:
                    return LoopEnd("finished", "nobody answered the model's question", claimed="failure")
                continue
            attendant = run.attendant  # attended runs, take over (agent/ui/attend.py)
            if attendant is not None:
                action = attendant.review(step, action, frame, lambda raw: check_reply(raw, policy, desktop, frame.size, resolve))
                if step.decision:  # a person was asked: their time is not the action's
                    step.timings["person_ms"] = (time.perf_counter() - t2) * 1e3
                    t2 = time.perf_counter()
                if action is None:  # a person rejected it or holds the display: step.error tells the model
                    step.action = None
                    _record(trace, step, t0, on_step)
                    continue
                step.action = action
            aimed = marked_pixels(step.mark, frame.size, desktop.size()) if step.mark else pointer_pixels(action, frame.size)
            target = targets.before(frame, aimed) if targets else None  # (a mark: where its element is on this frame)
            last = action.action in ("terminate", "answer")
            if not last:  # the next prompt but its screenshot is known now
                ahead.begin(lambda shot, past=done + [step]: build_messages(
                    goal, past, shot, policy, load_image, cfg.history, fits), frame, frames=marker is None)
            outcome = execute(action, desktop, frame.size, deadline)  # typing and waits stop at the deadline
            step.pixel, step.start_pixel, step.screen = outcome.pixel, outcome.start_pixel, desktop.size()
            run.publish(ev.ActionExecuted, step=n, action=to_json(action), pixel=outcome.pixel)
            t3 = time.perf_counter()
            settle = 0.0 if last else desktop.wait_stable(cfg.settle_max_s, seen=ahead.seen)
            ahead.end()
            step.timings.update(exec_ms=(t3 - t2) * 1e3, settle_ms=settle * 1e3)
            if target is not None and not target.done() and action.action not in ("terminate", "answer"):
                step.timings["step_ms"] = (time.perf_counter() - t0) * 1e3
                held.append((step, target))
            else:
                step.target = _target(target)
                _record(trace, step, t0, on_step)
            if action.action == "terminate":
                return LoopEnd("finished", f"the model called terminate({action.status})", claimed=action.status)
            if action.action == "answer":
                return LoopEnd("finished", "the model answered", claimed="success", answer=action.text)
            if _looping(trace.steps + [step for step, _ in held], images):
                return LoopEnd("looping", f"the same action {MAX_REPEATS} times in a row: {to_json(action)}")
        return LoopEnd("max_steps", f"reached max_steps ({cfg.max_steps})")
    finally:
        write_held()  # every way out, Ctrl-C too: the trace is complete


class _Unwatched:
    """A loop run on its own (tests, a flow's act without a session): nobody listens or steers."""

    def __init__(self):
        self.control = RunControl()
        self.attendant = None

    def publish(self, kind, **fields) -> None:
        pass


def _mark_resolver(marker, marked, step: Step, desktop: Desktop):
    """--marks: a click at a mark -> at the marked element's centre, read from the tree at action time
    (the step keeps the mark, the element and the point); refused when the element is gone."""
    def resolve(action):
        action, step.mark = marker.resolve(action, marked, desktop.size())
        return action
    return resolve


def _step_targets(desktop, field_text: bool = False):
    """Target evidence for a desktop on an X display (a fake desktop in tests has none); editable
    fields' text kept only where the task allows it (allow.store_field_text)."""
    from agent.targets.evidence import StepTargets

    return StepTargets(desktop.display, field_text) if isinstance(getattr(desktop, "display", None), str) else None


def _target(pending) -> dict | None:
    """The evidence, or None when it could not be read (replay then derives it from the screenshot)."""
    try:
        return pending.result() if pending is not None else None
    except Exception:
        return None


def _record(trace: Trace, step: Step, t0: float, on_step) -> None:
    step.timings["step_ms"] = (time.perf_counter() - t0) * 1e3
    _write(trace, step, on_step)


def _write(trace: Trace, step: Step, on_step) -> None:
    trace.add(step)
    if on_step:
        on_step(step)


def _looping(steps: list[Step], images: dict[int, Image.Image]) -> bool:
    """The same action MAX_REPEATS times in a row on a screen that did not change (the one change
    detector: a blinking caret is no change)."""
    recent = steps[-MAX_REPEATS:]
    if not (len(recent) == MAX_REPEATS and recent[0].action is not None
            and all(s.action == recent[0].action for s in recent)):
        return False
    frames = [images.get(s.step) for s in recent]
    return None not in frames and not any(differs(frames[0], f) for f in frames[1:])


__all__ = ["LoopConfig", "LoopEnd", "run_loop", "BackendError"]
