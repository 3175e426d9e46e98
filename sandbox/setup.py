"""A sandbox's setup steps (the `setup:` list of a task file) and the placeholders they may use."""
from __future__ import annotations

import shlex
import sys
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator


class SetupStep(BaseModel):
    """One setup step. `launch` starts a program left running (torn down with the sandbox);
    `run` runs a command to completion (must exit 0); `wait_for_window` waits for a window whose
    title matches (a regex); `sleep` waits."""

    model_config = ConfigDict(extra="forbid")

    launch: list[str] | None = None
    run: list[str] | None = None
    wait_for_window: str | None = None
    timeout_s: float = Field(20.0, gt=0, le=600)
    sleep: float | None = Field(None, ge=0, le=60)

    @model_validator(mode="after")
    def _one_thing(self):
        if not (self.launch or self.run or self.wait_for_window or self.sleep is not None):
            raise ValueError("a setup step needs launch, run, wait_for_window or sleep")
        if self.launch and self.run:
            raise ValueError("a setup step takes launch or run, not both")
        return self


def expand(value: str, workdir: Path, taskdir: Path | None = None, shell: bool = False) -> str:
    """Fill the placeholders a task may use: {python}, {workdir}, {taskdir} (the task file's folder).
    `shell`: the value is a shell command line, so each filled-in path is quoted (a folder named
    `x; rm -rf ~` stays one word)."""
    q = shlex.quote if shell else str
    value = value.replace("{python}", q(sys.executable)).replace("{workdir}", q(str(workdir)))
    return value.replace("{taskdir}", q(str(taskdir))) if taskdir is not None else value
