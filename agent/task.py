"""Task files: YAML validated by pydantic; any broken file is one line naming the file and the fault.

Loading is bounded: the file's size, its nesting, the size of what its aliases expand to (no
billion laughs), the digits of a number; a key given twice is an error, not the last one winning.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from actions.patterns import PatternError, compile_pattern
from actions.policy import Allow, MaskPlace
from agent.errors import VlagentError
from agent.secrets import declare as declare_secrets
from agent.steps import FlowStep, check_names
from sandbox.setup import SetupStep, expand  # noqa: F401 (part of the task model)

MAX_TASK_BYTES = 1 << 20
MAX_NODES = 100_000  # values in the file once its aliases are expanded
MAX_NUMBER_CHARS = 32


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


class A11y(_Strict):
    """An element of the accessibility tree (GTK, Qt, Chromium) that must be showing: every field
    given must hold. `a11y: {role: label, name: Saved}`, `{role: check box, name: Gift wrap,
    states: {checked: true}}`, `{role: entry, name: Name, text: Ada}`."""

    role: str | None = Field(None, min_length=1)  # as AT-SPI names it: label, push button, entry, ...
    name: str | None = None  # its accessible name, equal ignoring case and runs of spaces
    text: str | None = None  # its text (a field's content; else its name) contains this, ignoring case
    states: dict[str, bool] = {}  # focused, checked, selected, pressed, expanded, sensitive, editable, ...

    @model_validator(mode="after")
    def _something(self):
        if self.role is None and self.name is None and self.text is None:
            raise ValueError("an a11y check needs role, name or text")
        from sandbox.atspi import STATES

        unknown = [s for s in self.states if s not in STATES]
        if unknown:
            raise ValueError(f"unknown state {unknown[0]!r}: one of {', '.join(STATES)}")
        return self


class Check(_Strict):
    """A success check: exactly one of the fields."""

    file_json: FileJson | None = None  # the JSON file holds these keys with these values (subset)
    file_contains: FileContains | None = None  # the file exists and contains the text
    screen_text: str | None = None  # OCR of the final screen contains the text (case-insensitive)
    window_title: str | None = None  # a visible window's title matches this regex
    command: list[str] | str | None = None  # exits 0 (a list runs directly, a string in a shell)
    a11y: A11y | None = None  # an element of the accessibility tree with this role/name/text/states

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
    timeout_s: float = Field(300, gt=0, le=86_400, allow_inf_nan=False)
    allow: Allow = Allow()
    success: list[Check] = []
    secrets: dict[str, str] = {}  # placeholder name -> environment variable ({secret:NAME} in typed text)
    # The folder relative paths and setup commands resolve against ({taskdir}). Default: the task
    # file's folder; a trace's copy of the task names the original folder here.
    taskdir: str | None = None
    mask_screenshots: bool = False  # paint over secrets OCR finds in saved screenshots (agent.secrets)
    # Elements every frame hides (agent.desktop.mask); None: password fields when the model is remote.
    mask: list[MaskPlace] | None = None
    env: list[str] = []  # variables of vlagent's environment its apps, setup and checks receive (sandbox.session.clean_env)
    marks: bool = False  # number the accessibility tree's interactive elements on each frame (as `run --marks`)
    # Not part of the file: the resolved taskdir.
    base_dir: Path = Field(default=Path("."), exclude=True)

    @model_validator(mode="after")
    def _patterns_compile(self):
        """Window-title patterns run on RE2 (linear time); refuse what RE2 cannot run, at load."""
        patterns = [s.wait_for_window for s in self.setup] + [c.window_title for c in self.success]
        for p in patterns:
            if p is not None:
                compile_pattern(p)
        return self

    @model_validator(mode="after")
    def _goal_or_steps(self):
        if self.goal is None and not self.steps:
            raise ValueError("a task needs goal: (one instruction) or steps: (a flow)")
        if self.goal is not None and self.steps:
            raise ValueError("a task has either goal: (one instruction) or steps: (a flow), not both")
        if self.goal is not None and (self.before or self.after):
            raise ValueError("before: and after: belong to flows (tasks with steps:)")
        errors = check_names(self.before + self.steps + self.after)
        if errors:
            raise ValueError("; ".join(errors))
        return self


def _format_errors(path: Path, e: ValidationError) -> str:
    parts = []
    for err in e.errors(include_url=False):
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        parts.append(f"{where}: {err['msg']}")
    text = "; ".join(" ".join(p.split()) for p in parts)
    return f"{path}: invalid task: {text[:600]}"


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys and numbers too long to be meant."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else id(key_node)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"the key {str(key)[:40]!r} appears twice",
                                                        key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)

    def construct_yaml_int(self, node):
        if len(node.value) > MAX_NUMBER_CHARS:
            raise yaml.constructor.ConstructorError(None, None, f"a number of {len(node.value)} characters",
                                                    node.start_mark)
        return super().construct_yaml_int(node)


_Loader.add_constructor("tag:yaml.org,2002:int", _Loader.construct_yaml_int)


def _expanded_size(data: Any, memo: dict[int, int]) -> int:
    """How many values `data` holds once aliases are expanded (shared objects counted each time)."""
    if not isinstance(data, (dict, list)):
        return 1
    if id(data) not in memo:
        memo[id(data)] = MAX_NODES + 1  # a cycle (`&a [*a]`) counts as too big
        children = list(data.items()) if isinstance(data, dict) else [(None, v) for v in data]
        total = 1
        for k, v in children:
            total += _expanded_size(k, memo) + _expanded_size(v, memo)
            if total > MAX_NODES:
                break
        memo[id(data)] = total
    return memo[id(data)]


def _read(path: Path) -> str:
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_TASK_BYTES + 1)
    except OSError as e:
        raise VlagentError(f"cannot read task file {path}: {e.strerror}") from None
    if len(raw) > MAX_TASK_BYTES:
        raise VlagentError(f"{path}: over {MAX_TASK_BYTES >> 20} MiB; a task file is a short YAML text")
    if b"\0" in raw:
        raise VlagentError(f"{path}: a binary file, not a YAML task")
    try:
        return raw.decode("utf-8-sig")  # a BOM from a Windows editor is fine
    except UnicodeDecodeError as e:
        raise VlagentError(f"{path}: not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start})") from None


def read_yaml(path: str | Path) -> Any:
    """A YAML file (a task, a suite item) -> data, read and parsed within the task file's bounds."""
    return parse_yaml(_read(Path(path)), Path(path))


