"""Shared by the flow tests and benchmarks/bench_flow_cache.py: flow task files for the real form app
(sandbox/apps/form.py, fixed or seeded layout) and keyed scripted replies that solve them, computed
from the app's own widget boxes (--dump-layout)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from functools import lru_cache
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
SCREEN = (1280, 800)
ALLOW = {"actions": ["left_click", "type", "key", "scroll", "wait", "terminate"],
         "keys": ["tab", "enter", "ctrl+a", "backspace", "end"], "max_text_len": 200}


def reply(**arguments) -> str:
    return f'<tool_call>{json.dumps({"name": "computer_use", "arguments": arguments})}</tool_call>'


def verdict(passed: bool, reason: str = "as seen on the screen") -> str:
    return json.dumps({"pass": passed, "reason": reason})


def app_args(seed: int | None = None, restyle: bool = False) -> list[str]:
    """The form's options for a layout seed (None: fixed) and its restyled version (--restyle)."""
    return (["--layout-seed", str(seed)] if seed is not None else []) + (["--restyle"] if restyle else [])


@lru_cache(maxsize=None)
def layout(seed: int | None = None, restyle: bool = False) -> dict[str, list[int]]:
    """The form's widget boxes [x, y, w, h] in screen pixels, for a layout seed (None: fixed)."""
    from sandbox.display import Xvfb

    out = Path(os.environ.get("TMPDIR", "/tmp")) / f"vlagent-layout-{os.getpid()}-{seed}-{restyle}.json"
    out.unlink(missing_ok=True)
    args = [sys.executable, "-m", "sandbox.apps.form", "--out", os.devnull, "--dump-layout", str(out),
            *app_args(seed, restyle)]
    with Xvfb(SCREEN) as x:
        app = subprocess.Popen(args, env={**os.environ, "DISPLAY": x.display}, cwd=ROOT)
        try:
            deadline = time.monotonic() + 20
            while not (out.exists() and out.stat().st_size) and time.monotonic() < deadline:
                time.sleep(0.1)
            boxes = json.loads(out.read_text())
        finally:
            app.terminate()
            app.wait(10)
    out.unlink(missing_ok=True)
    return boxes


def at(widget: str, seed: int | None = None, restyle: bool = False) -> list[int]:
    """The centre of a widget in Qwen's 0..1000 coordinates."""
    x, y, w, h = layout(seed, restyle)[widget]
    return [round((x + w / 2) / SCREEN[0] * 1000), round((y + h / 2) / SCREEN[1] * 1000)]


def click(widget: str, seed: int | None = None, restyle: bool = False) -> str:
    return reply(action="left_click", coordinate=at(widget, seed, restyle))


DONE = reply(action="terminate", status="success")

# The standard test flow: two acts, two grounded clicks (4 cacheable steps, 8 model calls cold).
NAME_ACT = 'Type "Ada Lovelace" into the Name field'
EMAIL_ACT = 'Type "ada@example.com" into the Email field'
PRO = "the Pro plan option"
SUBMIT = "the Submit button"
STEPS = [{"act": NAME_ACT}, {"act": EMAIL_ACT}, {"left_click": {"target": PRO}}, {"left_click": {"target": SUBMIT}}]
SAVED = {"file_json": {"path": "{workdir}/form.json",
                       "equals": {"name": "Ada Lovelace", "email": "ada@example.com", "plan": "Pro"}}}


def replies(seed: int | None = None, restyle: bool = False) -> dict[str, list[str]]:
    """Keyed replies that solve STEPS on the layout of `seed` (once each)."""
    return {
        NAME_ACT: [click("name", seed, restyle), reply(action="type", text="Ada Lovelace"), DONE],
        EMAIL_ACT: [click("email", seed, restyle), reply(action="type", text="ada@example.com"), DONE],
        PRO: [click("plan_pro", seed, restyle)],
        SUBMIT: [click("submit", seed, restyle)],
    }


def form_task(folder: Path, steps: list[dict], *, seed: int | None = None, restyle: bool = False,
              name: str = "flow", success: list[dict] | None = None, **extra) -> Path:
    """A flow task file in `folder` that launches the form (with --layout-seed, --restyle when given)."""
    launch = ["{python}", "-m", "sandbox.apps.form", "--out", "{workdir}/form.json", *app_args(seed, restyle)]
    task = {"name": name, "screen": {"width": SCREEN[0], "height": SCREEN[1]},
            "setup": [{"launch": launch, "wait_for_window": "Registration"}],
            "timeout_s": 120, "allow": ALLOW, "steps": steps,
            "success": [SAVED] if success is None else success, **extra}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(task, sort_keys=False), encoding="utf-8")
    return path


def script(folder: Path, mapping: dict[str, list[str]] | list[str], name: str = "replies.yaml") -> str:
    path = folder / name
    path.write_text(yaml.safe_dump(mapping, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return f"script:{path}"
