"""How a run ends: agent.run.status decides for run, replay, record and the suite.

First the table itself (every way a run ends, with checks passing, failing, absent), then the
same endings driven through `run`, `replay` and `record` in real sandboxes: each gives the same
status, and the same reason but for the driver's own words."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from agent.backends.script import ScriptBackend
from agent.errors import Aborted, AppDied, BackendError, SandboxError
from agent.run.session import RunSession
from agent.run.status import INTERRUPTED, End, decide, ended_from_outside
from agent.trace import CheckResult, Result, Step, Trace, load_result

pytestmark = pytest.mark.timeout(300)

PASS = [CheckResult(check="command: true", passed=True)]
FAIL = [CheckResult(check="command: true", passed=True), CheckResult(check="command: false", passed=False, detail="exit 1")]
NONE: list[CheckResult] = []
DIED = "app 'crash' exited with code 3: crash: simulated crash after 1 s"
CLAIM_OK = End("finished", "the driver's words", "success")
CLAIM_NO = End("finished", "the driver's words", "failure")

# (how it ended, checks, app death) -> (status, the reason without the driver's words)
TABLE = [
    (CLAIM_OK, PASS, None, "success", "all 1 checks passed (·)"),
    (CLAIM_OK, FAIL, None, "failed", "·; failed checks: command: false: exit 1"),
    (CLAIM_OK, NONE, None, "success", "unverified: the task has no success checks; ·"),
    (CLAIM_NO, PASS, None, "success", "all 1 checks passed (·)"),
    (CLAIM_NO, FAIL, None, "failed", "·; failed checks: command: false: exit 1"),
    (CLAIM_NO, NONE, None, "failed", "·; the task has no success checks"),
    *[(End(kind, "the driver's words"), checks, None, status, reason)
      for kind in ("max_steps", "looping", "exhausted")
      for checks, status, reason in ((PASS, "success", "all 1 checks passed (·)"),
                                     (FAIL, "failed", "·; failed checks: command: false: exit 1"),
                                     (NONE, "failed", "·; the task has no success checks"))],
    (End("timeout", "the driver's words"), PASS, None, "success", "all 1 checks passed (·)"),
    (End("timeout", "the driver's words"), FAIL, None, "timeout", "·; failed checks: command: false: exit 1"),
    (End("timeout", "the driver's words"), NONE, None, "timeout", "·; the task has no success checks"),
    *[(End("invalid_output", "the driver's words"), c, None, "invalid_output", "·") for c in (PASS, FAIL, NONE)],
    *[(End("step_failed", "the driver's words"), c, None, "failed", "·") for c in (PASS, FAIL, NONE)],
    *[(End("step_timeout", "the driver's words"), c, None, "timeout", "·") for c in (PASS, FAIL, NONE)],
    (CLAIM_OK, PASS, DIED, "failed", f"{DIED}; ·; all 1 checks passed"),
    (CLAIM_OK, NONE, DIED, "failed", f"{DIED}; ·; the task has no success checks"),
    (End("timeout", "the driver's words"), FAIL, DIED, "failed", f"{DIED}; ·; failed checks: command: false: exit 1"),
]


@pytest.mark.parametrize("end, checks, died, status, reason", TABLE)
def test_the_status_table(end, checks, died, status, reason):
    assert decide(end, checks, died) == (status, reason.replace("·", end.reason))


@pytest.mark.parametrize("error, status, reason", [
    (Aborted("mouse moved to a screen corner: run aborted by the user"), "aborted", "mouse moved to a screen corner"),
    (KeyboardInterrupt(), "aborted", INTERRUPTED),  # Ctrl-C, and SIGTERM (raised as KeyboardInterrupt)
    (AppDied("app 'form' was killed by signal 11"), "failed", "app 'form' was killed by signal 11; the run stopped"),
    (BackendError("the model server at http://x is down"), "error", "the model server at http://x is down"),
    (SandboxError("display :9 stopped answering"), "error", "display :9 stopped answering"),
    (ConnectionResetError("Xlib: display closed"), "error", "ConnectionResetError: Xlib: display closed"),
])
def test_what_cuts_a_run_short(tmp_path, error, status, reason):
    from agent.task import Task

    task = Task.model_validate({"name": "t", "goal": "g"})
    with pytest.raises(KeyboardInterrupt) if isinstance(error, KeyboardInterrupt) else _nothing():
        with RunSession(task, mode="loop", trace_dir=tmp_path / "t") as run:
            run.add_step(Step(step=1, raw="r"))
            raise error
    result = run.result
    assert result.status == status and result.reason.startswith(reason)
    saved = load_result(tmp_path / "t")  # the trace is finished whatever happened
    assert saved.status == status and saved.steps == 1 and saved.ended > 0


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@pytest.mark.parametrize("why, detail, status, reason", [
    ("timeout", "60 s", "timeout", "no result after 60 s; the suite killed it"),
    ("interrupted", "60 s", "aborted", "the suite was interrupted"),
    ("died", "exited with code -9 without a result: Killed", "error", "exited with code -9 without a result: Killed"),
])
def test_a_suite_item_stopped_from_outside(why, detail, status, reason):
    assert ended_from_outside(why, detail) == (status, reason)


def test_unknown_end_kinds_are_a_bug():
    with pytest.raises(ValueError):
        End("terminated", "a kind the table does not know")


# ------------------------------------------------------------------ the three drivers, for real

def _reply(**arguments) -> str:
    return f'<tool_call>{json.dumps({"name": "computer_use", "arguments": arguments})}</tool_call>'


def _task(tmp_path: Path, checks: list, app_after: float | None):
    from agent.task import Task

    setup = ([{"launch": [sys.executable, "-m", "sandbox.apps.crash", "--after", str(app_after)],
               "wait_for_window": "Crash"}] if app_after is not None else [])
    return Task.model_validate({"name": "ending", "goal": "wait", "screen": {"width": 640, "height": 480},
                                "setup": setup, "success": checks, "timeout_s": 60})


def _drive(driver: str, task, tmp_path: Path, wait_s: float, interrupt: bool = False) -> Result:
    """One run of `task` by `driver` that waits about wait_s and ends claiming success."""
    from agent.replay.player import replay
    from agent.replay.record import record_trace
    from agent.run.runner import run_task

    out = tmp_path / driver

    def ctrl_c(*_):
        raise KeyboardInterrupt

    if driver == "run":
        backend = ScriptBackend([_reply(action="wait", time=wait_s), _reply(action="terminate", status="success")])
        return run_task(task, backend, trace_dir=out, on_step=ctrl_c if interrupt else None)[0]
    if driver == "replay":
        original = Trace(tmp_path / "original")
        original.write_task(task.model_dump_json())
        original.add(Step.model_validate({"step": 1, "action": {"action": "wait", "time": wait_s}, "source": "human"}))
        original.finish(Result(status="success"))
        return replay(original.folder, task, trace_out=out, on_step=ctrl_c if interrupt else None)
    return record_trace(out, task, max_seconds=wait_s, stop_when_done=False, on_ready=ctrl_c if interrupt else None)


def _checks_part(result: Result) -> str:
    """The reason with the driver's own words taken out."""
    for words in ("the model called terminate(success)", "replayed 1 steps", "recorded 0 steps; --max-seconds reached"):
        result.reason = result.reason.replace(words, "·")
    return result.reason


