"""Replay a trace (recorded by a person or written by an agent run) without a model.

Before each pointer action the target is found again on the current screen (agent.replay.locate), so a
moved window, moved widgets or another screen size do not break the replay; the task's success
checks decide the outcome, as for `vlagent run`.

    from agent.replay import replay
    result = replay("examples/fill_form_demo")            # sandbox, the trace's own task.yaml
    result = replay(trace, task="other.yaml", display=":1", trace_out="runs/r1")

"""
from __future__ import annotations

import contextlib
import functools
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from actions import ACTION_ADAPTER, Action, ParseError, Policy, PolicyError, check_reply, gate, to_json
from actions.coords import to_pixels, to_relative
from agent import trust
from agent.errors import VlagentError
from agent.run.status import End
from agent.trace import Result, Step, Trace, load_steps

FIND_TIMEOUT_S = 5.0  # how long a target may take to appear (a window still opening, a redraw)
FIND_POLL_S = 0.2
A11Y_PATIENCE_S = 1.0  # an element missing from the tree this long is searched by pixels instead
SETTLE_MAX_S = 2.0  # bounded wait for the screen to stop changing, before and after each action
EFFECT_WAIT_S = 1.0  # extra time for an effect the original step showed to appear
CHANGED_PX = 20  # pixels that must differ (by more than CHANGED_LEVEL) for "the screen changed"
CHANGED_LEVEL = 24
COORD_KEYS = ("coordinate", "start_coordinate")


class ReplayFailed(VlagentError):
    """A step cannot be replayed (its target is not on screen, or the policy refuses it)."""


@dataclass
class _Original:
    """The recorded trace: its steps, folder and task."""

    folder: Path
    steps: list[Step]

    def image(self, step: Step) -> Image.Image | None:
        return _read_screen(self.folder, step.screenshot) if step.screenshot else None

    def next_image(self, index: int) -> Image.Image | None:
        """The screen after step `index`: the next step's screenshot, or the final one."""
        for later in self.steps[index + 1:]:
            img = self.image(later)
            if img is not None:
                return img
        return _read_screen(self.folder, "screens/final.png")


@functools.lru_cache(maxsize=4)  # a step's screen is read to find, to copy and to check the effect
def _read_screen(folder: Path, rel: str) -> Image.Image | None:
    """Contained in the trace, bounded in bytes and pixels (agent.trust); None when missing."""
    return trust.open_image(folder, rel) if trust.contained(folder, rel).is_file() else None


def load_trace_task(trace_dir: Path, task=None):
    """The task to replay under: `task` (a Task or a path) or the trace's own task.yaml."""
    from agent.task import Task, load_task

    if isinstance(task, Task):
        return task
    path = Path(task) if task is not None else Path(trace_dir) / "task.yaml"
    if not path.is_file():
        raise VlagentError(f"{path}: no such task file" + ("" if task else " (give one with --task)"))
    return load_task(path) if task is not None else trust.trace_task(load_task(path), trace_dir)  # agent.trust


def check_secrets(steps: list[Step], task) -> None:
    """Raise VlagentError naming the variable when a secret the trace types is not set."""
    from agent import secrets

    secrets.declare(task)  # (again: the environment may have changed since the task was loaded)
    for step in steps:
        if step.kind == "type":
            secrets.fill(step.action.text)


def load_trace_steps(trace_dir: Path) -> list[Step]:
    if not (Path(trace_dir) / "steps.jsonl").is_file():
        raise VlagentError(f"{trace_dir}: not a trace folder (no steps.jsonl)")
    try:
        return load_steps(trace_dir)
    except ValueError as e:
        raise VlagentError(f"{trace_dir}/steps.jsonl: not a valid trace: {str(e).splitlines()[0]}") from None


