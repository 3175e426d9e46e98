"""One trace as one HTML page: the step timeline with the screenshot the model saw and its action
drawn on it, the raw reply, errors, timings, record/replay's target evidence, the final screen,
the checks and the run's console output.

Pages come from Jinja2 templates (templates/) with autoescape on: every value is text unless a
template says otherwise, so model output, typed text, task names and check details can never
become markup. The page is built from what the trace recorded (typed steps, their pixels and
sizes); every value is redacted (agent.secrets) before rendering: secrets become {secret:NAME}."""
from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from agent import secrets, trust
from agent.report.draw import action_label, mark_label, overlay
from agent.trace import Result, Step, load_steps

ASSETS = Path(__file__).with_name("assets")
TEMPLATES = Path(__file__).with_name("templates")
MAX_EVIDENCE_B64 = 200_000  # larger embedded images are left out of the page
BASE64 = re.compile(r"[A-Za-z0-9+/]+={0,2}")
LOG_TAIL_CHARS = 6000  # the end of a run's console output, shown on its page
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")  # colour codes from rich in a child's log
SOURCE = {"model": None, "human": "recorded", "replay": "replay"}

TEMPLATE_ENV = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=True, undefined=StrictUndefined,
                           keep_trailing_newline=True)


@dataclass
class Entry:
    """One row of the summary (and of report.json)."""

    name: str
    slug: str
    status: str
    reason: str
    steps: int
    duration_s: float
    model: str
    page: str  # relative to the report folder
    thumb: str | None  # the final (or last) screen, relative to the report folder
    trace: str


def render(template: str, **context) -> str:
    return TEMPLATE_ENV.get_template(template).render(**context)


# ---------------------------------------------------------------- secrets


def declare_secrets(task: dict) -> None:
    """The secrets the trace's task names (their values come from the environment) join those
    agent.secrets already knows (VLAGENT_SECRET_*), so that the page redacts them too."""
    names = task.get("secrets")
    if isinstance(names, dict):
        secrets.declare(SimpleNamespace(secrets={str(k): str(v) for k, v in names.items()}))


# ---------------------------------------------------------------- a step as page data


def _ms(v: float) -> str:
    return f"{v / 1000:.2f} s" if v >= 1000 else f"{v:.0f} ms"


def _timings(step: Step) -> dict:
    parts = [(k.removesuffix("_ms"), v) for k, v in step.timings.items() if k.endswith("_ms") and k != "step_ms"]
    total = step.timings.get("step_ms") or sum(v for _, v in parts) or 1.0
    return {"parts": [{"name": k, "text": _ms(v), "pct": f"{max(v / total * 100, 0.5):.1f}"} for k, v in parts],
            "total": _ms(step.timings["step_ms"]) if "step_ms" in step.timings else ""}


def _copy_screen(trace: Path, rel: str | None, dest: Path, slug: str) -> str | None:
    """Copy a screenshot into the report; its path relative to the tasks/ folder. Only files inside
    the trace folder: a trace is input, and "../../" must not copy other files into a report."""
    if not rel:
        return None
    try:  # contained, no symlink followed, bounded (agent.trust)
        data = trust.read_bytes(trace, rel, trust.MAX_IMAGE_BYTES)
    except trust.TrustError:
        return None
    name = Path(rel).name
    target = dest / slug / name
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    return f"{slug}/{name}"


DATA_FILES = ("steps.jsonl", "result.json", "task.yaml")  # what `--merge` rebuilds a page from
MAX_DATA_BYTES = 64 << 20


