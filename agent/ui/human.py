"""A person's own action on a run's display (they hold the lease): checked by the task's policy like
any action, run by the same executor, and written to the trace as a human step with the screen it
was done on, so the run's trace replays and the model is told what happened."""
from __future__ import annotations

import time

from actions import Policy, gate
from actions.schema import ACTION_ADAPTER
from agent.run.executor import execute
from agent.trace import Step

HUMAN_ACTIONS = {"left_click", "right_click", "double_click", "mouse_move", "type", "key", "scroll", "left_click_drag"}


def perform(session, data: dict) -> dict:
    """`data`: an action in the model's form (0..1000 coordinates of the screen as shown)."""
    env = session.env
    if env is None or session.trace is None:
        raise PermissionError("the run has no display yet")
    action = ACTION_ADAPTER.validate_python(data)
    if action.action not in HUMAN_ACTIONS:
        raise ValueError(f"a person's action is one of {', '.join(sorted(HUMAN_ACTIONS))}")
    desktop = env.desktop
    t0 = time.perf_counter()
    frame = desktop.capture()
    action = gate.check(action, gate.probe_of(desktop), Policy(session.task.allow, session.task.secrets), frame=frame.size)  # people too
    trace = session.trace
    n = max((s.step for s in trace.steps), default=0) + 1
    step = Step(step=n, action=action, source="human", screenshot=trace.save_screen(frame, f"{n:04d}"), frame=frame.size)
    outcome = execute(action, desktop, frame.size)
    step.pixel, step.start_pixel, step.screen = outcome.pixel, outcome.start_pixel, desktop.size()
    t1 = time.perf_counter()
    settle = desktop.wait_stable(1.0)
    step.timings = {"exec_ms": (t1 - t0) * 1e3, "settle_ms": settle * 1e3, "step_ms": (time.perf_counter() - t0) * 1e3}
    session.add_step(step)
    return {"step": n, "pixel": step.pixel}