ENDINGS = {  # name -> (checks, app crashes after S, status, the reason without the driver's words)
    "checks pass": ([{"command": "true"}], None, "success", "all 1 checks passed (·)"),
    "checks fail": ([{"command": "true"}, {"command": "false"}], None, "failed", "·; failed checks: command: false"),
    "no checks": ([], None, "success", "unverified: the task has no success checks; ·"),
    "app crashed": ([{"command": "true"}], 0.5, "failed", "exited with code 3"),
}


@pytest.mark.slow
@pytest.mark.parametrize("ending", ENDINGS)
def test_the_same_ending_under_run_replay_and_record(tmp_path, ending):
    checks, crash_after, status, reason = ENDINGS[ending]
    task = _task(tmp_path, checks, crash_after)
    wait_s = 2.0 if crash_after else 0.3
    for driver in ("run", "replay", "record"):
        result = _drive(driver, task, tmp_path, wait_s)
        assert result.status == status, (driver, result.reason)
        assert reason in _checks_part(result), (driver, result.reason)
        assert load_result(tmp_path / driver).status == status


@pytest.mark.slow
def test_ctrl_c_is_aborted_under_run_replay_and_record(tmp_path):
    """(Under record, Ctrl-C *while recording* is how a person stops it; before that it aborts.)"""
    task = _task(tmp_path, [{"command": "true"}], None)
    for driver in ("run", "replay", "record"):
        with pytest.raises(KeyboardInterrupt):
            _drive(driver, task, tmp_path, 0.3, interrupt=True)
        result = load_result(tmp_path / driver)
        assert (result.status, result.reason) == ("aborted", INTERRUPTED), driver