def _keep_data(trace: Path, dest: Path) -> None:
    """The trace's own records (redacted) next to its page: a merge rebuilds pages from these and the
    copied screenshots, never from a shard's HTML."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in DATA_FILES:
        try:
            text = trust.read_bytes(trace, name, MAX_DATA_BYTES).decode("utf-8", "replace")
        except trust.TrustError:
            continue
        (dest / name).write_text(secrets.redact(text), encoding="utf-8")


def _intended(step: Step):
    """What a rejected reply asked for, when it parsed: shown too, marked as rejected."""
    if step.action is not None or not step.raw:
        return None
    from actions.parse import ParseError, parse_action

    try:
        return parse_action(step.raw)
    except ParseError:
        return None


def _evidence(target: dict) -> dict:
    """Record/replay's evidence for re-finding a target: its image patches as images, the rest as
    JSON (the base64 blobs would only be noise)."""
    images: list[dict] = []

    def strip(value, path: str):
        if isinstance(value, dict):
            png = value.get("png")
            if isinstance(png, str) and len(png) < MAX_EVIDENCE_B64 and BASE64.fullmatch(png):
                images.append({"label": path or "patch", "b64": png})
            return {k: ("<image>" if k == "png" else strip(v, f"{path}.{k}".lstrip("."))) for k, v in value.items()}
        if isinstance(value, list):
            return [strip(v, f"{path}[{i}]") for i, v in enumerate(value)]
        return value

    rest = strip(target, "")
    return {"images": images, "json": json.dumps(rest, ensure_ascii=False)}


def _replayed(step: Step, trace: Path, dest: Path, slug: str) -> dict | None:
    """A replayed pointer step as a person checks it: the recorded and the current screen side by side
    with the recorded and the new point (as % of each image), which evidence decided, how strongly,
    and whether the target moved."""
    target = step.target or {}
    found = (target.get("found") or {}).get("coordinate")
    if step.source != "replay" or not isinstance(found, dict):
        return None

    def mark(px, size) -> dict | None:
        return {"x": 100 * px[0] / size[0], "y": 100 * px[1] / size[1]} if px and size else None

    size = step.frame or step.screen
    return {"recorded_img": _copy_screen(trace, target.get("recorded_screenshot"), dest, slug),
            "recorded": mark(target.get("pixel"), target.get("frame")), "now": mark(step.pixel, size),
            "recorded_pixel": target.get("pixel"), "pixel": step.pixel, "method": found.get("method", ""),
            "score": found.get("score"), "retargeted": bool(found.get("retargeted")),
            "element": (found.get("detail") or {}).get("element", ""), "runner_up": found.get("runner_up")}


def card(step: Step, img: str | None, after: str | None) -> dict:
    """One step; `after` is the next screen (the next step's, or the final one), for before/after."""
    intended = _intended(step)
    shown = intended if intended is not None else step.action
    label = action_label(shown) + (" (rejected)" if intended is not None else "") if shown else "rejected reply"
    label = mark_label(step) + label
    return {"step": step.step, "kind": step.kind, "source": SOURCE[step.source], "label": label,
            "img": img, "after": after, "error": step.error, "raw": step.raw, "pixel": step.pixel,
            "overlay": overlay(step, intended, rejected=intended is not None),
            "target": _evidence(step.target) if step.target else None, "timings": _timings(step),
            "decision": decision_line(step.decision)}


VERDICTS = {"approve": "approved", "correct": "corrected", "reject": "rejected", "answer": "answered",
            "unanswered": "not answered"}


def decision_line(decision: dict | None) -> str | None:
    """A person's part in an attended step (agent/ui/attend.py): "answered by page after 12 s: ...",
    "rejected by terminal after 3 s: wrong field"; None where nobody was asked."""
    if not decision:
        return None
    verdict = VERDICTS.get(decision.get("verdict"), str(decision.get("verdict")))
    took = decision.get("decided", 0) - decision.get("asked", 0)
    after = f" after {took:.0f} s" if decision.get("asked") and took >= 0 else ""
    note = decision.get("note") or ""
    return f"{verdict} by {decision.get('by', '?')}{after}" + (f": {note}" if note else "")



def _log(log: Path | None) -> dict | None:
    if log is None:
        return None
    try:
        text = Path(log).read_text(encoding="utf-8", errors="replace")[-LOG_TAIL_CHARS:]
    except OSError:
        return None
    return {"name": Path(log).name, "text": ANSI.sub("", text)}


# ---------------------------------------------------------------- the page


def render_trace(trace: Path, out: Path, slug: str, name: str | None = None, log: Path | None = None) -> Entry:
    from agent.task import parse_yaml

    try:
        task_text = trust.read_bytes(trace, "task.yaml", MAX_DATA_BYTES).decode("utf-8", "replace")
    except trust.TrustError:
        task_text = ""
    try:
        result: Result | None = Result.model_validate_json(trust.read_bytes(trace, "result.json", MAX_DATA_BYTES))
    except (trust.TrustError, ValueError):
        result = None
    try:  # bounded: size, nesting, what aliases expand to (agent.task.parse_yaml)
        task = parse_yaml(task_text, trace / "task.yaml") or {}
        task = task if isinstance(task, dict) else {}
    except Exception:  # noqa: BLE001  (any fault of an input file: the page shows no task)
        task = {}
    declare_secrets(task)
    name = str(name or (result.task if result and result.task else None) or task.get("name") or trace.name)
    steps = load_steps(trace, lenient=True)
    tasks_dir = out / "tasks"
    imgs = [_copy_screen(trace, st.screenshot, tasks_dir, slug) for st in steps]
    final = _copy_screen(trace, (result.final_screenshot if result else None) or "screens/final.png", tasks_dir, slug)
    seen = [(_copy_screen(trace, st.marks, tasks_dir, slug) if st.marks else None) or img for st, img in zip(steps, imgs)]
    cards = [card(st, shown, imgs[i + 1] if i + 1 < len(imgs) else final) for i, (st, shown) in enumerate(zip(steps, seen))]
    for st, shown in zip(steps, cards):
        shown["replayed"] = _replayed(st, trace, tasks_dir, slug)
    status = result.status if result else "no result"
    page = secrets.redact_data({
        "title": f"{name} · vlagent", "root": "../", "name": name, "status": status,
        # a flow has steps, not a goal: say how many rather than "None"
        "goal": str(task.get("goal") or (f"a flow of {len(task.get('steps') or [])} steps" if task.get("steps") else "")),
        "reason": result.reason if result else "the trace has no result.json",
        "meta": [f"{len(steps)} steps", f"{result.duration_s:.1f} s"] if result else [],
        "model": result.model if result else "",
        "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(result.started)) if result and result.started else "",
        "cards": cards, "final": final, "answer": result.answer if result else None,
        "checks": [c.model_dump() for c in result.checks] if result else [],
        "task_text": task_text, "log": _log(log), "trace": str(trace),
        # a flow's steps (agent.flow): kind, text, cache use, model calls, the model's reason, the screen it judged
        "flow": [{**f.model_dump(exclude={"screenshot"}), "value": None if f.value is None else json.dumps(f.value, ensure_ascii=False),
                  "img": _copy_screen(trace, f.screenshot, tasks_dir, slug)} for f in (result.flow if result else [])],
        "model_calls": result.model_calls if result and result.flow else None,
    })
    (tasks_dir / f"{slug}.html").write_text(render("trace.html.j2", **page), encoding="utf-8")
    _keep_data(trace, tasks_dir / slug / "data")
    last = Path(steps[-1].screenshot).name if steps and steps[-1].screenshot else None
    thumb = f"tasks/{final}" if final else (f"tasks/{slug}/{last}" if last and (tasks_dir / slug / last).exists() else None)
    return Entry(page["name"], slug, status, page["reason"], len(steps), result.duration_s if result else 0.0,
                 page["model"], f"tasks/{slug}.html", thumb, str(trace))
