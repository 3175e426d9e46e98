"""How a run ends: the one decision used by `run`, `replay`, `record` and the suite.

A driver (the model loop, a replay, a recording) stops for a reason, an `End`; then the task's
success checks run, unless the run was cut short; `decide` turns both into the run's status.
Exceptions that cut a run short become a status in `outcome`. The table (also in the README):

    how the driver ended                        checks pass     checks fail   no checks
    finished, claiming success: the model's     success         failed        success, "unverified"
      terminate(success) or answer, a replay
      that played every step, a recording
      stopped by the person
    finished, claiming failure                  success         failed        failed
    max_steps, looping, model out of replies    success         failed        failed
    timeout                                     success         timeout       timeout
    invalid_output (3 rejected replies)         invalid_output  (whatever the checks say)
    step_failed (a replay or flow step cannot   failed          (whatever the checks say)
      be done, a flow's assert is false)
    step_timeout (a flow step out of time)      timeout         (whatever the checks say)
    an app under test died during the run       failed          (whatever the checks say; the run
                                                                 stops at its next step, checks unrun)
    display died, model or setup failed (an     error           (checks do not run)
      app dead before its window appeared)
    Ctrl-C, SIGTERM, pointer in a corner        aborted         (checks do not run)
    (suite) killed at the item's deadline       timeout         (checks do not run)
    (suite) the process died without a result   error           (checks do not run)
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

from agent.errors import Aborted, AppDied, VlagentError
from agent.trace import CheckResult, Result, Trace

# End kinds: the driver stopped normally and the checks run.
FINISHED = "finished"  # the driver did all it meant to; `claimed` says whether it thinks it succeeded
GAVE_UP = ("max_steps", "looping", "exhausted")  # the checks decide; without checks: failed
BROKE_DOWN = ("invalid_output", "step_failed", "step_timeout")  # the driver could not go on: that is the status
END_KINDS = (FINISHED, *GAVE_UP, "timeout", *BROKE_DOWN)
INTERRUPTED = "interrupted (Ctrl-C or SIGTERM)"


@dataclass
class End:
    """Why the driver stopped."""

    kind: str  # one of END_KINDS
    reason: str
    claimed: str | None = None  # "success" or "failure": the driver's own verdict, never above the checks
    answer: str | None = None  # the text of an `answer` action

    def __post_init__(self):
        if self.kind not in END_KINDS:
            raise ValueError(f"unknown end kind {self.kind!r}")


def decide(end: End, checks: list[CheckResult], app_died: str | None = None) -> tuple[str, str]:
    """The run's (status, reason) from how the driver ended, the task's checks ([] when the task
    has none) and the death of an app under test (its one-line message), if one died."""
    failed = "; ".join(f"{c.check}: {c.detail}" if c.detail else c.check for c in checks if not c.passed)
    passed = bool(checks) and not failed
    checked = (f"all {len(checks)} checks passed" if passed else f"failed checks: {failed}" if checks
               else "the task has no success checks")
    if end.kind == "invalid_output":
        return "invalid_output", end.reason
    if end.kind == "step_failed":
        return "failed", end.reason
    if end.kind == "step_timeout":
        return "timeout", end.reason
    if app_died:  # a crash is a finding about the app, whatever the checks say
        return "failed", f"{app_died}; {end.reason}; {checked}"
    if passed:
        return "success", f"{checked} ({end.reason})"
    if not checks and end.kind == FINISHED and end.claimed == "success":
        return "success", f"unverified: {checked}; {end.reason}"
    return ("timeout" if end.kind == "timeout" else "failed"), f"{end.reason}; {checked}"


def ended_from_outside(why: str, detail: str) -> tuple[str, str]:
    """(status, reason) of a run stopped from outside before it could decide (how the suite sees a
    child): its deadline passed and it was killed, the suite was interrupted, or it died."""
    if why == "timeout":
        return "timeout", f"no result after {detail}; the suite killed it"
    if why == "interrupted":
        return "aborted", "the suite was interrupted"
    return "error", detail  # why == "died": detail says what it left behind


@contextmanager
def outcome(trace: Trace, result: Result) -> Iterator[None]:
    """Whatever cuts a run short becomes its status, and the trace is always finished. Ctrl-C
    and SIGTERM are recorded as `aborted`, then re-raised for the caller to exit."""
    interrupted: BaseException | None = None
    try:
        yield
    except Aborted as e:
        result.status, result.reason = "aborted", str(e)
    except KeyboardInterrupt as e:
        result.status, result.reason = "aborted", INTERRUPTED
        interrupted = e
    except AppDied as e:  # seen at the next step (the desktop watches the apps): as in decide()
        result.status, result.reason = "failed", f"{e}; the run stopped at the next step"
    except VlagentError as e:  # BackendError, SandboxError (setup, a dead display)
        result.status, result.reason = "error", str(e)
    except Exception as e:  # a dead display surfaces here as Xlib/OS errors
        result.status, result.reason = "error", f"{type(e).__name__}: {e}".splitlines()[0]
    finally:
        result.ended = time.time()
        result.duration_s = round(result.ended - result.started, 3)
        trace.finish(result)
    if interrupted is not None:
        raise interrupted
