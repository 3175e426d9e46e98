"""Attended runs: a person approves, corrects or rejects an action before it runs, and can take the
display over and hand it back.

Which actions wait for a person: every one with `--attended`, else those the task's
`allow.confirm:` names:

    allow:
      confirm:
        actions: [left_click]          # by action kind
        keys: [enter, ctrl+s]          # by key chord
        text: ["(?i)delete|remove"]    # by a pattern (RE2) of the typed text
        targets: [Place order]         # by the accessible name of the element under the pointer
        timeout_s: 120                 # unanswered this long: on_timeout decides
        on_timeout: reject             # or approve
        on_unanswered: continue        # a question of the model's nobody answered: tell it (or fail: end the run)

The run waits with the proposed action shown; whoever answers first decides: the console's page,
or the terminal when no page watches. A rejection's note reaches the model as its next step's
feedback (the step's error, which the prompt quotes). A correction is checked by the task's policy
like any action. Each decision is kept on the step (`Step.decision`): what was proposed, who
decided, when, what ran.

The model's questions (`ask_user`) wait the same way, wherever a person can answer (a console, a
terminal, --attended); the answer (secrets redacted) is the next step's feedback, and the step keeps
question, answer, who answered and when. Unanswered within timeout_s (or the run's deadline), the
model is told nobody answered, or the run ends when `on_unanswered: fail`.

The lease: while a person holds the display (take over), the agent's input is refused: the run
waits at its next step boundary, and an action the model proposed meanwhile is not run (the screen
it was meant for is gone). The person's own actions are written as human steps.
"""
from __future__ import annotations

import json
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Literal

from pydantic import BaseModel, ConfigDict, Field

from actions import ParseError, PolicyError, to_json
from actions.patterns import compile_pattern
from actions.policy import parse_chord
from agent.errors import VlagentError
from agent.secrets import redact

DEFAULT_TIMEOUT_S = 300.0


class ConfirmRules(BaseModel):
    """`allow.confirm:` of a task."""

    model_config = ConfigDict(extra="forbid")
    actions: list[str] = []
    keys: list[str] = []
    text: list[str] = []
    targets: list[str] = []
    timeout_s: float = Field(DEFAULT_TIMEOUT_S, gt=0, le=86_400)
    on_timeout: Literal["reject", "approve"] = "reject"
    on_unanswered: Literal["continue", "fail"] = "continue"

    def matcher(self):
        chords = {tuple(sorted(parse_chord(c))) for c in self.keys}
        patterns = [compile_pattern(p) for p in self.text]
        names = [t.casefold() for t in self.targets]

        def why(action, element: Callable[[], str] | None = None) -> str | None:
            kind = action.action
            if kind in self.actions:
                return f"{kind} needs a person's approval"
            if kind == "key" and tuple(sorted(parse_chord("+".join(action.keys)))) in chords:
                return f"key {'+'.join(action.keys)} needs a person's approval"
            if kind == "type" and any(p.search(action.text) for p in patterns):
                return "this text needs a person's approval"
            if names and element is not None and getattr(action, "coordinate", None) is not None:
                name = (element() or "").casefold()
                if name and any(n in name for n in names):
                    return f"the target {name!r} needs a person's approval"
            return None
        return why


def rules_of(policy_allow) -> ConfirmRules | None:
    raw = getattr(policy_allow, "confirm", None)
    if raw is None:
        return None
    try:
        return ConfirmRules.model_validate(raw)
    except Exception as e:
        raise VlagentError(f"allow.confirm: {e}") from None


@dataclass
class Proposal:
    step: int
    action: dict  # the model's action (native arguments); an ask_user action is a question
    why: str
    frame_size: tuple[int, int]
    asked: float = field(default_factory=time.time)

    @property
    def question(self) -> str | None:
        return self.action.get("text") if self.action.get("action") == "ask_user" else None


@dataclass
class Decision:
    verdict: Literal["approve", "correct", "reject", "answer", "unanswered"]
    by: str  # "page", "terminal", "timeout", "lease", "stop"
    note: str = ""  # a rejection's reason, or the answer to a question (what the model reads next)
    action: dict | None = None  # what ran (a correction's action, or the proposal approved)
    proposed: dict | None = None
    why: str = ""
    asked: float = 0.0
    decided: float = field(default_factory=time.time)

    def record(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v not in (None, "")}


class Lease:
    """Who drives the display: the agent, or a person who took it over."""

    def __init__(self):
        self._cv = threading.Condition()
        self.holder: str | None = None
        self.since = 0.0

    def take(self, who: str = "person") -> None:
        with self._cv:
            self.holder, self.since = who, time.time()

    def give_back(self) -> None:
        with self._cv:
            self.holder = None
            self._cv.notify_all()

    @property
    def held(self) -> bool:
        return self.holder is not None

    def wait_free(self, stopped: Callable[[], bool]) -> None:
        with self._cv:
            while self.holder is not None and not stopped():
                self._cv.wait(0.25)


