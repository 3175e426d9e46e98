"""The one action replayer, for replay (agent.replay.player) and the flow cache (agent.flow.runner): a
recorded action on the live screen: its targets found again (agent.targets.finder), the action checked
at the gate (actions.gate, the one place either driver calls it), performed (agent.run.executor), and
what the app's tree says of its effect; and the one way to ask a model where a target is (ask_point),
for a target that cannot be found, or a flow step that names its target in words.

    actor = Actor(desktop, finder, policy)
    moved, look = actor.retarget(action, {"coordinate": evidence}, recorded_frame, frame)
    checked = actor.check(moved, look.frame.size)           # PolicyError: refused
    checked = actor.review(step, checked, look.frame)       # None: a person attending the run rejected it
    outcome = actor.act(checked, look.frame.size)
    ok, why, frame = actor.wait_effect(look.frame, checked, changed_then=True, rec_before=..., rec_after=...)
    shows, how = actor.tree_effect(evidence, checked, outcome.pixel)   # True / False / None (cannot tell)

Each driver decides what a missing effect means: replay stops, the flow cache asks the model.
"""
from __future__ import annotations

import math
import time

from actions import ACTION_ADAPTER, Allow, ParseError, Policy, PolicyError, check_reply, gate, to_json
from actions.coords import to_relative
from agent.errors import VlagentError
from agent.run.control import Attendant
from agent.desktop.change import as_after, changed
from agent.targets.evidence import effect_in_tree
from agent.targets.finder import EFFECT_WAIT_S, FIND_POLL_S, SETTLE_MAX_S, Finder, Look

GROUND_TRIES = 3  # a grounding reply that does not parse is asked again, this many times in all
# A replayed action is over when the screen is still and shows its recorded effect. The recorded
# effect says the app got there, so "still" needs two alike grabs this far apart, not the
# SETTLE_POLL_S of a run that has nothing to check against.
EFFECT_POLL_S = 0.015
EFFECT_SHARE = 0.75  # of the pixels a recorded action changed, at least this share must look as after it
SAME_PLACE_PX = 4  # a recorded effect found this close to where it was is in its place


class Ungrounded(VlagentError):
    """The model gave no usable point for the target (its replies rejected); `raw`: its last reply."""

    def __init__(self, message: str, raw: str = ""):
        super().__init__(message)
        self.raw = raw


def ask_point(backend, goal: str, frame, kind: str, tries: int = GROUND_TRIES):
    """One pointer action of kind `kind` with a coordinate, from the model looking at `frame` (no
    planning, no history): (action, raw reply). A reply that does not parse or has no coordinate is
    sent back with the reason, `tries` times in all; then Ungrounded."""
    from agent.run.history import build_messages

    only = Policy(Allow(actions=[kind]))
    error, raw = "", ""
    for _ in range(tries):
        messages = build_messages(goal + (f"\nYour previous reply was rejected: {error}" if error else ""),
                                  [], frame, only, lambda s: frame)
        raw = backend.generate(messages, only)
        try:
            action = check_reply(raw, only)
            if getattr(action, "coordinate", None) is None:
                raise PolicyError("the action needs a coordinate on the target")
            return action, raw
        except (ParseError, PolicyError) as e:
            error = str(e)
    raise Ungrounded(f"{tries} groundings rejected; last: {error}", raw)


