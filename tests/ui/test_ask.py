"""The model asks the person a question (`ask_user`), without a display: the attendant puts it to
whoever can answer and waits (timeout, the run's deadline, stop), the answer reaches the model as
its next step's feedback, and the step keeps question, answer, who answered and when. The page and
the terminal are in tests/ui/test_ui_browser.py and tests/cli."""
from __future__ import annotations

import threading
import time

import pytest

from actions import Policy
from agent.run.control import RunControl
from agent.run.loop import LoopConfig, run_loop
from agent.trace import Step, Trace, load_steps
from agent.ui.attend import Attendant, ConfirmRules, Decision
from fakes import QueueModel, RecordingDesktop, reply

pytestmark = pytest.mark.timeout(60)
QUESTION = reply(action="ask_user", text="Which of the two accounts, personal or work?")
DONE = reply(action="terminate", status="success")


class Attended:
    """What run_loop needs of a RunSession: its control, its attendant, an event sink."""

    def __init__(self, attendant):
        self.control, self.attendant = RunControl(), attendant

    def publish(self, kind, **fields) -> None:
        pass


def answer_when_asked(att: Attendant, decision: Decision) -> threading.Thread:
    def run():
        deadline = time.monotonic() + 10
        while att.pending is None and time.monotonic() < deadline:
            time.sleep(0.01)
        att.answer(decision, att.pending.step)
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def ask_loop(tmp_path, att: Attendant, *replies, **cfg):
    model, desktop, trace = QueueModel(QUESTION, *replies), RecordingDesktop(), Trace(tmp_path / "trace")
    end = run_loop("Log in.", model, desktop, Policy(can_ask=True), trace, LoopConfig(**{"timeout_s": 30, **cfg}),
                   run=Attended(att))
    trace.flush()
    return end, model, desktop, load_steps(trace.folder)


def test_the_answer_is_the_next_prompts_feedback_and_the_step_keeps_who_answered_and_when(tmp_path):
    att = Attendant(can_answer=True)
    answer_when_asked(att, Decision("answer", "page", note="the work one"))
    t0 = time.time()
    end, model, desktop, steps = ask_loop(tmp_path, att, DONE)
    assert end.kind == "finished" and [s.kind for s in steps] == ["ask_user", "terminate"]
    d = steps[0].decision
    assert (d["verdict"], d["by"], d["note"]) == ("answer", "page", "the work one")
    assert d["proposed"] == {"action": "ask_user", "text": "Which of the two accounts, personal or work?"}
    assert t0 <= d["asked"] <= d["decided"] <= time.time()
    assert "person_ms" in steps[0].timings and steps[0].error is None
    prompt = model.prompt_text(1)
    assert "You asked the person: Which of the two accounts, personal or work?" in prompt
    assert "Their answer: the work one" in prompt
    assert not [c for c in desktop.calls if c[0] not in ("capture", "check_abort", "wait_stable")]  # nothing typed or clicked


def test_unanswered_the_model_is_told_or_the_run_ends_as_the_task_says(tmp_path):
    end, model, _, steps = ask_loop(tmp_path / "a", Attendant(ConfirmRules(timeout_s=0.2)), DONE)
    assert steps[0].decision["verdict"] == "unanswered" and steps[0].decision["by"] == "timeout"
    assert "Nobody answered (no answer within 0.2 s)" in model.prompt_text(1) and end.claimed == "success"
    end, model, _, steps = ask_loop(tmp_path / "b", Attendant(ConfirmRules(timeout_s=0.2, on_unanswered="fail")), DONE)
    assert (end.kind, end.claimed, end.reason) == ("finished", "failure", "nobody answered the model's question")
    assert len(model.seen) == 1 and [s.kind for s in steps] == ["ask_user"]


def test_the_wait_ends_at_the_runs_deadline_and_an_empty_answer_is_no_answer(tmp_path):
    t0 = time.monotonic()
    end, _, _, steps = ask_loop(tmp_path / "a", Attendant(ConfirmRules(timeout_s=600)), DONE, timeout_s=1.0)
    assert time.monotonic() - t0 < 10 and steps[0].decision["by"] == "timeout" and end.kind == "timeout"
    att = Attendant()
    answer_when_asked(att, Decision("answer", "terminal", note="   "))
    _, model, _, steps = ask_loop(tmp_path / "b", att, DONE)
    assert steps[0].decision["verdict"] == "unanswered" and "the person left the answer empty" in model.prompt_text(1)


def test_a_secret_typed_as_the_answer_reaches_the_model_as_its_placeholder(tmp_path):
    from agent import secrets

    saved = secrets.snapshot()
    try:
        secrets.register("PIN", "4711-2718")
        att = Attendant()
        answer_when_asked(att, Decision("answer", "page", note="it is 4711-2718"))
        _, model, _, steps = ask_loop(tmp_path, att, DONE)
        assert "4711-2718" not in model.prompt_text(1) and "{secret:PIN}" in model.prompt_text(1)
        assert steps[0].decision["note"] == "it is {secret:PIN}"
    finally:
        secrets.restore(saved)


def test_a_question_is_answered_and_an_action_approved_never_the_other_way_round():
    att = Attendant(every=True)
    for kind, wrong, right in (({"action": "ask_user", "text": "Q?"}), "approve", "answer"), \
                              (({"action": "left_click", "coordinate": [1, 2]}), "answer", "approve"):
        from agent.ui.attend import Proposal

        done = threading.Event()
        threading.Thread(target=lambda: (att.ask(Proposal(4, kind, "why", (10, 10))), done.set()), daemon=True).start()
        while att.pending is None:
            time.sleep(0.01)
        assert not att.answer(Decision(wrong, "page", note="x"), 4)
        assert att.answer(Decision(right, "page", note="x"), 4) and done.wait(5)


def test_older_questions_stay_in_the_history_with_their_answers():
    from actions.schema import ACTION_ADAPTER
    from agent.run.history import step_line

    step = Step(step=2, action=ACTION_ADAPTER.validate_python({"action": "ask_user", "text": "Which one?"}),
                decision={"verdict": "answer", "by": "page", "note": "the left one"})
    assert step_line(step) == 'Step 2: {"action": "ask_user", "text": "Which one?"} -> answered: the left one'
    step.decision = {"verdict": "unanswered", "by": "timeout", "note": "no answer within 300 s"}
    assert step_line(step).endswith("-> not answered (no answer within 300 s)")


def test_a_terminal_or_attended_run_can_be_asked_a_run_without_either_cannot():
    from types import SimpleNamespace

    from actions.policy import Allow
    from agent.ui.watch import attend

    def session(allow=None):
        return SimpleNamespace(task=SimpleNamespace(allow=allow or Allow()), control=RunControl(), attendant=None)

    assert attend(s := session(), tty=False) is None and s.attendant is None  # a pipe, CI, a suite item
    assert attend(s := session(), tty=True).can_answer and s.attendant.can_answer
    assert attend(session(), attended=True, tty=False).can_answer
    confirm_only = attend(session(Allow(confirm={"actions": ["left_click"]})), tty=False)
    assert confirm_only is not None and not confirm_only.can_answer  # approvals time out; no questions offered
