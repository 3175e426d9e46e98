"""The agent loop (agent.run.loop) with a recording fake desktop and a queue model that implement
the real interfaces (tests/fakes.py), no patching and no display: looping detection, `answer`,
rejected replies fed back, the deadline, the pixel spaces recorded, and the status each ending gets
from agent.run.status. Seconds in all; the end-to-end tests (test_run, test_status) stay."""
from __future__ import annotations

import inspect
import json
import time

import pytest

from actions import Policy
from agent.backends.base import Backend
from agent.desktop.base import Desktop
from agent.errors import Aborted, BackendError
from agent.run.loop import MAX_REJECTIONS, MAX_REPEATS, LoopConfig, run_loop
from agent.run.status import decide
from agent.trace import CheckResult, Trace, load_steps
from fakes import QueueModel, RecordingDesktop, reply

pytestmark = pytest.mark.timeout(60)
CLICK = reply(action="left_click", coordinate=[500, 500])
DONE = reply(action="terminate", status="success")
PASSED = [CheckResult(check="command: true", passed=True)]
FAILED = [CheckResult(check="command: false", passed=False)]


def loop(tmp_path, model, desktop=None, policy=None, **cfg):
    trace = Trace(tmp_path / "trace")
    desktop = desktop or RecordingDesktop()
    end = run_loop("Do the thing.", model, desktop, policy or Policy(), trace, LoopConfig(**{"timeout_s": 30, **cfg}))
    return end, trace.steps, desktop


def test_the_fakes_implement_the_real_interfaces():
    for proto, fake in ((Desktop, RecordingDesktop), (Backend, QueueModel)):
        for name, member in vars(proto).items():
            if callable(member) and not name.startswith("_"):
                want = [p.name for p in inspect.signature(member).parameters.values()]
                got = [p.name for p in inspect.signature(getattr(fake, name)).parameters.values()]
                assert got == want, f"{fake.__name__}.{name}{got} is not {proto.__name__}.{name}{want}"
        for attribute in proto.__annotations__:  # display, name
            assert hasattr(fake(), attribute), f"{fake.__name__} has no {attribute}"


def test_a_click_lands_in_screen_pixels_and_both_sizes_are_recorded(tmp_path):
    # The model sees a 640x400 frame of a 1280x800 screen (HiDPI, or --max-pixels).
    desktop = RecordingDesktop(frame=(640, 400), size=(1280, 800))
    end, steps, _ = loop(tmp_path, QueueModel(CLICK, DONE), desktop)
    # 500/1000 is frame pixel (320, 200); the centre of that pixel on the 2x screen is (641, 401)
    assert desktop.named("click") == [(641, 401)]
    first = steps[0]
    assert first.kind == "left_click" and first.pixel == (641, 401)
    assert first.frame == (640, 400) and first.screen == (1280, 800)
    assert (end.kind, end.claimed) == ("finished", "success")
    saved = load_steps(tmp_path / "trace")  # the trace holds the same typed steps, native JSON on disk
    assert saved[0].action == first.action and saved[0].pixel == (641, 401)
    line = json.loads((tmp_path / "trace" / "steps.jsonl").read_text().splitlines()[0])
    assert line["action"] == {"action": "left_click", "coordinate": [500, 500]}


def test_the_same_action_on_an_unchanged_screen_is_looping(tmp_path):
    end, steps, _ = loop(tmp_path, QueueModel(*[CLICK] * 10), RecordingDesktop(reactive=False))
    assert end.kind == "looping" and len(steps) == MAX_REPEATS
    assert decide(end, [])[0] == "failed" and decide(end, PASSED)[0] == "success"


def test_the_same_action_while_the_screen_changes_is_not_looping(tmp_path):
    end, steps, _ = loop(tmp_path, QueueModel(*[CLICK] * 10), RecordingDesktop(reactive=True), max_steps=8)
    assert end.kind == "max_steps" and len(steps) == 8


