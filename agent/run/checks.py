"""Success checks: the real end state decides a run, never the model's own `terminate`.

`evaluate` never raises: any error becomes a failed CheckResult whose detail says why.
"""
from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any, Callable

from actions.patterns import PatternError, compile_pattern
from agent.task import Check, Task, expand, resolve_path
from agent.trace import CheckResult
from agent.trust import inside
from sandbox.procs import TAG_VAR, kill_group, sandbox_tag, spawn
from sandbox.session import clean_env

COMMAND_TIMEOUT_S = 30.0
GRACE_S = 2.0  # how long the checks at the end of a run give a late app (see evaluate)
GRACE_POLL_S = 0.25
DETAIL_CHARS = 200  # how much of a file, OCR text or stderr a failed check quotes
MAX_FILE_BYTES = 16 << 20  # a checked file larger than this is not read whole


def evaluate(task: Task, workdir: Path, desktop, grace_s: float = 0.0) -> list[CheckResult]:
    """Run every success check of `task`. `desktop` needs `.capture()` and `.display`.

    grace_s: a failed check is looked at again for this long (the end of a run: an app may set its
    title or write its file a moment after the last action, as Chromium does). Commands run once:
    running one again may not be harmless."""
    checks = task.success
    results = [_run_one(check, _Context(task, Path(workdir), desktop)) for check in checks]
    deadline = time.monotonic() + grace_s
    while any(not r.passed and c.kind != "command" for r, c in zip(results, checks)) and time.monotonic() < deadline:
        time.sleep(GRACE_POLL_S)
        ctx = _Context(task, Path(workdir), desktop)  # (a fresh screen for the OCR)
        results = [r if r.passed or c.kind == "command" else _run_one(c, ctx) for r, c in zip(results, checks)]
    return results


class _Context:
    def __init__(self, task: Task, workdir: Path, desktop):
        self.task, self.workdir, self.desktop = task, workdir, desktop
        self._screen_text: str | None = None

    def screen_text(self) -> str:
        """OCR of the current screen, once for all screen_text checks."""
        if self._screen_text is None:
            from agent.desktop.ocr import ocr_text
            self._screen_text = _normalise(ocr_text(self.desktop.capture()))
        return self._screen_text


def _run_one(check: Check, ctx: _Context) -> CheckResult:
    kind = check.kind
    value = getattr(check, kind)
    label = f"{kind}: {_describe(value)}"
    try:
        passed, detail = CHECKS[kind](value, ctx)
    except Exception as e:  # a check reports, it never ends the run
        passed, detail = False, f"{type(e).__name__}: {e}"
    return CheckResult(check=label, passed=passed, detail=_clip(detail))


def _describe(value: Any) -> str:
    if hasattr(value, "path"):
        return value.path
    return value if isinstance(value, str) else " ".join(map(str, value))


# -- the check kinds: each returns (passed, detail) ---------------------------------------------

def _file_json(spec, ctx: _Context) -> tuple[bool, str]:
    path = resolve_path(ctx.task, spec.path, ctx.workdir)
    if not path.is_file():
        return False, f"{path} does not exist"
    if path.stat().st_size > MAX_FILE_BYTES:
        return False, f"{path} is over {MAX_FILE_BYTES >> 20} MiB"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        return False, f"{path} is not valid JSON: {e}"
    except (RecursionError, ValueError) as e:  # nested too deeply, a number of 5,000 digits
        return False, f"{path} is not usable JSON: {type(e).__name__}"
    diff = _subset_diff(spec.equals, data, "")
    if diff and not inside(path, ctx.workdir):  # quote nothing of a file outside the run's folder
        diff = f"{diff.split(':')[0]}: differs (not quoted: outside the run's folder)"
    return (diff is None), (diff or "all keys match")


