"""Run a flow: a task with `steps:` (agent.steps), its `before:`/`after:` hooks, the action cache.

Per step kind:
  act         the agent loop (agent.run.loop.run_loop) on the one instruction, at most max_steps; done
              when the model calls terminate(success); terminate(failure) or the bound fail the run
  left_click  (and the other pointer actions) with target: one grounding call, the action checked by the
              task's policy; with coordinate: no model
  type, key, wait   the native action, checked by the task's policy, no model
  assert      a verdict {"pass", "reason"} on the current screen; a failed one fails the run
  query       JSON under the step's schema, stored as {NAME} for later steps
  wait_for    verdicts every interval_s until one passes or timeout_s passes

The cache (agent.flow.cache): an act or grounded step with an entry is replayed without the model, each
target found again by agent.targets.evidence and each action's recorded effect checked. A target not found
or an effect that does not show sends the step to the model (healed); a step without entry goes to the
model too (miss). A healed step goes on from what the replay did: an act's model sees the replayed
actions as its history; a grounded click is not made again when the model points at the target the
replayed click hit. New actions are written only when the whole run succeeded (the checks decide).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from actions import ACTION_ADAPTER, Policy, PolicyError, to_json
from agent.errors import ModelExhausted, VlagentError
from agent.flow import ask
from agent.desktop.mask import mask_frames, places
from agent.replay.actor import Actor, Ungrounded, ask_point
from agent.targets import finder
from agent.targets.finder import SETTLE_MAX_S
from agent.flow.cache import ActionCache, CachedAction, CachedStep, Mode, step_key
from agent.desktop.change import change_point, changed
from agent.steps import POINTER, FlowStep, fill
from agent.trace import FlowStepResult, Result, Step, Trace

DEFAULT_ACT_STEPS = 10
# A replayed action is over when the screen is still and shows its recorded effect. The recorded
# effect says the app got there, so "still" needs two alike grabs this far apart, not the
# SETTLE_POLL_S of a run that has nothing to check against.
SAME_TARGET_PX = 12  # a model's point this close to a click already made is on the same target
DEFAULT_WAIT_TIMEOUT_S, DEFAULT_WAIT_INTERVAL_S = 30.0, 1.0


class StepFailed(VlagentError):
    """A flow step failed; `kind` is the run status it implies (failed, invalid_output, timeout)."""

    def __init__(self, message: str, kind: str = "failed"):
        super().__init__(message)
        self.kind = kind


class Counted:
    """The model backend, counting calls (the loop's, groundings, verdicts, queries)."""

    def __init__(self, inner):
        self.inner = inner
        self.calls = 0
        self.name = getattr(inner, "name", "")

    def generate(self, messages, constraint=None) -> str:
        self.calls += 1
        return self.inner.generate(messages, constraint)

    def fits(self, messages, constraint=None) -> bool:
        return self.inner.fits(messages, constraint)

    def cancel(self) -> None:
        self.inner.cancel()

    def __getattr__(self, name):  # format, last_reply, ... of the backend itself
        return getattr(self.inner, name)


class _ActTrace:
    """What run_loop sees for one act step: the run's trace folder, but only this step's own actions
    as its history (a short instruction needs no memory of the steps before it)."""

    def __init__(self, trace: Trace, flow_step: int):
        self.trace, self.folder, self.flow_step = trace, trace.folder, flow_step
        self.steps: list[Step] = []  # numbered from 1 for the prompt
        self.added: list[Step] = []  # the same steps as written to the run's trace
        self.first, self.saved = len(trace.steps) + 1, 0

    def save_screen(self, image, name: str) -> str:
        """The k-th screenshot is the k-th step's (the loop writes its steps in order), named by the number
        that step gets in the run's trace. Not by the trace's length now: the loop captures the next frame
        before it writes a step whose evidence is still being read, and that frame would overwrite it."""
        self.saved += 1
        return self.trace.save_screen(image, f"{self.first + self.saved - 1:04d}")

    def flush(self) -> None:
        self.trace.flush()

    def add(self, step: Step) -> Step:
        self.steps.append(step)
        self.added.append(self.trace.add(step.model_copy(update={"step": len(self.trace.steps) + 1,
                                                                 "flow_step": self.flow_step})))
        return step


def _action(step: Step):
    """A trace step's action as an Action (Step.action may hold the native dict)."""
    a = step.action
    return ACTION_ADAPTER.validate_python(a) if isinstance(a, dict) else a


@dataclass
class Flow:
    task: Any
    backend: Counted
    desktop: Any
    display: str | None
    trace: Trace
    cache: ActionCache | None
    deadline: float
    loop_history: Any = None  # agent.run.history.HistoryConfig for act steps
    on_step: Any = None  # called with each trace Step
    on_flow: Any = None  # called with each FlowStepResult
    session: Any = None  # the RunSession it runs in: its events, its pause and stop (agent.run.session)
    values: dict[str, Any] = field(default_factory=dict)  # query results by name
    results: list[FlowStepResult] = field(default_factory=list)
    contexts: dict[int, Any] = field(default_factory=dict)  # trace step -> windows and tree before it acted
    _seen: dict[tuple[str, str], int] = field(default_factory=dict)

    def __post_init__(self):
        person = self.session.attendant if self.session is not None else None  # attended (agent/ui/attend.py)
        self.policy = Policy(self.task.allow, self.task.secrets, can_ask=person is not None and person.can_answer)
        mask_frames(self.desktop, self.task, self.backend)  # agent.desktop.mask: frames hide what the task says
        self.finder = finder.Finder(self.display, field_text=self.task.allow.store_field_text)
        self.actor = Actor(self.desktop, self.finder, self.policy, person)

    def close(self) -> None:
        self.finder.close()

    def _before_action(self, n: int) -> None:
        """Remember the windows and the tree as they are before trace step n acts (for its evidence)."""
        if self.cache is not None and self.cache.writes:
            self.contexts[n] = self.finder.context()

    # -- phases ------------------------------------------------------------------------------------
    def run(self) -> StepFailed | None:
        """before, steps, then after (always, also after a failure or Ctrl-C). The first failure."""
        failure = None
        try:
            failure = self.phase("before", self.task.before) or self.phase("steps", self.task.steps)
        finally:
            after = self.phase("after", self.task.after, always=True)
            failure = failure or after
        return failure

    def phase(self, phase: str, steps: list[FlowStep], always: bool = False) -> StepFailed | None:
        first = None
        for i, step in enumerate(steps):
            if first is not None and not always:
                self._report(FlowStepResult(index=i, phase=phase, kind=step.kind, text=step.text))  # skipped
                continue
            failure = self.one(phase, i, step)
            first = first or failure
        return first

    def one(self, phase: str, index: int, step: FlowStep) -> StepFailed | None:
        if self.session is not None:
            self.session.control.wait_turn()  # paused or stopped from the console: here, between steps
        res = FlowStepResult(index=index, phase=phase, kind=step.kind, text=step.text)
        t0, calls0, n0 = time.monotonic(), self.backend.calls, len(self.trace.steps)
        failure = None
        try:
            res.text = fill(step.text, self.values)
            self._dispatch(step, res)
            res.status = "passed"
        except StepFailed as e:
            failure = e
        except KeyError as e:  # {name.field} the query result does not have
            failure = StepFailed(str(e.args[0]))
        except ModelExhausted as e:
            failure = StepFailed(str(e))
        except BaseException as e:  # Ctrl-C, a person's abort, a dead backend: recorded, then the run ends
            res.status = "failed"
            if isinstance(e, KeyboardInterrupt):
                res.reason = "interrupted (Ctrl-C or SIGTERM)"
            else:
                res.reason = str(e) if isinstance(e, VlagentError) else f"{type(e).__name__}: {e}".splitlines()[0]
            self._finish(res, t0, calls0, n0)
            raise
        if failure is not None:
            res.status = "failed"
            gave_up = res.reason.removeprefix("cache: ") if res.cache == "healed" else ""  # why the cache gave it up
            if not (res.reason and step.kind in ("assert", "wait_for") and failure.kind != "invalid_output"):
                res.reason = str(failure)  # (a false assert keeps the model's reason: the report shows both)
            if gave_up:
                res.reason = f"{res.reason} (the cache gave the step to the model: {gave_up})"
            failure = StepFailed(f"{phase}[{index}] {step.kind} {res.text!r}: {failure}" +
                                 (f" (the cache gave the step to the model: {gave_up})" if gave_up else ""), failure.kind)
        self._finish(res, t0, calls0, n0)
        return failure

    def _finish(self, res: FlowStepResult, t0: float, calls0: int, n0: int) -> None:
        res.model_calls = self.backend.calls - calls0
        res.duration_s = round(time.monotonic() - t0, 3)
        res.actions = [s.step for s in self.trace.steps[n0:]]
        self._report(res)

    def _report(self, res: FlowStepResult) -> None:
        self.results.append(res)
        if self.on_flow:
            self.on_flow(res)

    def _dispatch(self, step: FlowStep, res: FlowStepResult) -> None:
        kind = step.kind
        if time.monotonic() >= self.deadline:
            raise StepFailed(f"the task's timeout_s ({self.task.timeout_s:g} s) passed", "timeout")
        if kind == "assert":
            return self._assert(step, res)
        if kind == "query":
            return self._query(step, res)
        if kind == "wait_for":
            return self._wait_for(step, res)
        if kind in ("type", "key", "wait") or (kind in POINTER and step._value(kind).coordinate is not None):
            return self._native(step, res)
        return self._cached(step, res)  # act, or a pointer step with a target to ground

    # -- questions ----------------------------------------------------------------------------------
    def _screen(self, res: FlowStepResult) -> Image.Image:
        self.desktop.wait_stable(SETTLE_MAX_S)
        frame = self.desktop.capture()
        res.screenshot = self.trace.save_screen(frame, f"{res.phase}-{res.index:02d}-{res.kind}")
        return frame

    def _verdict(self, frame: Image.Image, statement: str) -> tuple[bool, str]:
        try:
            ans = ask.verdict(self.backend, frame, statement)
        except ask.InvalidOutput as e:
            raise StepFailed(f"invalid model output: {e}", "invalid_output") from None
        return bool(ans.value["pass"]), ans.value["reason"]

    def _assert(self, step: FlowStep, res: FlowStepResult) -> None:
        passed, reason = self._verdict(self._screen(res), res.text)
        res.reason = reason
        if not passed:
            message = fill(step.message, self.values) if step.message else f"assert {res.text!r} is false"
            raise StepFailed(f"{message} (model: {reason}; screen: {res.screenshot})")

    def _query(self, step: FlowStep, res: FlowStepResult) -> None:
        q = step.query
        bad = ask.check_schema(q.schema_)
        if bad:
            raise StepFailed(f"query {q.as_}: {bad}")
        try:
            ans = ask.query(self.backend, self._screen(res), res.text, q.schema_)
        except ask.InvalidOutput as e:
            raise StepFailed(f"invalid model output: {e}", "invalid_output") from None
        self.values[q.as_] = res.value = ans.value

    def _wait_for(self, step: FlowStep, res: FlowStepResult) -> None:
        timeout = step.timeout_s or DEFAULT_WAIT_TIMEOUT_S
        interval = step.interval_s or DEFAULT_WAIT_INTERVAL_S
        end = min(time.monotonic() + timeout, self.deadline)
        while True:
            t = time.monotonic()
            passed, res.reason = self._verdict(self._screen(res), res.text)
            if passed:
                return
            if t + interval >= end:
                raise StepFailed(f"still not true after {timeout:g} s (model: {res.reason}; screen: {res.screenshot})",
                                 "timeout")
            time.sleep(max(0.0, interval - (time.monotonic() - t)))
            self.desktop.check_abort()

    # -- native steps (no model) ------------------------------------------------------------------------
    def _native(self, step: FlowStep, res: FlowStepResult) -> None:
        kind, value = step.kind, step._value(step.kind)
        if kind == "type":
            args = {"text": res.text}
        elif kind == "key":
            from actions.policy import parse_chord

            args = {"keys": list(parse_chord(value) if isinstance(value, str) else value)}
        elif kind == "wait":
            args = {"time": float(value)}
        else:
            args = {"coordinate": list(value.coordinate)}
            if kind == "scroll":
                args["pixels"] = value.pixels
        try:
            action = ACTION_ADAPTER.validate_python({"action": kind, **args})
        except ValueError as e:
            raise StepFailed(f"not a valid action: {str(e).splitlines()[-1].strip()}") from None
        self._perform(action, res)

    def _perform(self, action, res: FlowStepResult, raw: str | None = None, frame: Image.Image | None = None,
                 extra: dict | None = None, settle=None) -> Step:
        """Check the action against the task's policy, let the person attending the run review it (if
        any), run it, record it in the trace. `settle()` waits after it (default: until the screen is
        still). A person's rejection is a StepFailed with their note (a cached step goes to the model)."""
        t0 = time.perf_counter()
        try:
            checked = self.actor.check(action, frame and frame.size)
        except PolicyError as e:
            raise StepFailed(f"the task's policy refuses {to_json(action)}: {e}") from None
        self.desktop.check_abort()
        if frame is None:
            self.desktop.wait_stable(SETTLE_MAX_S)
            frame = self.desktop.capture()
        n = len(self.trace.steps) + 1
        if raw is not None:  # a model's action: its evidence is recorded, from the context before it acts
            self._before_action(n)
        step = Step(step=n, raw=raw, action=to_json(action), frame=frame.size, screenshot=self.trace.save_screen(frame, f"{n:04d}"),
                    source="model" if raw is not None else "replay", flow_step=res.index, **(extra or {}))
        checked = self.actor.review(step, checked, frame)
        if checked is None:  # step.error: the person's note
            step.action = None
            self._add(step)
            raise StepFailed(step.error)
        if step.decision:  # what ran (a correction) and the person's time, not the action's
            step.action, step.timings["person_ms"] = checked, (time.perf_counter() - t0) * 1e3
        outcome = self.actor.act(checked, frame.size)
        step.pixel, step.start_pixel = outcome.pixel, outcome.start_pixel
        t1 = time.perf_counter()
        if action.action not in ("terminate", "answer"):
            (settle or (lambda: self.desktop.wait_stable(SETTLE_MAX_S)))()
        step.timings = {"settle_ms": (time.perf_counter() - t1) * 1e3, "step_ms": (time.perf_counter() - t0) * 1e3}
        self._add(step)
        return step

    def _add(self, step: Step) -> None:
        self.trace.add(step)
        if self.on_step:
            self.on_step(step)

    # -- act and grounded steps: the cache, else the model ---------------------------------------------
    def _key(self, step: FlowStep, text: str) -> str:
        k = (step.kind, text)
        self._seen[k] = self._seen.get(k, 0) + 1
        return step_key(step.kind, text, self._seen[k] - 1)

    def _cached(self, step: FlowStep, res: FlowStepResult) -> None:
        key = self._key(step, res.text)
        entry = self.cache.get(key) if self.cache is not None else None
        n0 = len(self.trace.steps)
        if entry is not None:
            ok, why = self._replay(entry, res)
            if ok:
                res.cache = "hit"
                return
            res.reason = f"cache: {why}"
        res.cache = "healed" if entry is not None else ("miss" if self.cache is not None else None)
        # What the replay did before it gave up (an action whose effect did not show was performed):
        # the model goes on from there, it does not do the step over (a toggle would be undone).
        made = [s for s in self.trace.steps[n0:] if not s.error]
        if step.kind == "act":  # (with a person's rejection of a cached action: its note is the model's feedback)
            self._act(step, res, [s for s in self.trace.steps[n0:] if not s.error or s.decision])
        else:
            self._ground(step, res, made[-1] if made else None)
        if self.cache is not None and self.cache.writes:
            # Every action this step performed, cached ones included: together they did the step.
            after = self.desktop.capture()
            self.cache.stage(CachedStep(key=key, kind=step.kind, text=res.text, screen=self.cache.image_ref(after),
                                        actions=self._recorded(self.trace.steps[n0:], after)))

    def _act(self, step: FlowStep, res: FlowStepResult, made: list[Step] = ()) -> None:
        from agent.run.loop import LoopConfig, run_loop

        view = _ActTrace(self.trace, res.index)  # (the loop records each target's evidence as it acts)
        view.steps = [s.model_copy(update={"step": i + 1}) for i, s in enumerate(made)]  # its history so far
        cfg = LoopConfig(max_steps=step.max_steps or DEFAULT_ACT_STEPS, timeout_s=max(self.deadline - time.monotonic(), 0.001),
                         marks=self.task.marks)
        if self.loop_history is not None:
            cfg.history = self.loop_history
        end = run_loop(res.text, self.backend, self.desktop, self.policy, view, cfg,
                       (lambda s: self.on_step(view.added[-1])) if self.on_step else None, run=self.session)
        if end.claimed != "success":
            kind = end.kind if end.kind in ("invalid_output", "timeout") else "failed"
            raise StepFailed(f"not done: {end.reason}", kind)

    def _ground(self, step: FlowStep, res: FlowStepResult, made: Step | None = None) -> None:
        """One model call for where a plain pointer step's target is (no planning). `made`: this
        step's click that the cache replayed already, whose effect did not show: when the model
        points at the same target, that click was the right one and is not made twice."""
        from agent.run.executor import screen_point

        kind = step.kind
        value = step._value(kind)
        self.desktop.wait_stable(SETTLE_MAX_S)
        frame = self.desktop.capture()
        try:
            action, raw = ask_point(self.backend, f"Do exactly this one action: {kind} on {res.text}.", frame, kind)
        except Ungrounded as e:
            raise StepFailed(f"invalid model output: {e}", "invalid_output") from None
        if kind == "scroll":
            action = action.model_copy(update={"pixels": value.pixels})
        if made is not None and made.pixel is not None and _action(made).action == kind and \
                self._same_target(made.pixel, screen_point(action.coordinate, frame.size, self.desktop.size())):
            res.reason += "; the model points at the target the replayed click hit: not clicked again"
            return
        self._perform(action, res, raw=raw, frame=frame)

    def _same_target(self, a, b) -> bool:
        """Two screen points on one target: close, or inside one element of the app's tree."""
        if math.dist(a, b) <= SAME_TARGET_PX:
            return True
        from sandbox.atspi import element_at

        nodes = self.finder.nodes()
        ea, eb = element_at(nodes, a), element_at(nodes, b)
        return ea is not None and eb is not None and ea.box == eb.box and ea.role == eb.role

    def _recorded(self, steps: list[Step], after: Image.Image) -> list[CachedAction]:
        """Cache entries for the actions a step took: the action, the screen it was taken on, its
        target's evidence (with the windows and tree from before it acted), its effect (what the place
        that changed looked like afterwards: on the next step's screenshot, or on `after`)."""
        self.trace.flush()
        out: list[CachedAction] = []
        for i, s in enumerate(steps):
            action = _action(s)
            if action is None or action.action in ("terminate", "answer", "ask_user") or s.error:
                continue
            before = Image.open(self.trace.folder / s.screenshot).convert("RGB")
            nxt = next((x for x in steps[i + 1:] if x.screenshot), None)
            after_img = Image.open(self.trace.folder / nxt.screenshot).convert("RGB") if nxt else after
            ctx = self.contexts.get(s.step)
            ca = CachedAction(action=to_json(action), screen=self.cache.image_ref(before))
            point = self._frame_px(s.pixel, before) if s.pixel is not None else None
            if s.target and s.target.get("patch"):  # the loop recorded it already, as it acted
                ca.target = {k: v for k, v in s.target.items() if k != "start"}
                ca.start = s.target.get("start")
            else:
                if point is not None and getattr(action, "coordinate", None) is not None:
                    ca.target = self.finder.describe(before, point, ctx)
                if s.start_pixel is not None and getattr(action, "start_coordinate", None) is not None:
                    ca.start = self.finder.describe(before, self._frame_px(s.start_pixel, before), ctx)
            mask = changed(before, after_img)
            ca.effect = {"changed": mask is not None, "after": None, "screen": None}
            if mask is not None:
                later = self.contexts.get(nxt.step) if nxt else None
                ca.effect["after"] = self.finder.describe(after_img, change_point(mask, point), later, ocr=False)
                ca.effect["screen"] = self.cache.image_ref(after_img)
            out.append(ca)
        return out

    def _frame_px(self, pixel, image: Image.Image) -> tuple[int, int]:
        screen = self.desktop.size()
        return (int(pixel[0] * image.width / screen[0]), int(pixel[1] * image.height / screen[1]))

    def _replay(self, entry: CachedStep, res: FlowStepResult) -> tuple[bool, str]:
        """Play a cached step without the model: (done, why not). Each action's frame is the still
        frame its predecessor's effect was checked on (no input came between). Why not names the
        action, what gave it up (its target not found, the evidence that disagreed, the effect that
        did not show) and the two screenshots, now and recorded, kept in the trace."""
        following = self.cache.following(entry.key)
        self.cache.prefetch(self.cache.step_images(entry) + (self.cache.step_images(following) if following else []))
        frame = None
        for i, ca in enumerate(entry.actions):
            try:
                action = ACTION_ADAPTER.validate_python(ca.action)
            except ValueError:
                return False, f"cached action {i + 1} is not a valid action"
            what = f"action {i + 1} of {len(entry.actions)} ({action.action}" + \
                (f" on {finder.label(ca.target)})" if ca.target else ")")
            if frame is None:  # (the step before ended on a still screen)
                frame = self.desktop.capture()
            recorded = self.cache.open_image(ca.screen)
            evidence = {name: ev for name, ev in (("coordinate", ca.target), ("start_coordinate", ca.start)) if ev}
            if evidence:
                moved, look = self.actor.retarget(action, evidence, recorded, frame)
                frame = look.frame
                if moved is None:
                    found = look.found[look.missing]
                    n = len(self.trace.steps) + 1
                    now = self.trace.save_screen(frame, f"{n:04d}")
                    self._add(Step(step=n, action=to_json(action), frame=frame.size, source="replay", flow_step=res.index,
                                   screenshot=now, error=f"cache: {found.reason or 'not found'}"))
                    return False, f"{what}: target not found: {found.reason or 'no evidence agrees'}" + self._screens(now, recorded, n)
                action = moved
            # The screen recorded after this action: its effect's, else the next action's or the step's.
            expected = ((ca.effect or {}).get("screen") or
                        (entry.actions[i + 1].screen if i + 1 < len(entry.actions) else entry.screen))
            check: dict = {}

            def settle(before=frame, ca=ca, action=action, expected=expected):
                check["ok"], check["why"], check["frame"] = self._effect_shows(ca, before, action, expected)
            try:
                done = self._perform(action, res, frame=frame, settle=settle)
            except StepFailed as e:  # the policy refuses the cached action now: let the model decide
                return False, f"{what}: {e}"
            if not check.get("ok", True):
                now = self.trace.save_screen(check["frame"], f"{done.step:04d}-after")
                return False, (f"{what}: effect missing: {check['why']}" +
                               self._screens(now, self.cache.open_image(expected), done.step, "-after"))
            frame = check.get("frame")
        return True, ""

    def _screens(self, now: str, recorded: Image.Image | None, n: int, suffix: str = "") -> str:
        """"; screens: NOW (now), RECORDED (recorded)": the recorded one copied into the trace."""
        rec = self.trace.save_screen(recorded, f"{n:04d}{suffix}-recorded") if recorded is not None else "(none)"
        return f"; screens: {now} (now), {rec} (recorded)"

    def _effect_shows(self, ca: CachedAction, before: Image.Image, action, expected: str | None):
        """After a replayed action, a still screen that shows its recorded effect (Actor.wait_effect):
        (ok, why not, the still frame). `expected`: the screen recorded after the action."""
        effect = ca.effect or {}
        pixel = None
        if getattr(action, "coordinate", None) is not None:
            from actions.coords import to_pixels

            pixel = to_pixels(tuple(action.coordinate), self.desktop.size())
        return self.actor.wait_effect(before, action, changed_then=bool(effect.get("changed")),
                                      after=effect.get("after"), rec_before=self.cache.open_image(ca.screen),
                                      rec_after=self.cache.open_image(expected), target=ca.target, pixel=pixel)


# ------------------------------------------------------------------------------------------ a whole run

def open_cache(task, mode: Mode | str) -> ActionCache | None:
    """The task's cache in this mode (None for off). Raises CacheError (one line) for a corrupt file."""
    return None if mode == "off" else ActionCache.for_task(task, mode)


def flow_end(failure: StepFailed | None):
    """How a flow's driver ended, for the one decision (agent.run.status): a failed step is what its
    kind says; a flow whose steps all passed is decided by the task's checks like any finished run."""
    from agent.run.status import FINISHED, End

    if failure is None:
        return End(FINISHED, "all steps passed", claimed="success")
    return End({"failed": "step_failed", "timeout": "step_timeout"}.get(failure.kind, failure.kind), str(failure))


def run_flow(task, backend, *, display: str | None = None, trace_dir: Path | None = None,
             cache: str | ActionCache | None = "read-write",
             loop=None, on_step=None, bus=None, control=None, on_session=None) -> tuple[Result, Path]:
    """Run a task with steps inside one RunSession. Always returns a Result and a complete trace
    folder; a corrupt cache raises CacheError before anything starts; Ctrl-C is recorded as
    `aborted` (after the `after:` hooks ran) and re-raised."""
    from agent.run import events as ev
    from agent.run.session import RunSession

    store = cache if cache is None or isinstance(cache, ActionCache) else open_cache(task, cache)
    counted = Counted(backend)
    deadline = time.monotonic() + (loop.timeout_s if loop is not None else task.timeout_s)
    session = RunSession(task, mode="flow", model=counted.name, trace_dir=trace_dir, display=display,
                         masks=bool(places(task, backend)),
                         bus=bus, control=control)
    if on_session is not None:  # the console watches it (agent/ui)
        on_session(session)
    with session as run:
        env = run.start()
        flow = Flow(task, counted, env.desktop, env.sandbox.display, run.trace, store, deadline,
                    loop.history if loop is not None else None, on_step,
                    on_flow=lambda res: run.publish(ev.FlowStepDone, result=res.model_dump(mode="json")), session=run)
        try:
            failure = flow.run()
        finally:  # also when Ctrl-C ends it: result.json says which steps ran
            run.result.flow, run.result.model_calls = flow.results, counted.calls
            flow.close()
        run.finish(flow_end(failure), checks=failure is None)
        if run.result.status == "success" and store is not None:
            store.save()
    return run.result, run.trace.folder