class Attendant:
    """What the loop calls between the policy's check and the execution (agent.run.loop's hook:
    `run.attendant.review(...)`)."""

    def __init__(self, rules: ConfirmRules | None = None, every: bool = False, lease: Lease | None = None,
                 can_answer: bool = True):
        self.rules = rules or ConfirmRules()
        self.every = every
        self.can_answer = can_answer  # a person can answer the model's questions (agent.run.control.Attendant)
        self.lease = lease or Lease()
        self._why = self.rules.matcher()
        self._cv = threading.Condition()
        self.pending: Proposal | None = None
        self._answer: Decision | None = None
        self.askers: list[Callable[[Proposal], None]] = []  # notified of a new proposal (the page's live view)
        self.terminal: Callable[[Proposal, "Attendant"], None] | None = None  # asks when no page watches
        self.watched: Callable[[], bool] = lambda: False  # is a page watching now?
        self.stopped: Callable[[], bool] = lambda: False
        self.element: Callable[[tuple[int, int]], str] | None = None  # accessible name at a pixel

    # ---- the loop's side

    def review(self, step, action, frame, check):
        """The action to run (the proposal, or a person's correction), or None when it must not run
        (rejected, or the display was taken over meanwhile): then step.error says why, for the model.
        `check(raw reply) -> Action`: the gate the loop checks replies with (a correction passes it too)."""
        if self.lease.held:  # the screen the model answered for is gone: look again after hand-back
            self.lease.wait_free(self.stopped)
            return self._refuse(step, action, Decision("reject", "lease", note="a person took over the display "
                                                       "meanwhile; look at the screen again"))
        element = None
        if self.element is not None and getattr(action, "coordinate", None) is not None:
            from actions.coords import to_pixels
            px = to_pixels(tuple(action.coordinate), frame.size)
            element = lambda: self.element(px)  # noqa: E731 (asked only when a target rule exists)
        why = "attended run: every action waits for a person" if self.every else self._why(action, element)
        if why is None:
            return action
        proposal = Proposal(step.step, to_json(action), why, frame.size)
        decision = self.ask(proposal)
        decision.proposed, decision.why, decision.asked = proposal.action, why, proposal.asked
        if decision.verdict == "reject":
            return self._refuse(step, action, decision)
        if decision.verdict == "correct" and decision.action:
            raw = "<tool_call>\n" + json.dumps({"name": "computer_use", "arguments": decision.action}) + "\n</tool_call>"
            try:
                action = check(raw)
            except (ParseError, PolicyError) as e:  # a correction passes the same policy
                return self._refuse(step, action, Decision("reject", decision.by, note=f"the correction was refused: {e}",
                                                           proposed=proposal.action, why=why, asked=proposal.asked))
        decision.action = to_json(action)
        step.decision = decision.record()
        return action

    def question(self, step, action, until: float | None = None) -> bool:
        """The model's question, put to the person (agent.run.control.Attendant.question)."""
        proposal = Proposal(step.step, to_json(action), "the model asks you", tuple(step.frame or (0, 0)))
        decision = self.ask(proposal, until)
        if decision.verdict != "answer" or not decision.note.strip():
            why = decision.note if decision.verdict != "answer" else "the person left the answer empty"
            decision = Decision("unanswered", decision.by, note=why or decision.verdict, decided=decision.decided)
        else:
            decision.note = redact(decision.note)  # a secret typed as the answer reaches the model as its placeholder
        decision.proposed, decision.why, decision.asked = proposal.action, proposal.why, proposal.asked
        step.decision = decision.record()
        return decision.verdict == "answer" or decision.by == "stop" or self.rules.on_unanswered == "continue"

    def _refuse(self, step, action, decision: Decision):
        decision.proposed = decision.proposed or to_json(action)
        step.decision = decision.record()
        who = {"lease": "not run"}.get(decision.by, f"rejected by a person ({decision.by})")
        step.error = f"{who}: {decision.note}" if decision.note else who
        return None

    def ask(self, proposal: Proposal, until: float | None = None) -> Decision:
        """Wait for a person's decision on the proposal (or answer to the question): at most the rules'
        timeout_s and until the monotonic time `until` (the run's deadline)."""
        with self._cv:
            self.pending, self._answer = proposal, None
        for notify in list(self.askers):
            try:
                notify(proposal)
            except Exception:
                pass
        asker = None
        if self.terminal is not None and not self.watched():
            asker = threading.Thread(target=self.terminal, args=(proposal, self), daemon=True, name="ask-terminal")
            asker.start()
        start = time.monotonic()
        wait_s = self.rules.timeout_s if until is None else max(min(self.rules.timeout_s, until - start), 0.0)
        deadline = start + wait_s
        with self._cv:
            while self._answer is None and not self.stopped():
                left = deadline - time.monotonic()
                if left <= 0:
                    verdict = "unanswered" if proposal.question is not None else self.rules.on_timeout
                    self._answer = Decision(verdict, "timeout", note=f"no answer within {wait_s:.3g} s")
                    break
                self._cv.wait(min(left, 0.25))
            answer = self._answer or Decision("reject", "stop", note="the run was stopped")
            self.pending = None
        if asker is not None:  # the terminal's prompt ends before the run prints on
            asker.join(0.5)
        return answer

    # ---- the person's side

    def answer(self, decision: Decision, step: int | None = None) -> bool:
        """A person's decision on the pending proposal (False when none waits, or another step's)."""
        with self._cv:
            if self.pending is None or self._answer is not None or (step is not None and step != self.pending.step):
                return False
            if decision.verdict != "reject" and (decision.verdict == "answer") != (self.pending.question is not None):
                return False  # a question is answered (or declined), a proposed action approved, corrected or rejected
            decision.decided = time.time()
            self._answer = decision
            self._cv.notify_all()
            return True


def decision_from(data: dict[str, Any], by: str) -> Decision:
    """A decision as the page or the terminal sends it: {"verdict", "note", "action"}."""
    verdict = data.get("verdict")
    if verdict not in ("approve", "correct", "reject", "answer"):
        raise VlagentError("verdict must be approve, correct, reject or answer")
    action = data.get("action")
    if verdict == "correct" and not isinstance(action, dict):
        raise VlagentError("a correction needs the action to run instead")
    return Decision(verdict, by, note=str(data.get("note") or "")[:2000], action=action if verdict == "correct" else None)
