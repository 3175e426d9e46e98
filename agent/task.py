"""Task files: YAML validated by pydantic, errors shown as `field: message` lines."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from actions.policy import Allow
from agent.errors import VlagentError
from agent.flow.steps import FlowStep, check_names
from sandbox.setup import SetupStep, expand  # noqa: F401 (part of the task model)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Screen(_Strict):
    width: int = Field(1280, ge=320, le=7680)
    height: int = Field(800, ge=240, le=4320)


class FileJson(_Strict):
    path: str
    equals: dict[str, Any]


class FileContains(_Strict):
    path: str
    text: str


class Check(_Strict):
    """A success check: exactly one of the fields."""

    file_json: FileJson | None = None  # the JSON file holds these keys with these values (subset)
    file_contains: FileContains | None = None  # the file exists and contains the text
    screen_text: str | None = None  # OCR of the final screen contains the text (case-insensitive)
    window_title: str | None = None  # a visible window's title matches this regex
    command: list[str] | str | None = None  # exits 0 (a list runs directly, a string in a shell)

    @model_validator(mode="after")
    def _exactly_one(self):
        set_ = [k for k in type(self).model_fields if getattr(self, k) is not None]
        if len(set_) != 1:
            raise ValueError(f"a check needs exactly one of {', '.join(type(self).model_fields)}")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in type(self).model_fields if getattr(self, k) is not None)


class Task(_Strict):
    name: str = Field(min_length=1, pattern=r"^[\w.-]+$")
    goal: str | None = Field(None, min_length=1)
    steps: list[FlowStep] = []  # a flow (agent.flow): short steps instead of one goal
    before: list[FlowStep] = []  # flow hooks: `after` runs even when a step failed or on Ctrl-C
    after: list[FlowStep] = []
    screen: Screen = Screen()
    setup: list[SetupStep] = []
    max_steps: int = Field(20, ge=1, le=1000)
    timeout_s: float = Field(300, gt=0)
    allow: Allow = Allow()
    success: list[Check] = []
    secrets: dict[str, str] = {}  # placeholder name -> environment variable (for record/replay)
    # Not part of the file: where it came from, for relative paths and setup commands.
    base_dir: Path = Field(default=Path("."), exclude=True)

    @model_validator(mode="after")
    def _goal_or_steps(self):
        if (self.goal is None) == (not self.steps):
            raise ValueError("a task has either goal: (one instruction) or steps: (a flow), not both")
        if self.goal is not None and (self.before or self.after):
            raise ValueError("before: and after: belong to flows (tasks with steps:)")
        errors = check_names(self.before + self.steps + self.after)
        if errors:
            raise ValueError("; ".join(errors))
        return self


def _format_errors(path: Path, e: ValidationError) -> str:
    lines = []
    for err in e.errors(include_url=False):
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        lines.append(f"  {where}: {err['msg']}")
    return f"{path}: invalid task\n" + "\n".join(lines)


def load_task(path: str | Path) -> Task:
    """Load and validate a task file. Raises VlagentError with readable `field: message` lines."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise VlagentError(f"cannot read task file {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise VlagentError(f"{path}: not valid YAML{where}: {getattr(e, 'problem', e)}") from None
    if not isinstance(data, dict):
        raise VlagentError(f"{path}: a task file must be a YAML mapping with name, goal, ...")
    try:
        task = Task.model_validate(data)
    except ValidationError as e:
        raise VlagentError(_format_errors(path, e)) from None
    task.base_dir = path.resolve().parent
    return task


def resolve_path(task: Task, value: str, workdir: Path) -> Path:
    """A path in a check: placeholders filled, relative paths against the task file's folder."""
    p = Path(expand(value, workdir))
    return p if p.is_absolute() else task.base_dir / p
