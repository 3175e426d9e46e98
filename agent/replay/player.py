"""Replay a trace (recorded by a person or written by an agent run) without a model.

Before each pointer action the target is found again on the current screen (agent.targets.locate), so a
moved window, moved widgets or another screen size do not break the replay; the task's success
checks decide the outcome, as for `vlagent run`.

    from agent.replay import replay
    result = replay("examples/fill_form_demo")            # sandbox, the trace's own task.yaml
    result = replay(trace, task="other.yaml", display=":1", trace_out="runs/r1")

"""
from __future__ import annotations

import contextlib
import functools
import time
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from actions import ACTION_ADAPTER, Action, Policy, PolicyError, to_json
from actions.coords import to_pixels
from agent import trust
from agent.desktop.mask import mask_frames
from agent.errors import VlagentError
from agent.run.status import End
from agent.trace import Result, Step, Trace, load_steps

from agent.desktop.change import differs
from agent.replay.actor import Actor, Ungrounded, ask_point
from agent.targets import finder
from agent.targets.finder import SETTLE_MAX_S
from agent.targets.locate import label

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
        return trust.known_versions(load_steps(trace_dir), trace_dir)  # unknown evidence versions: one line
    except ValueError as e:
        raise VlagentError(f"{trace_dir}/steps.jsonl: not a valid trace: {str(e).splitlines()[0]}") from None


def replay(trace_dir, task=None, display: str | None = None, speed: float = 1.0, fallback=None,
           trace_out=None, *, locate: bool = True, on_step=None, bus=None, control=None, on_session=None) -> Result:
    """Replay the trace in `trace_dir` and return the Result (its trace goes to `trace_out`).

    task: a Task or a task file (default: the trace's task.yaml). display: an existing display
    (default: a fresh sandbox). speed: `wait` steps take 1/speed of their recorded time.
    fallback: a model backend that grounds a step whose target cannot be found (default: fail).
    locate=False replays the recorded coordinates as they are (the naive way, for comparison)."""
    trace_dir = Path(trace_dir)
    original = _Original(trace_dir, load_trace_steps(trace_dir))
    task = load_trace_task(trace_dir, task)
    check_secrets(original.steps, task)  # fail before starting anything when one is missing
    from agent.run.session import RunSession

    session = RunSession(task, mode="replay", model="replay" if locate else "replay-raw", display=display,
                         trace_dir=Path(trace_out) if trace_out else None, trace_name=f"replay-{task.name}",
                         bus=bus, control=control)
    if on_session is not None:  # the console watches it (agent/ui)
        on_session(session)
    with session as run:
        env = run.start()
        mask_frames(env.desktop, task, fallback)  # agent.desktop.mask: what the task (or a remote fall-back model) hides
        with contextlib.closing(_Player(original, task, Policy(task.allow, task.secrets), env.desktop, run.trace, speed,
                                        fallback, locate)) as player:
            run.finish(_play(original, player, run, on_step))
    return run.result


def _play(original, player, run, on_step) -> End:
    """Every recorded step in order; how the replay ended."""
    trace, failure, answer = run.trace, None, None
    for i, step in enumerate(original.steps):
        if step.action is None or step.kind == "ask_user":
            continue  # a rejected model reply, or a question to the person: nothing was done on the desktop
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
        self.finder = finder.Finder(desktop.display, self.tree, field_text=task.allow.store_field_text)
        self.actor = Actor(desktop, self.finder, policy)
        self.prefetched: int | None = None

    def close(self) -> None:
        self.finder.close()
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
        outcome = self.actor.act(action, frame.size)
        step.pixel, step.start_pixel, step.screen = outcome.pixel, outcome.start_pixel, self.desktop.size()
        step.action = _shown(action, orig)
        t2 = time.perf_counter()
        note = self._effect(index, orig, action, before)
        timings.update(exec_ms=(t2 - t1) * 1e3, settle_ms=(time.perf_counter() - t2) * 1e3)
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
        if not self.locate or orig.kind != "left_click" or not (orig.target or {}).get("a11y"):
            return None
        shows, how = self.actor.tree_effect(orig.target, orig.action, step.pixel)
        return how if shows is False else None

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
        t0 = time.perf_counter()
        evidence = {k: self._evidence(orig, k) for k in coords}
        recorded = self.original.image(orig)
        moved, look = self.actor.retarget(action, evidence, recorded, frame, prefetched=self.prefetched)
        self.prefetched = None
        found, frame, windows, nodes = look.found, look.frame, look.windows, look.nodes
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
        recorded_px = {"coordinate": orig.pixel, "start_coordinate": orig.start_pixel}
        info = {k: d.as_json(recorded_px.get(k) or evidence[k].get("pixel")) for k, d in found.items()}
        return moved, frame, info

    def _evidence(self, orig: Step, key: str) -> dict:
        """The step's recorded evidence, or evidence derived from its screenshot and pixel."""
        from agent.targets.evidence import describe
        from agent.targets.locate import estimate_window

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
        goal = (f"{self.task.goal}\nReplaying a recorded step whose target could not be found ({why}). "
                f"Do exactly this one step: {action.action} on {label(evidence)}.")
        try:
            grounded, reply = ask_point(self.fallback, goal, frame, action.action, tries=1)
        except Ungrounded as e:
            step.raw, step.error = None, f"fallback model: {e}"
            return None
        except VlagentError as e:
            step.raw, step.error = None, f"fallback model: {e}"
            return None
        step.raw = reply
        from agent.targets.evidence import agrees

        point = to_pixels(tuple(grounded.coordinate), frame.size)
        ok, how = agrees(evidence, frame, point, nodes)  # the model is checked like any candidate
        if not ok:
            step.error = f"fallback model: its point {point} does not look like the target ({how})"
            return None
        return ACTION_ADAPTER.validate_python({**to_json(action), "coordinate": list(grounded.coordinate)})

    def _checked(self, action: Action, n: int) -> Action:
        """The task's policy sees the action as it will run (secrets filled in)."""
        try:
            return self.actor.check(action)
        except PolicyError as e:
            raise ReplayFailed(f"step {n}: the task's policy refuses it: {e}") from None

    # -- the effect --------------------------------------------------------------------------------
    def _effect(self, index: int, orig: Step, action: Action, before: Image.Image) -> str | None:
        """Settle, and when the recorded step changed the screen, the replayed one should have too
        (Actor.wait_effect; a warning when it did not: the tree's verdict, _missing_effect, stops)."""
        if orig.kind in ("terminate", "answer"):
            return None
        if orig.kind in ("wait", "mouse_move"):
            self.desktop.wait_stable(SETTLE_MAX_S)
            return None
        rec_before, rec_after = self.original.image(orig), self.original.next_image(index)
        then = rec_before is not None and rec_after is not None and differs(rec_before, rec_after)
        ok, why, _ = self.actor.wait_effect(before, action, changed_then=then, rec_before=rec_before,
                                            rec_after=rec_after)
        return None if ok else f"warning: {why}"


def _shown(action: Action, orig: Step) -> Action:
    """The action for the new trace: coordinates as replayed, secrets as placeholders."""
    if action.action == "type":
        return action.model_copy(update={"text": orig.action.text})
    return action