def _subset_diff(expected: Any, actual: Any, where: str) -> str | None:
    """None when `expected` is contained in `actual` (dicts as subsets, nested; anything
    else equal), else the first difference as one line."""
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            return f"{where or 'top level'}: expected an object, got {_short(actual)}"
        for key, value in expected.items():
            path = f"{where}.{key}" if where else str(key)
            if key not in actual:
                return f"{path}: missing"
            diff = _subset_diff(value, actual[key], path)
            if diff:
                return diff
        return None
    # bool is an int in Python: True must not equal 1 here.
    if expected != actual or isinstance(expected, bool) != isinstance(actual, bool):
        return f"{where}: expected {_short(expected)}, got {_short(actual)}"
    return None


def _file_contains(spec, ctx: _Context) -> tuple[bool, str]:
    path = resolve_path(ctx.task, spec.path, ctx.workdir)
    if not path.is_file():
        return False, f"{path} does not exist"
    with open(path, "rb") as f:
        text = f.read(MAX_FILE_BYTES).decode("utf-8", errors="replace")
    if spec.text in text:
        return True, f"found in {path}"
    shown = f"; it starts {text[:DETAIL_CHARS]!r}" if inside(path, ctx.workdir) else " (not quoted: outside the run's folder)"
    return False, f"{path} does not contain {spec.text!r}{shown}"


def _screen_text(wanted: str, ctx: _Context) -> tuple[bool, str]:
    seen = ctx.screen_text()
    if _normalise(wanted) in seen:
        return True, "found on screen"
    return False, f"not on screen; OCR read: {seen[:DETAIL_CHARS]!r}"


def _window_title(regex: str, ctx: _Context) -> tuple[bool, str]:
    from sandbox.windows import list_windows
    try:
        pattern = compile_pattern(regex)  # RE2: no pattern can hang the check
    except PatternError as e:
        return False, str(e)
    titles = [w.title for w in list_windows(ctx.desktop.display)]
    match = next((t for t in titles if pattern.search(t)), None)
    if match is not None:
        return True, f"window {match!r}"
    return False, f"no visible window matches; titles: {titles}"


def _command(cmd: list[str] | str, ctx: _Context) -> tuple[bool, str]:
    shell = isinstance(cmd, str)
    base = ctx.task.base_dir
    argv = expand(cmd, ctx.workdir, base, shell=True) if shell else [expand(a, ctx.workdir, base) for a in cmd]
    # A clean environment (no secrets, no keys) and the sandbox's tag: what it leaves behind is ended at teardown.
    env = clean_env(ctx.desktop.display or "", None, ctx.task.env, **{TAG_VAR: sandbox_tag(ctx.desktop.display or "", ctx.workdir)})
    try:  # own process group: a timeout kills the shell's children too
        proc = spawn(argv, shell=shell, cwd=ctx.task.base_dir, env=env, stdin=subprocess.DEVNULL,
                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, errors="replace")
    except OSError as e:
        return False, f"cannot run: {e.strerror}"
    try:
        out, err = proc.communicate(timeout=COMMAND_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        return False, f"did not finish in {COMMAND_TIMEOUT_S:g} s"
    finally:
        kill_group(proc, grace_s=0)  # nothing it started outlives the check
    if proc.returncode == 0:
        return True, "exit code 0"
    err = " ".join((err or out).split())
    return False, f"exit code {proc.returncode}" + (f": {err[-DETAIL_CHARS:]}" if err else "")


CHECKS: dict[str, Callable[[Any, _Context], tuple[bool, str]]] = {
    "file_json": _file_json,
    "file_contains": _file_contains,
    "screen_text": _screen_text,
    "window_title": _window_title,
    "command": _command,
}


def _normalise(text: str) -> str:
    return " ".join(text.split()).casefold()


def _short(value: Any) -> str:
    return _clip(json.dumps(value, ensure_ascii=False, default=str), 80)


def _clip(text: str, n: int = DETAIL_CHARS * 2) -> str:
    text = " ".join(text.split()) if "\n" in text else text
    return text if len(text) <= n else text[: n - 1] + "…"