def parse_yaml(text: str, path: Path) -> Any:
    """YAML text -> data, bounded; a one-line VlagentError naming `path` for anything wrong."""
    try:
        data = yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        why = " ".join(str(getattr(e, "problem", None) or e).split())[:200]
        raise VlagentError(f"{path}: not valid YAML{where}: {why}") from None
    except RecursionError:
        raise VlagentError(f"{path}: nested too deeply") from None
    if _expanded_size(data, {}) > MAX_NODES:
        raise VlagentError(f"{path}: expands to more than {MAX_NODES:,} values (aliases nested in aliases?)")
    return data


def load_task(path: str | Path) -> Task:
    """Load and validate a task file. Raises VlagentError: one line, `field: message` parts."""
    path = Path(path)
    data = parse_yaml(_read(path), path)
    if not isinstance(data, dict):
        raise VlagentError(f"{path}: a task file must be a YAML mapping with name, goal, ...")
    try:
        task = Task.model_validate(data)
    except ValidationError as e:
        raise VlagentError(_format_errors(path, e)) from None
    except (PatternError, RecursionError, ValueError) as e:
        raise VlagentError(f"{path}: invalid task: {' '.join(str(e).split())[:300]}") from None
    here = path.resolve().parent
    base = (here / task.taskdir).resolve() if task.taskdir else here
    task.base_dir = base if base.is_dir() else here  # a trace moved to another machine: its own folder
    task.taskdir = str(task.base_dir)
    declare_secrets(task)  # from now on their values are redacted from everything written
    return task


def resolve_path(task: Task, value: str, workdir: Path) -> Path:
    """A path in a check: placeholders filled, relative paths against the task's folder."""
    p = Path(expand(value, workdir, task.base_dir))
    return p if p.is_absolute() else task.base_dir / p
