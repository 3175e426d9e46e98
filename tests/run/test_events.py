"""The run's event stream and its controls: subscribers get every step in order, a slow one loses
frames and never steps, a broken one cannot break the run; pause, one step, stop."""
from __future__ import annotations

import threading
import time

import pytest

from agent.errors import Aborted
from agent.run import events as ev
from agent.run.control import RunControl
from agent.run.session import RunSession
from agent.task import Task
from agent.trace import Step, load_result


def test_a_slow_subscriber_loses_frames_never_steps():
    bus = ev.EventBus()
    release = threading.Event()
    seen: list = []

    def slow(event):
        release.wait(5)
        seen.append(event)

    sub = bus.subscribe(slow)
    t0 = time.perf_counter()
    for n in range(50):
        bus.publish(ev.FrameCaptured("r", step=n, image=None))
        bus.publish(ev.StepWritten("r", step={"step": n}))
    assert time.perf_counter() - t0 < 1.0  # publishing never waits for a subscriber
    release.set()
    assert sub.drain(5)
    steps = [e.step["step"] for e in seen if isinstance(e, ev.StepWritten)]
    frames = [e for e in seen if isinstance(e, ev.FrameCaptured)]
    assert steps == list(range(50))
    assert 1 <= len(frames) <= ev.MAX_PENDING_FRAMES + 1


def test_a_broken_subscriber_is_dropped_and_the_others_go_on():
    bus = ev.EventBus()
    good: list = []

    def broken(event):
        raise RuntimeError("console crashed")

    bad = bus.subscribe(broken)
    ok = bus.subscribe(good.append)
    for n in range(3):
        bus.publish(ev.ModelAsked("r", step=n))
    ok.drain(2)
    assert [e.step for e in good] == [0, 1, 2]
    assert isinstance(bad.error, RuntimeError)


def test_a_session_publishes_its_lifecycle_and_every_step(tmp_path):
    task = Task.model_validate({"name": "t", "goal": "g"})
    bus = ev.EventBus()
    got: list = []
    bus.subscribe(got.append)
    with RunSession(task, mode="loop", trace_dir=tmp_path / "t", bus=bus) as run:
        run.add_step(Step(step=1, raw="r1"))
        run.add_step(Step(step=2, raw="r2"))
        raise ValueError("boom")
    names = [type(e).__name__ for e in got]
    assert names == ["RunStarted", "StepWritten", "StepWritten", "RunEnded"]
    assert got[-1].status == "error" and "ValueError: boom" in got[-1].reason
    assert load_result(tmp_path / "t").steps == 2 and all(e.run_id == run.id for e in got)


def test_the_trace_copy_of_a_task_holds_what_was_given(tmp_path):
    task = Task.model_validate({"name": "t", "steps": [{"type": "hi"}, {"key": "Return"}]})
    with RunSession(task, mode="flow", trace_dir=tmp_path / "t"):
        pass
    text = (tmp_path / "t" / "task.yaml").read_text()
    assert "null" not in text and "right_click" not in text
    assert Task.model_validate(__import__("yaml").safe_load(text)).steps[1].key is not None


def test_pause_one_step_resume_and_stop():
    control = RunControl()
    passed: list[float] = []

    def driver():
        try:
            for _ in range(10):
                control.wait_turn()
                passed.append(time.monotonic())
        except Aborted:
            passed.append(-1)

    control.pause()
    worker = threading.Thread(target=driver)
    worker.start()
    time.sleep(0.2)
    assert passed == []  # paused before the first step
    control.step_once()
    time.sleep(0.2)
    assert len(passed) == 1  # exactly one step, then paused again
    control.resume()
    time.sleep(0.2)
    assert len(passed) == 10
    control.stop()
    worker.join(2)
    with pytest.raises(Aborted):
        control.wait_turn()
