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
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field
from agent.errors import VlagentError

Status = Literal["success", "failed", "invalid_output", "timeout", "aborted", "error"]
STATUSES: tuple[str, ...] = ("success", "failed", "invalid_output", "timeout", "aborted", "error")
RUN_FILES = ("steps.jsonl", "result.json", "task.yaml")  # any of them: the folder holds a run


class Step(BaseModel):
    step: int
    raw: str | None = None  # the model's reply (None for recorded human steps)
    action: dict[str, Any] | None = None  # the validated action (native arguments), or None
    error: str | None = None  # why the reply was rejected or the action failed, or None
    screenshot: str | None = None  # path, relative to the trace folder, of the frame the model saw
    frame: tuple[int, int] | None = None  # (w, h) of that frame
    pixel: tuple[int, int] | None = None  # where a pointer action landed, in screen pixels
    start_pixel: tuple[int, int] | None = None  # drag start, in screen pixels
    target: dict[str, Any] | None = None  # evidence that re-finds the target (record/replay)
    timings: dict[str, float] = Field(default_factory=dict)  # *_ms: capture, model, exec, settle, step
    source: Literal["model", "human", "replay"] = "model"
    flow_step: int | None = None  # in a flow (task with steps:), the index of the step this action served
    t: float = Field(default_factory=time.time)  # wall clock when the step was recorded


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


class Trace:
    """Writes a trace folder as the run goes, so nothing is lost when it dies."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        check_new_trace(self.folder)
        (self.folder / "screens").mkdir(parents=True, exist_ok=True)
        self.steps: list[Step] = []
        self._log = open(self.folder / "steps.jsonl", "a", encoding="utf-8")
        # PNG encoding of a 1080p frame costs ~25 ms: done off the loop's thread (zlib drops the GIL).
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="trace-png")
        self._pending: list[Future] = []

    def save_screen(self, image, name: str) -> str:
        """Queue the PNG write and return its path relative to the trace folder at once."""
        rel = f"screens/{name}.png"
        self._pending = [f for f in self._pending if not f.done()]
        self._pending.append(self._writer.submit(image.save, self.folder / rel, compress_level=1))
        return rel

    def flush(self) -> None:
        """Wait for queued screenshots to be on disk (anyone reading the folder mid-run calls this)."""
        for f in self._pending:
            f.result()
        self._pending = []

    def add(self, step: Step) -> Step:
        self.steps.append(step)
        self._log.write(step.model_dump_json() + "\n")
        self._log.flush()
        return step

    def write_task(self, text: str) -> None:
        (self.folder / "task.yaml").write_text(text, encoding="utf-8")

    def finish(self, result: Result) -> Result:
        self.flush()
        self._writer.shutdown(wait=True)
        result.steps = len(self.steps)
        (self.folder / "result.json").write_text(result.model_dump_json(indent=2), encoding="utf-8")
        self._log.close()
        return result


def check_new_trace(folder: str | Path) -> None:
    """Refuse a folder that already holds a run: a second run would mix its steps into the first
    (steps 1..N twice, screenshots overwritten, a result.json that counts only one)."""
    held = next((name for name in RUN_FILES if (Path(folder) / name).exists()), None)
    if held is not None:
        raise VlagentError(f"{folder} already holds a run ({held}); give --trace a new folder")


def load_steps(folder: str | Path) -> list[Step]:
    path = Path(folder) / "steps.jsonl"
    steps = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            steps.append(Step.model_validate_json(line))
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