class Actor:
    def __init__(self, desktop, finder: Finder, policy: Policy, attendant: Attendant | None = None):
        """attendant: the person who reviews each action before it runs (an attended flow), if any."""
        self.desktop, self.finder, self.policy, self.attendant = desktop, finder, policy, attendant

    def retarget(self, action, evidence: dict[str, dict], recorded, frame=None, prefetched: int | None = None):
        """(the action with each named coordinate moved to where its evidence is found now, or None when
        one is not found; the Look with every decision and the frame they were made on)."""
        look: Look = self.finder.find_waiting(evidence, self.desktop, recorded, frame, prefetched=prefetched)
        if look.missing is not None:
            return None, look
        update = {k: list(to_relative(d.pixel, look.frame.size)) for k, d in look.found.items()}
        return ACTION_ADAPTER.validate_python({**to_json(action), **update}), look

    def check(self, action, frame: tuple[int, int] | None = None):
        """The action as it may run now (the gate: the task's policy, then the window that would
        receive it); PolicyError with the reason when refused. Secrets stay placeholders here: the
        executor fills them in."""
        return gate.check(action, gate.probe_of(self.desktop), self.policy, frame)

    def review(self, step, action, frame):
        """The checked action as a person lets it run on `frame` (their correction passes the gate too),
        or None when they rejected it (step.decision and step.error say so). No attendant: the action."""
        if self.attendant is None:
            return action
        return self.attendant.review(step, action, frame,
                                     lambda raw: check_reply(raw, self.policy, self.desktop, frame.size))

    def act(self, action, frame: tuple[int, int]):
        """Perform a checked action (frame: the size its coordinates refer to): the executor's outcome."""
        from agent.run.executor import execute

        return execute(action, self.desktop, frame)

    def tree_effect(self, target: dict | None, action, pixel, wait_s: float = EFFECT_WAIT_S) -> tuple[bool | None, str]:
        """What the app's tree says of the action's effect (agent.targets.evidence.effect_in_tree),
        given up to wait_s to follow the screen while it says the effect is missing."""
        deadline = time.monotonic() + wait_s
        while True:
            shows, how = effect_in_tree(target, action, self.finder.nodes(), pixel)
            if shows is not False or time.monotonic() >= deadline:
                return shows, how
            time.sleep(FIND_POLL_S)

    def wait_effect(self, before, action, *, changed_then: bool, after: dict | None = None, rec_before=None,
                    rec_after=None, target: dict | None = None, pixel=None):
        """After an action taken on `before`, wait for a still screen that shows its recorded effect:
        (ok, why not, the still frame). changed_then: the recorded action changed the screen (then the
        replayed one must too); `after`: evidence of what the changed place looked like afterwards
        (then it must be on screen, and where it is in its place, the pixels the action changed must
        look as after it); rec_before / rec_after: the screens recorded before and after it (a screen
        just like rec_after is judged at once). Where `after` kept the changed place's accessibility
        element, the app's tree judges a screen the pixels doubt (a hover or a focus ring elsewhere
        than recorded): a field that took the focus or holds the typed text, a check box that changed,
        a radio button checked (tree_effect on `target` at `pixel`). A screen that never stops
        changing (an animation) is judged at the deadline as it is."""
        desktop = self.desktop
        if not changed_then:
            now = desktop.capture()
            if rec_after is not None and changed(rec_after, now) is None:
                return True, "", now
            desktop.wait_stable(SETTLE_MAX_S)  # nothing else to recognise the end by: a plain settle
            return True, "", desktop.capture()
        deadline = time.monotonic() + SETTLE_MAX_S + EFFECT_WAIT_S
        why, last, judged = f"{action.action}: the screen did not change as recorded", None, None
        while True:
            now = desktop.capture()
            pixels = now.tobytes()
            still = pixels == last
            late = time.monotonic() >= deadline
            # Just like the screen recorded after it: as still as that one was. It needs no change from
            # `before` when it is also still: the app may have got there by itself (a focus that came late).
            as_recorded = rec_after is not None and changed(rec_after, now) is None
            settled = as_recorded and still
            if (as_recorded or still or late) and (pixels, settled) != judged:  # each picture judged once
                judged = (pixels, settled)
                why = self._effect_why(None if settled else before, now, action, after, rec_before, rec_after)
                if why and (still or late) and (after or {}).get("a11y"):
                    shows, how = self.tree_effect(target, action, pixel, wait_s=0.0)  # (this loop polls)
                    why = "" if shows else (f"{why}; the accessibility tree: {how}" if how else why)
                if not why:
                    return True, "", now
                # A still screen without the effect: it gets EFFECT_WAIT_S more to show (a slow app).
                deadline = min(deadline, time.monotonic() + EFFECT_WAIT_S)
            if late:
                return False, why, now
            last = pixels
            time.sleep(EFFECT_POLL_S)

    def _effect_why(self, before, now, action, after: dict | None, rec_before, rec_after) -> str:
        """Why `now` does not show the recorded effect of an action taken on `before` ("" when it does;
        before=None: no change from it needed)."""
        if before is not None and changed(before, now) is None:
            # Nothing changed: right only where the place it changed already looked as after it (a field
            # the app had focused on its own, an option already chosen): the recorded end is on screen.
            share = as_after(rec_before, rec_after, now) if rec_before is not None and rec_after is not None else None
            if share is None or share < EFFECT_SHARE:
                return f"{action.action}: the screen did not change as recorded"
        if after:
            found = self.finder.find(after, now, rec_after, target=False)
            if found.pixel is None:
                return f"{action.action}: its recorded effect is not on screen ({found.reason})"
            # Found where it was, on a screen alike within the finder's tolerance (a hover, a caret; the
            # same theme): the few pixels a radio button or a checkbox changes must have changed too.
            here = found.alike and math.dist(found.pixel, after["pixel"]) <= SAME_PLACE_PX
            share = as_after(rec_before, rec_after, now) if here and rec_before is not None else None
            if share is not None and share < EFFECT_SHARE:
                return (f"{action.action}: its recorded effect is not on screen (of the pixels it changed, "
                        f"{share:.0%} look as after it)")
        return ""
