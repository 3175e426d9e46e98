"""The step log: one record per step, written as it happens. It is the single source of truth
for prompts (agent.run.history), traces, reports and replay.

A trace folder holds:
    task.yaml        the task as run (resolved)
    steps.jsonl      one Step per line, flushed after every step
    screens/NNNN.png the screenshot the model saw at step N (final.png: the last screen)
    result.json      the final status, reason, checks and totals (written last, always)
"""
from __future__ import annotations

import json
import os
import re
import shutil
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, field_serializer

from actions.schema import Action, to_json
from agent import secrets, trust
from agent.errors import VlagentError

Status = Literal["success", "failed", "invalid_output", "timeout", "aborted", "error"]
STATUSES: tuple[str, ...] = ("success", "failed", "invalid_output", "timeout", "aborted", "error")
RUN_FILES = ("steps.jsonl", "result.json", "task.yaml")  # any of them: the folder holds a run


class Step(BaseModel):
    step: int
    raw: str | None = None  # the model's reply (None for recorded human steps)
    action: Action | None = None  # the validated action (stored as its native arguments), or None
    error: str | None = None  # why the reply was rejected or the action failed, or None
    screenshot: str | None = None  # path, relative to the trace folder, of the frame the model saw
    frame: tuple[int, int] | None = None  # (w, h) of that frame
    # Pixels are always *screen* pixels (what input events address); `frame` and `screen` give the two
    # sizes, so frame pixels are pixel * frame / screen (they differ under HiDPI and --max-pixels).
    pixel: tuple[int, int] | None = None  # where a pointer action landed, in screen pixels
    start_pixel: tuple[int, int] | None = None  # drag start, in screen pixels
    screen: tuple[int, int] | None = None  # (w, h) of the screen the pixels are in
    target: dict[str, Any] | None = None  # evidence that re-finds the target (record/replay)
    marks: str | None = None  # --marks: the frame with its element marks, as the model saw it (path like screenshot)
    mark: dict[str, Any] | None = None  # --marks: the mark the reply named, its element, the point it resolved to
    timings: dict[str, float] = Field(default_factory=dict)  # *_ms: capture, model, exec, settle, step
    source: Literal["model", "human", "replay"] = "model"
    flow_step: int | None = None  # in a flow (task with steps:), the index of the step this action served
    decision: dict[str, Any] | None = None  # attended runs: the person's verdict on this step (agent/ui/attend.py)
    t: float = Field(default_factory=time.time)  # wall clock when the step was recorded

    @field_serializer("action")
    def _native(self, action: Action | None) -> dict | None:
        return None if action is None else to_json(action)

    @property
    def kind(self) -> str:
        """The action's name, or 'rejected' for a step without a valid action."""
        return self.action.action if self.action is not None else "rejected"


class CheckResult(BaseModel):
    check: str  # e.g. "file_json: {workdir}/form.json"
    passed: bool
    detail: str = ""


class FlowStepResult(BaseModel):
    """One step of a flow (agent.flow): what it was, how it ended, what it cost."""

    index: int  # position in its phase
    phase: Literal["before", "steps", "after"] = "steps"
    kind: str  # act, assert, query, wait_for, left_click, type, key, ...
    text: str  # the instruction, statement or prompt, values filled in
    status: Literal["passed", "failed", "skipped"] = "skipped"
    reason: str = ""  # why it failed, or the model's reason for an assert / wait_for
    cache: Literal["hit", "healed", "miss"] | None = None  # act and grounded steps only
    model_calls: int = 0
    duration_s: float = 0.0
    value: Any = None  # a query's validated JSON
    actions: list[int] = []  # the trace steps (Step.step) this step performed
    screenshot: str | None = None  # the screen the verdict or answer was read from, or after the step


class Result(BaseModel):
    status: Status
    reason: str = ""
    task: str = ""
    model: str = ""
    steps: int = 0
    checks: list[CheckResult] = []
    started: float = 0.0
    ended: float = 0.0
    duration_s: float = 0.0
    answer: str | None = None  # the text of an `answer` action, if any
    final_screenshot: str | None = None
    display: str | None = None  # the X display the run drove
    model_calls: int = 0  # every model call of the run (flows: acts, groundings, asserts, queries, waits)
    flow: list[FlowStepResult] = []  # a flow's steps, in the order they ran (empty for goal tasks)