def test_answer_ends_the_run_with_the_text(tmp_path):
    end, steps, desktop = loop(tmp_path, QueueModel(reply(action="answer", text="42 <b>items</b>")))
    assert (end.kind, end.claimed, end.answer) == ("finished", "success", "42 <b>items</b>")
    assert steps[-1].kind == "answer" and not desktop.named("click")
    assert decide(end, []) == ("success", "unverified: the task has no success checks; the model answered")
    assert decide(end, FAILED)[0] == "failed"


def test_a_rejected_reply_is_recorded_and_fed_back_with_its_reason(tmp_path):
    model = QueueModel("I would click the button", reply(action="key", keys=["ctrl", "alt", "delete"]), CLICK, DONE)
    end, steps, desktop = loop(tmp_path, model)
    assert [s.kind for s in steps] == ["rejected", "rejected", "left_click", "terminate"]
    assert steps[0].raw == "I would click the button" and steps[0].error and steps[0].action is None
    assert "alt+ctrl+delete is denied" in steps[1].error
    assert steps[0].error in model.prompt_text(1) and steps[1].error in model.prompt_text(2)
    assert not desktop.named("key")  # a refused action never reaches the desktop
    assert end.kind == "finished"


def test_rejections_in_a_row_end_as_invalid_output(tmp_path):
    end, steps, _ = loop(tmp_path, QueueModel(*["nonsense"] * 5))
    assert end.kind == "invalid_output" and len(steps) == MAX_REJECTIONS
    assert decide(end, PASSED) == ("invalid_output", end.reason)


@pytest.mark.slow
def test_a_model_that_outlives_the_deadline_ends_the_run_as_timeout(tmp_path):
    model = QueueModel(CLICK, QueueModel.HANG)
    t0 = time.monotonic()
    try:
        end, steps, _ = loop(tmp_path, model, timeout_s=1.0)
    finally:
        model.release()
    assert time.monotonic() - t0 < 5
    assert end.kind == "timeout" and "waiting for the model" in end.reason
    assert steps[-1].error == "the model did not answer before the run's deadline" and steps[-1].raw is None
    assert model.cancelled == 1  # the abandoned call was told to stop, so it cannot outlive the run
    assert decide(end, [])[0] == "timeout" and decide(end, FAILED)[0] == "timeout"
    assert decide(end, PASSED)[0] == "success"


def test_max_steps_then_the_checks_decide(tmp_path):
    model = QueueModel(*[reply(action="left_click", coordinate=[100 + i, 100]) for i in range(5)])
    end, steps, _ = loop(tmp_path, model, max_steps=3)
    assert end.kind == "max_steps" and len(steps) == 3
    assert [decide(end, c)[0] for c in ([], PASSED, FAILED)] == ["failed", "success", "failed"]


def test_terminate_failure_is_the_models_claim_and_the_checks_still_decide(tmp_path):
    end, _, _ = loop(tmp_path, QueueModel(reply(action="terminate", status="failure")))
    assert (end.kind, end.claimed) == ("finished", "failure")
    assert [decide(end, c)[0] for c in ([], PASSED, FAILED)] == ["failed", "success", "failed"]


def test_a_person_in_the_corner_and_a_failing_model_raise_out_of_the_loop(tmp_path):
    with pytest.raises(Aborted):
        loop(tmp_path / "a", QueueModel(*[reply(action="left_click", coordinate=[100 + i, 100]) for i in range(5)]),
             RecordingDesktop(abort_at=3))
    with pytest.raises(BackendError, match="server down"):
        loop(tmp_path / "b", QueueModel(CLICK, BackendError("server down")))


def test_the_prompt_has_the_goal_and_the_screenshot(tmp_path):
    model = QueueModel(DONE)
    loop(tmp_path, model)
    images = [p for m in model.seen[0] for p in m["content"] if p.get("type") == "image"]
    assert "Do the thing." in model.prompt_text(0) and len(images) == 1