def replay(trace_dir, task=None, display: str | None = None, speed: float = 1.0, fallback=None,
           trace_out=None, *, locate: bool = True, on_step=None, bus=None, control=None, on_session=None) -> Result:
    """Replay the trace in `trace_dir` and return the Result (its trace goes to `trace_out`).

    task: a Task or a task file (default: the trace's task.yaml). display: an existing display
    (default: a fresh sandbox). speed: `wait` steps take 1/speed of their recorded time.
    fallback: a model backend that grounds a step whose target cannot be found (default: fail).
    locate=False replays the recorded coordinates as they are (the naive way, for comparison).
    on_session: called with the RunSession before it starts (`vlagent replay --watch`: agent/ui/watch.py)."""
    trace_dir = Path(trace_dir)
    original = _Original(trace_dir, load_trace_steps(trace_dir))
    task = load_trace_task(trace_dir, task)
    check_secrets(original.steps, task)  # fail before starting anything when one is missing
    from agent.run.session import RunSession

    session = RunSession(task, mode="replay", model="replay" if locate else "replay-raw", display=display,
                         trace_dir=Path(trace_out) if trace_out else None, trace_name=f"replay-{task.name}",
                         bus=bus, control=control)
    if on_session is not None:
        on_session(session)
    with session as run:
        env = run.start()
        with contextlib.closing(_Player(original, task, Policy(task.allow), env.desktop, run.trace, speed,
                                        fallback, locate)) as player:
            run.finish(_play(original, player, run, on_step))
    return run.result


def _play(original, player, run, on_step) -> End:
    """Every recorded step in order; how the replay ended."""
    trace, failure, answer = run.trace, None, None
    for i, step in enumerate(original.steps):
        if step.action is None:
            continue  # a rejected model reply: nothing was done then
        run.control.wait_turn()
        try:
            done = player.play(i, step)
        except ReplayFailed as e:
            failure = str(e)
            break
        finally:
            if on_step and trace.steps:
                on_step(trace.steps[-1])
        if done.kind == "answer":
            answer = done.action.text
        if done.kind == "terminate":
            break
    last = trace.steps[-1] if trace.steps else None  # a replayed terminate keeps its verdict
    claimed = last.action.status if last is not None and last.kind == "terminate" else "success"
    return (End("step_failed", failure) if failure else
            End("finished", f"replayed {len(trace.steps)} steps", claimed, answer))