RESERVE_BYTES = 256 << 10  # kept free for result.json, given back when the disk fills
_SURROGATE = re.compile(r"[\ud800-\udfff]")


def safe_text(data: Any) -> Any:
    """What a trace may hold: lone surrogates (invalid Unicode a server can send) as U+FFFD, and
    secrets redacted (agent.secrets), in every string of a JSON-like structure."""
    if isinstance(data, str):
        return secrets.redact(_SURROGATE.sub("\ufffd", data))
    if isinstance(data, dict):
        return {safe_text(k): safe_text(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [safe_text(v) for v in data]
    return data


def _dumps(data: Any, **kw) -> str:
    return json.dumps(safe_text(data), ensure_ascii=False, **kw)


class TraceError(VlagentError):
    """The trace cannot be written (read-only folder, full disk). The run ends with status `error`."""


def _os_reason(e: OSError) -> str:
    return e.strerror or type(e).__name__


def check_trace_dir(folder: str | Path) -> None:
    """Before a run starts: the folder is new, can be created and written, and the disk has room.
    Raises TraceError (one line)."""
    folder = Path(folder)
    check_new_trace(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".write-test"
        probe.write_bytes(b"x")
        probe.unlink()
    except OSError as e:
        raise TraceError(f"cannot write the trace folder {folder}: {_os_reason(e)}") from None
    if shutil.disk_usage(folder).free < 2 * RESERVE_BYTES:
        raise TraceError(f"no room for a trace in {folder}: the disk is full")


class Trace:
    """Writes a trace folder as the run goes, so nothing is lost when it dies.

    A write that fails (a full disk) raises TraceError and leaves steps.jsonl parseable: the torn line
    is cut off, and only the steps on disk are counted. A reserve file keeps room for result.json."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        check_new_trace(self.folder)
        try:
            (self.folder / "screens").mkdir(parents=True, exist_ok=True)
            self._log = open(self.folder / "steps.jsonl", "a", encoding="utf-8")
        except OSError as e:
            raise TraceError(f"cannot write the trace folder {self.folder}: {_os_reason(e)}") from None
        self._reserve = self.folder / ".reserve"
        try:
            self._reserve.write_bytes(b"\0" * RESERVE_BYTES)
        except OSError:
            self._reserve.unlink(missing_ok=True)
        self.steps: list[Step] = []
        self.listeners: list = []  # called with each step's JSON once it is on disk (the run's event stream)
        self._failed: str | None = None  # why a screenshot could not be written
        # PNG encoding of a 1080p frame costs ~25 ms: done off the loop's thread (zlib drops the GIL).
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="trace-png")
        self._pending: list[Future] = []

    def save_screen(self, image, name: str) -> str:
        """Queue the PNG write and return its path relative to the trace folder at once."""
        rel = f"screens/{name}.png"
        self._pending = [f for f in self._pending if not f.done()]
        self._pending.append(self._writer.submit(self._save, image, self.folder / rel))
        return rel

    def _save(self, image, path: Path) -> None:
        try:
            secrets.mask(image).save(path, compress_level=1)
        except OSError as e:
            path.unlink(missing_ok=True)  # no half-written PNG
            self._failed = self._failed or f"cannot write {path.name}: {_os_reason(e)}"

    def flush(self) -> None:
        """Wait for queued screenshots to be on disk (anyone reading the folder mid-run calls this).
        Raises TraceError when one could not be written."""
        for f in self._pending:
            f.result()
        self._pending = []
        if self._failed:
            raise TraceError(f"trace {self.folder}: {self._failed}")

    def add(self, step: Step) -> Step:
        """Append the step to steps.jsonl (redacted, invalid Unicode made safe). A failed write is cut
        off the file and raises TraceError; the step then is not counted."""
        line = _dumps(step.model_dump(mode="json")) + "\n"
        start = None
        try:
            start = self._log.tell()
            self._log.write(line)
            self._log.flush()
        except OSError as e:
            self._cut(start)
            raise TraceError(f"cannot write the trace in {self.folder}: {_os_reason(e)}") from None
        self.steps.append(step)
        for listener in self.listeners:  # what is on disk, redacted
            listener(json.loads(line))
        if self._failed:  # a screenshot could not be written: end the run now, not at its end
            raise TraceError(f"trace {self.folder}: {self._failed}")
        return step

    def _cut(self, size: int | None) -> None:
        """Drop a torn last line (what a full disk leaves)."""
        try:
            self._log.close()  # its buffer cannot be written either
        except OSError:
            pass
        self._log = open(self.folder / "steps.jsonl", "a", encoding="utf-8")
        if size is not None:
            os.truncate(self.folder / "steps.jsonl", size)

    def write_task(self, text: str) -> None:
        try:
            (self.folder / "task.yaml").write_text(secrets.redact(text), encoding="utf-8")
            trust.sign(self.folder)  # written here: trusted here (agent.trust)
        except OSError as e:
            raise TraceError(f"cannot write the trace in {self.folder}: {_os_reason(e)}") from None

    def finish(self, result: Result) -> Result:
        """Write result.json (always tried, after giving back the reserve if the disk is full).
        The result itself is redacted, so whoever reports it (terminal, JUnit, suite) shows no secret."""
        try:
            self.flush()
        except TraceError as e:
            if result.status != "error":
                result.status, result.reason = "error", str(e)
        self._writer.shutdown(wait=True)
        result.steps = len(self.steps)
        clean = Result.model_validate(safe_text(result.model_dump(mode="json")))
        for name in Result.model_fields:
            setattr(result, name, getattr(clean, name))
        path = self.folder / "result.json"
        text = _dumps(result.model_dump(mode="json"), indent=2)
        for attempt in range(2):
            try:
                tmp = path.with_suffix(".json.tmp")
                tmp.write_text(text, encoding="utf-8")
                tmp.replace(path)  # never a half-written result.json
                break
            except OSError:
                tmp.unlink(missing_ok=True)
                self._reserve.unlink(missing_ok=True)  # the disk is full: give back the room kept for this
        self._reserve.unlink(missing_ok=True)
        try:
            self._log.close()
        except OSError:
            pass
        secrets.redact_files(self.folder.rglob("*.log"))  # the apps' own output, kept with the trace
        return result


def check_new_trace(folder: str | Path) -> None:
    """Refuse a folder that already holds a run: a second run would mix its steps into the first
    (steps 1..N twice, screenshots overwritten, a result.json that counts only one)."""
    held = next((name for name in RUN_FILES if (Path(folder) / name).exists()), None)
    if held is not None:
        raise VlagentError(f"{folder} already holds a run ({held}); give --trace a new folder")


def count_steps(folder: str | Path) -> int:
    """How many steps a trace holds so far, without parsing them (progress, scheduling); 0 without one."""
    try:
        with open(Path(folder) / "steps.jsonl", "rb") as f:
            return sum(1 for line in f if line.strip())
    except OSError:
        return 0


def load_steps(folder: str | Path, *, lenient: bool = False) -> list[Step]:
    """The steps of a trace folder; a VlagentError says what is wrong with it. lenient (reports of
    any trace): lines that do not parse are skipped (a run killed mid-write leaves a torn last
    line) and a folder without steps.jsonl has no steps."""
    path = Path(folder) / "steps.jsonl"
    try:
        lines = trust.read_bytes(folder, "steps.jsonl", trust.MAX_JSON_BYTES).decode("utf-8", "replace").splitlines()
    except (OSError, trust.TrustError):
        if lenient:
            return []
        raise VlagentError(f"{folder}: not a trace folder (no steps.jsonl)") from None
    steps = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            steps.append(Step.model_validate_json(line))
        except ValueError as e:
            if not lenient:
                raise VlagentError(f"{path}:{n}: not a valid step: {str(e).splitlines()[0]}") from None
    return steps


def load_result(folder: str | Path) -> Result | None:
    path = Path(folder) / "result.json"
    return Result.model_validate(json.loads(path.read_text(encoding="utf-8"))) if path.exists() else None


def new_trace_dir(root: str | Path, name: str) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path(root) / f"{stamp}-{name}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = Path(f"{base}-{n}")
    return path
