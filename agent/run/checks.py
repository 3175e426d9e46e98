"""Success checks: the real end state decides a run, never the model's own `terminate`.

`evaluate` never raises: any error becomes a failed CheckResult whose detail says why.
What is on the screen is read from the accessibility tree where the app publishes one (GTK, Qt,
Chromium), else by OCR of each window, in any theme (agent.ocr).
"""
from __future__ import annotations

import json
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
    reader = _TreeReader(getattr(desktop, "display", None))
    try:
        results = [_run_one(check, _Context(task, Path(workdir), desktop, reader)) for check in checks]
        deadline = time.monotonic() + grace_s
        while any(not r.passed and c.kind != "command" for r, c in zip(results, checks)) and time.monotonic() < deadline:
            time.sleep(GRACE_POLL_S)
            ctx = _Context(task, Path(workdir), desktop, reader)  # (a fresh screen and tree)
            results = [r if r.passed or c.kind == "command" else _run_one(c, ctx) for r, c in zip(results, checks)]
    finally:
        reader.close()
    return results


class _TreeReader:
    """The display's accessibility tree, its reader started on first use and kept for the grace polls."""

    def __init__(self, display: str | None):
        self.display, self.tree = display, None

    def nodes(self) -> list:
        if not self.display:
            return []
        if self.tree is None:
            from sandbox.atspi import Tree
            self.tree = Tree(self.display)
        return self.tree.nodes()

    def close(self) -> None:
        if self.tree is not None:
            self.tree.close()


class _Context:
    def __init__(self, task: Task, workdir: Path, desktop, reader: _TreeReader | None = None):
        self.task, self.workdir, self.desktop = task, workdir, desktop
        self.reader = reader or _TreeReader(None)
        self._screen_text: str | None = None
        self._nodes: list | None = None

    def nodes(self) -> list:
        """The accessibility tree now, once for all checks of this look ([] where there is none)."""
        if self._nodes is None:
            self._nodes = self.reader.nodes()
        return self._nodes

    def tree_text(self) -> list[tuple[str, str]]:
        """(normalised text, where) of every showing element that displays text."""
        out = []
        for n in self.nodes():
            # (every editable field: screen_text's OCR does not see them, see screen_text)
            if (n.role in SHOWN_TEXT_ROLES or "editable" in n.states) and n.box[2] > 0 and n.box[3] > 0:
                for t in {n.name, n.text} - {""}:
                    out.append((_normalise(t), f"{n.role} {n.name!r}"))
        return out

    def screen_text(self) -> str:
        """OCR of the current screen's windows (the whole screen without any), once for all
        screen_text checks."""
        if self._screen_text is None:
            from agent.ocr import read_text

            image = self.desktop.capture()
            if not self.task.allow.store_field_text:  # no field's content in a detail (tree_text matches it)
                from agent.desktop.mask import paint

                image = paint(image, [n.box for n in self.nodes() if "editable" in n.states])
            self._screen_text = _normalise(read_text(image, _windows(self.desktop, image)))
        return self._screen_text


def _windows(desktop, image) -> list:
    """The visible windows as regions to read; none (the whole screen) when they cannot be listed or
    cover less than the screen's text could be on (a desktop without windows)."""
    display = getattr(desktop, "display", None)
    if not display:
        return []
    from sandbox.windows import list_windows

    try:
        return [w for w in list_windows(display) if w.w * w.h < image.width * image.height * 0.98] or []
    except Exception:  # no X server behind a fake desktop: the whole image
        return []


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
    if hasattr(value, "states"):  # an a11y element
        return " ".join(f"{k}={v!r}" for k, v in value.model_dump(exclude_defaults=True).items())
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
    want = _normalise(wanted)
    shown = ctx.tree_text()
    hit = next((where for text, where in shown if want in text), None)
    if hit is None and want in " ".join(text for text, _ in shown):
        hit = "the elements' text"
    if hit is not None:
        return True, f"found in the accessibility tree: {hit}"
    seen = ctx.screen_text()
    if want in seen:
        return True, "found on screen"
    return False, f"not on screen; OCR read: {seen[:DETAIL_CHARS]!r}"


def _a11y(spec, ctx: _Context) -> tuple[bool, str]:
    nodes = ctx.nodes()
    if not nodes:
        return False, (f"no accessibility tree on display {ctx.desktop.display}: the app publishes none "
                       "(Tk, plain X11) or the sandbox's accessibility bus is not running")
    def label(n) -> str:
        states = ",".join(s for s in n.states if s in spec.states) if spec.states else ""
        quoted = n.text and ("editable" not in n.states or ctx.task.allow.store_field_text)  # a field's content: not kept
        return f"{n.role} {n.name!r}" + (f" text {n.text[:40]!r}" if quoted else "") + (f" [{states}]" if states else "")

    checks = [
        ("role", lambda n: spec.role is None or n.role == spec.role),
        ("name", lambda n: spec.name is None or _normalise(n.name) == _normalise(spec.name)),
        ("text", lambda n: spec.text is None or _normalise(spec.text) in _normalise(n.text or n.name)),
        ("states", lambda n: all((s in n.states) == want for s, want in spec.states.items())),
    ]
    showing = [n for n in nodes if n.box[2] > 0 and n.box[3] > 0]
    for n in showing:
        if all(ok(n) for _, ok in checks):
            return True, f"{label(n)} at {n.box[:2]}"
    # the nearest misses: all but the last failing condition hold
    for i in range(len(checks) - 1, 0, -1):
        near = [n for n in showing if all(ok(n) for _, ok in checks[:i])]
        if near:
            return False, f"no element with that {checks[i][0]}; {checks[i - 1][0]} matches: " + \
                "; ".join(label(n) for n in near[:5])
    roles = sorted({n.role for n in showing})
    return False, f"no {spec.role!r} element; roles showing: {', '.join(roles)}"


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
    "a11y": _a11y,
}
# Roles whose name or text is shown as text on the screen (a window's or a document's name is its
# title: not on the screen without a window manager; a password field's text is not shown).
SHOWN_TEXT_ROLES = {"label", "static", "heading", "paragraph", "caption", "text", "entry", "push button",
                    "toggle button", "radio button", "check box", "menu", "menu item", "check menu item",
                    "radio menu item", "link", "list item", "table cell", "status bar", "spin button",
                    "combo box", "page tab", "tool tip", "notification", "row header", "column header"}


def _normalise(text: str) -> str:
    return " ".join(text.split()).casefold()


def _short(value: Any) -> str:
    return _clip(json.dumps(value, ensure_ascii=False, default=str), 80)


def _clip(text: str, n: int = DETAIL_CHARS * 2) -> str:
    text = " ".join(text.split()) if "\n" in text else text
    return text if len(text) <= n else text[: n - 1] + "…"