class _Player:
    def __init__(self, original: _Original, task, policy: Policy, desktop, trace: Trace, speed: float,
                 fallback, locate: bool):
        self.original, self.task, self.policy, self.desktop = original, task, policy, desktop
        self.trace, self.speed, self.fallback, self.locate = trace, speed, fallback, locate
        from sandbox.atspi import Tree

        self.tree = Tree(desktop.display)  # the apps' accessibility tree (none for Tk, games, ...)
        if locate:
            self.tree.start()
        self.prefetched: int | None = None

    def close(self) -> None:
        self.tree.close()

    def play(self, index: int, orig: Step) -> Step:
        t0 = time.perf_counter()
        n = len(self.trace.steps) + 1
        action = orig.action
        self.desktop.check_abort()
        self.desktop.wait_stable(SETTLE_MAX_S)
        # The tree is walked (in its reader) while this screen is captured and compared.
        self.prefetched = self.tree.prefetch() if self.locate and (orig.target or orig.pixel) else None
        frame = self.desktop.capture()
        step = Step(step=n, action=orig.action, frame=frame.size, source="replay",
                    screenshot=self.trace.save_screen(frame, f"{n:04d}"), target=orig.target)
        timings: dict[str, float] = {}
        first = frame
        try:
            action, frame, found = self._retarget(index, orig, action, frame, step, timings)
            if frame is not first:  # the target showed up later: keep the screen it was found on
                step.screenshot = self.trace.save_screen(frame, f"{n:04d}")
            if found:
                step.target = {**(orig.target or {}), "found": found,
                               "recorded_screenshot": (step.target or {}).get("recorded_screenshot")}
            action = self._checked(action, n)
        except ReplayFailed as e:
            step.error = str(e)
            self._record(step, t0, timings)
            raise
        before = frame
        t1 = time.perf_counter()
        from agent.run.executor import execute

        outcome = execute(action, self.desktop, frame.size)
        step.pixel, step.start_pixel, step.screen = outcome.pixel, outcome.start_pixel, self.desktop.size()
        step.action = _shown(action, orig)
        t2 = time.perf_counter()
        settle = self.desktop.wait_stable(SETTLE_MAX_S) if action.action not in ("terminate", "answer") else 0.0
        timings.update(exec_ms=(t2 - t1) * 1e3, settle_ms=settle * 1e3)
        note = self._effect(index, orig, before)
        if note:
            step.error = note
        missing = self._missing_effect(orig, step)
        if missing:
            step.error = f"step {orig.step}: {missing}"
            self._record(step, t0, timings)
            raise ReplayFailed(step.error)
        self._record(step, t0, timings)
        return step

    def _missing_effect(self, orig: Step, step: Step) -> str | None:
        """What the accessibility tree says the click should have done (a field focused, a box
        checked) and did not; the tree may take a moment to follow the screen."""
        from agent.replay.evidence import missing_effect

        if not self.locate or orig.kind != "left_click" or not (orig.target or {}).get("a11y"):
            return None
        deadline = time.monotonic() + EFFECT_WAIT_S
        while True:
            missing = missing_effect(orig.target, self.tree.nodes(), step.pixel)
            if missing is None or time.monotonic() >= deadline:
                return missing
            time.sleep(FIND_POLL_S)

    def _record(self, step: Step, t0: float, timings: dict) -> None:
        step.timings = {**timings, "step_ms": (time.perf_counter() - t0) * 1e3}
        self.trace.add(step)

    # -- finding the target again ---------------------------------------------------------------
    def _retarget(self, index: int, orig: Step, action: Action, frame: Image.Image, step: Step,
                  timings: dict) -> tuple[Action, Image.Image, dict | None]:
        """The action with its coordinates moved to where the target is now."""
        if action.action == "wait":
            return action.model_copy(update={"time": action.time / self.speed}), frame, None
        coords = {k: getattr(action, k, None) for k in COORD_KEYS if getattr(action, k, None) is not None}
        if not coords:
            return action, frame, None
        if not self.locate:  # raw replay: the same relative point of the new screen
            return action, frame, None
        from agent.replay.evidence import Decision, find
        from agent.replay.locate import label
        from sandbox.windows import list_windows

        t0 = time.perf_counter()
        evidence = {k: self._evidence(orig, k) for k in coords}
        recorded = self.original.image(orig)
        deadline = time.monotonic() + FIND_TIMEOUT_S
        while True:
            windows = _once(lambda: list_windows(self.desktop.display))
            nodes = _once(lambda: self.tree.take(self.prefetched))  # used only when the screen changed
            patient = time.monotonic() < deadline - FIND_TIMEOUT_S + A11Y_PATIENCE_S  # the tree may lag
            found: dict[str, Decision] = {k: find(ev, frame, windows, nodes, recorded, pixels=not patient)
                                          for k, ev in evidence.items()}
            self.prefetched = None  # a later look reads the tree again
            done = all(d.pixel is not None or d.ambiguous for d in found.values())
            if done or time.monotonic() >= deadline:
                break
            time.sleep(FIND_POLL_S)  # the target may still be appearing
            self.desktop.wait_stable(SETTLE_MAX_S)
            frame = self.desktop.capture()
        timings["find_ms"] = (time.perf_counter() - t0) * 1e3
        self._keep_original(orig, step)  # the recorded screen next to the current one, for the report
        missing = [k for k, d in found.items() if d.pixel is None]
        if missing:
            step.screenshot = self.trace.save_screen(frame, f"{step.step:04d}")
            k = missing[0]
            why = found[k].reason
            step.target = {**(orig.target or {}), "found": {k: d.as_json() for k, d in found.items()},
                           "recorded_screenshot": step.target.get("recorded_screenshot")}
            grounded = None if found[k].ambiguous or not self.fallback else \
                self._ground(action, evidence[k], frame, why, step, windows(), nodes())
            if grounded is None:
                if step.error and step.error.startswith("fallback model"):  # why the model's answer was not used
                    why = f"{why}; {step.error}"
                raise ReplayFailed(f"step {orig.step} ({orig.kind} {label(evidence[k])}): {why}; "
                                   f"see {step.screenshot} (now) and {step.target['recorded_screenshot']} (recorded)")
            return grounded, frame, {"coordinate": {"method": "model", "reason": why, "score": 0.0}}
        update = {k: list(to_relative(d.pixel, frame.size)) for k, d in found.items()}
        moved = ACTION_ADAPTER.validate_python({**to_json(action), **update})
        recorded_px = {"coordinate": orig.pixel, "start_coordinate": orig.start_pixel}
        info = {k: d.as_json(recorded_px.get(k) or evidence[k].get("pixel")) for k, d in found.items()}
        return moved, frame, info

    def _evidence(self, orig: Step, key: str) -> dict:
        """The step's recorded evidence, or evidence derived from its screenshot and pixel."""
        from agent.replay.evidence import describe
        from agent.replay.locate import estimate_window

        target = orig.target or {}
        if key == "start_coordinate":
            if target.get("start"):
                return target["start"]
            pixel = orig.start_pixel
        else:
            if target.get("patch"):
                return target
            pixel = orig.pixel
        img = self.original.image(orig)
        if img is None:
            raise ReplayFailed(f"step {orig.step}: its screenshot is missing from the trace, so its target "
                               f"cannot be found again")
        if pixel is None:  # from the native coordinate on the frame the step saw
            pixel = to_pixels(tuple(getattr(orig.action, key)), orig.frame or img.size)
        window = estimate_window(img, pixel)  # keeps the desktop behind the window out of it
        return describe(img, pixel, windows=[window] if window else ())

    def _keep_original(self, orig: Step, step: Step) -> str:
        """Copy the recorded screenshot next to the current one, for the failure report."""
        img = self.original.image(orig)
        path = self.trace.save_screen(img, f"{step.step:04d}-recorded") if img is not None else "(no screenshot)"
        step.target = {**(step.target or {}), "recorded_screenshot": path}
        return path

    def _ground(self, action: Action, evidence: dict, frame: Image.Image, why: str, step: Step,
                windows=(), nodes=()) -> Action | None:
        """Ask the fallback model where the target is now; None when its answer does not fit."""
        from actions.policy import Allow
        from agent.run.history import build_messages
        from agent.replay.locate import label

        only = Policy(Allow(actions=[action.action]))
        goal = (f"{self.task.goal}\nReplaying a recorded step whose target could not be found ({why}). "
                f"Do exactly this one step: {action.action} on {label(evidence)}.")
        messages = build_messages(goal, [], frame, only, lambda s: frame)
        try:
            reply = self.fallback.generate(messages, only)
            grounded = check_reply(reply, only)
        except (ParseError, PolicyError, VlagentError) as e:
            step.raw = None
            step.error = f"fallback model: {e}"
            return None
        step.raw = reply
        if getattr(grounded, "coordinate", None) is None:
            return None
        from agent.replay.evidence import _agrees

        point = to_pixels(tuple(grounded.coordinate), frame.size)
        agrees, how = _agrees(evidence, frame, point, nodes)  # the model is checked like any candidate
        if not agrees:
            step.error = f"fallback model: its point {point} does not look like the target ({how})"
            return None
        return ACTION_ADAPTER.validate_python({**to_json(action), "coordinate": list(grounded.coordinate)})

    def _checked(self, action: Action, n: int) -> Action:
        """The task's policy sees the action as it will run (secrets filled in)."""
        orig_action = action
        if action.action == "type" and "{secret:" in action.text:
            from agent import secrets

            action = action.model_copy(update={"text": secrets.fill(action.text)})
        try:
            return gate.check(orig_action, gate.probe_of(self.desktop), self.policy)  # the one gate (actions.gate)
        except PolicyError as e:
            raise ReplayFailed(f"step {n}: the task's policy refuses it: {e}") from None

    # -- the effect --------------------------------------------------------------------------------
    def _effect(self, index: int, orig: Step, before: Image.Image) -> str | None:
        """When the recorded step changed the screen, the replayed one should too."""
        if orig.kind in ("wait", "terminate", "answer", "mouse_move"):
            return None
        rec_before, rec_after = self.original.image(orig), self.original.next_image(index)
        if rec_before is None or rec_after is None or not _changed(rec_before, rec_after):
            return None
        deadline = time.monotonic() + EFFECT_WAIT_S
        while not _changed(before, self.desktop.capture()):
            if time.monotonic() >= deadline:
                return "warning: the recorded step changed the screen; replayed, it did not"
            time.sleep(FIND_POLL_S)
        return None


def _once(read):
    """read(), called at most once, on first use."""
    got: list = []

    def value():
        if not got:
            got.append(read())
        return got[0]
    return value


def _changed(a: Image.Image, b: Image.Image) -> bool:
    if a.size != b.size:
        return True
    da = np.asarray(a.convert("L"), dtype=np.int16)
    db = np.asarray(b.convert("L"), dtype=np.int16)
    return int((np.abs(da - db) > CHANGED_LEVEL).sum()) >= CHANGED_PX


def _shown(action: Action, orig: Step) -> Action:
    """The action for the new trace: coordinates as replayed, secrets as placeholders."""
    if action.action == "type":
        return action.model_copy(update={"text": orig.action.text})
    return action
