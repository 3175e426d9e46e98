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

from dataclasses import dataclass

from agent.errors import Aborted, AppDied, VlagentError
from agent.trace import STATUSES, CheckResult

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


def status_of(exc: BaseException, in_test: bool = False) -> tuple[str, str]:
    """The (status, reason) of a run that this exception cut short: the one mapping every driver
    shares. An error may carry the status it implies (a flow step's `status`: failed, timeout...).
    in_test: the run is a pytest test's, whose own assert between steps is a failed run."""
    status = getattr(exc, "status", None)
    if isinstance(status, str) and status in STATUSES:
        return status, str(exc)
    if isinstance(exc, Aborted):
        return "aborted", str(exc)
    if isinstance(exc, KeyboardInterrupt):
        return "aborted", INTERRUPTED
    if isinstance(exc, AppDied):  # seen at the next step (the desktop watches the apps): as in decide()
        return "failed", f"{exc}; the run stopped at the next step"
    if isinstance(exc, VlagentError):  # BackendError, SandboxError (setup, a dead display)
        return "error", str(exc)
    if in_test and isinstance(exc, AssertionError):
        return "failed", f"AssertionError: {exc}".splitlines()[0]
    return "error", f"{type(exc).__name__}: {exc}".splitlines()[0]  # a dead display: Xlib/OS errors
