"""The one action replayer, for replay (agent.replay.player) and the flow cache (agent.flow.runner): a
recorded action on the live screen: its targets found again (agent.targets.finder), the action checked
at the gate (actions.gate, the one place either driver calls it), performed (agent.run.executor), and
what the app's tree says of its effect; and the one way to ask a model where a target is (ask_point),
for a target that cannot be found, or a flow step that names its target in words.

    actor = Actor(desktop, finder, policy)
    moved, look = actor.retarget(action, {"coordinate": evidence}, recorded_frame, frame)
    checked = actor.check(moved, look.frame.size)           # PolicyError: refused
    outcome = actor.act(checked, look.frame.size)
    shows, how = actor.tree_effect(evidence, checked, outcome.pixel)   # True / False / None (cannot tell)

Each driver decides what a missing effect means: replay stops, the flow cache asks the model.
"""
from __future__ import annotations

import time

from actions import ACTION_ADAPTER, Allow, ParseError, Policy, PolicyError, check_reply, gate, to_json
from actions.coords import to_relative
from agent.errors import VlagentError
from agent.targets.evidence import effect_in_tree
from agent.targets.finder import EFFECT_WAIT_S, FIND_POLL_S, Finder, Look

GROUND_TRIES = 3  # a grounding reply that does not parse is asked again, this many times in all


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
    def __init__(self, desktop, finder: Finder, policy: Policy):
        self.desktop, self.finder, self.policy = desktop, finder, policy

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
