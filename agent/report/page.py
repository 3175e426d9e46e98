"""One trace as one HTML page: the step timeline with the screenshot the model saw and its action
drawn on it, the raw reply, errors, timings, record/replay's target evidence, the final screen,
the checks and the run's console output. Secrets are redacted on the way in (Redactor)."""
from __future__ import annotations

import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from html import escape
from pathlib import Path
from string import Template

import yaml

from agent.report.draw import action_label, overlay_svg
from agent.trace import Result, Step, load_result

ASSETS = Path(__file__).with_name("assets")
SECRET_ENV = re.compile(r"(?i)(pass(word|wd)?|secret|token|api_?key|credential|private)")
SECRET_ENV_PREFIX = "VLAGENT_SECRET_"  # how record/replay pass secrets in
MIN_DECLARED_CHARS = 3  # a declared secret shorter than this would blank out ordinary letters
MIN_GUESSED_CHARS = 8  # a variable that only looks secret (FOO_TOKEN=true) must not blank out "true"
REDACTED = "••••••"
MAX_EVIDENCE_B64 = 200_000  # larger embedded images are left out of the page
LOG_TAIL_CHARS = 6000  # the end of a run's console output, shown on its page
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")  # colour codes from rich in a child's log


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


# ---------------------------------------------------------------- reading traces


def read_steps(folder: Path) -> list[Step]:
    """Leniently: a run killed mid-write may leave a torn last line."""
    steps = []
    try:
        lines = (folder / "steps.jsonl").read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return steps
    for line in lines:
        try:
            steps.append(Step.model_validate_json(line))
        except ValueError:
            continue
    return steps


class Redactor:
    """Replaces secret values with dots: those the task declares (`secrets:`, VLAGENT_SECRET_*),
    and, to be safe, long values of any variable whose name looks secret."""

    def __init__(self, task_text: str):
        declared = {k for k in os.environ if k.startswith(SECRET_ENV_PREFIX)}
        try:
            task = yaml.safe_load(task_text) or {}
            declared |= {str(v) for v in (task.get("secrets") or {}).values()}
        except (yaml.YAMLError, AttributeError):
            pass
        values = {os.environ[n] for n in declared if len(os.environ.get(n, "")) >= MIN_DECLARED_CHARS}
        values |= {v for k, v in os.environ.items() if SECRET_ENV.search(k) and len(v) >= MIN_GUESSED_CHARS}
        self.values = sorted(values, key=len, reverse=True)  # longest first: no partial leftovers

    def __call__(self, text: str | None) -> str:
        text = text or ""
        for v in self.values:
            text = text.replace(v, REDACTED)
        return text


# ---------------------------------------------------------------- rendering

def _page(title: str, body: str, root: str) -> str:
    tpl = Template((ASSETS / "page.html").read_text(encoding="utf-8"))
    return tpl.substitute(title=escape(title), body=body, root=root)


def _badge(status: str) -> str:
    return f'<span class="badge s-{escape(status.replace(" ", "_"))}">{escape(status)}</span>'


def _ms(v: float) -> str:
    return f"{v / 1000:.2f} s" if v >= 1000 else f"{v:.0f} ms"


def _timings(step: Step) -> str:
    parts = [(k.removesuffix("_ms"), v) for k, v in step.timings.items() if k.endswith("_ms") and k != "step_ms"]
    total = step.timings.get("step_ms") or sum(v for _, v in parts) or 1.0
    bar = "".join(f'<span class="t-{escape(k)}" style="width:{max(v / total * 100, 0.5):.1f}%" title="{escape(k)} {_ms(v)}"></span>'
                  for k, v in parts)
    chips = " · ".join(f"{escape(k)} {_ms(v)}" for k, v in parts)
    head = f"step {_ms(step.timings['step_ms'])}: " if "step_ms" in step.timings else ""
    return f'<div class="timing"><div class="tbar">{bar}</div><div class="tlabel">{head}{chips}</div></div>'


def _copy_screen(trace: Path, rel: str | None, dest: Path, slug: str) -> str | None:
    """Copy a screenshot into the report; its path relative to the tasks/ folder."""
    if not rel or not (trace / rel).is_file():
        return None
    target = dest / slug / Path(rel).name
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(trace / rel, target)
    return f"{slug}/{Path(rel).name}"


def _intended(step: Step):
    """What a rejected reply asked for, when it parsed: drawn too, marked as rejected."""
    if step.action is not None or not step.raw:
        return None
    from actions.parse import ParseError, parse_action

    try:
        return parse_action(step.raw)
    except ParseError:
        return None


def _target_html(target: dict, redact: Redactor) -> str:
    """Record/replay's evidence for re-finding a target: its image patches shown as images, the
    rest as JSON (the base64 blobs would only be noise)."""
    images: list[tuple[str, str]] = []

    def strip(value, path: str):
        if isinstance(value, dict):
            if isinstance(value.get("png"), str) and len(value["png"]) < MAX_EVIDENCE_B64:
                images.append((path or "patch", value["png"]))
            return {k: ("<image>" if k == "png" else strip(v, f"{path}.{k}".lstrip("."))) for k, v in value.items()}
        if isinstance(value, list):
            return [strip(v, f"{path}[{i}]") for i, v in enumerate(value)]
        return value

    rest = strip(target, "")
    figs = "".join(f'<figure><img src="data:image/png;base64,{escape(b64)}" alt="{escape(label)}">'
                   f'<figcaption>{escape(label)}</figcaption></figure>' for label, b64 in images)
    return (f'<details class="raw target"><summary>target evidence</summary><div class="evidence">{figs}</div>'
            f"<pre>{escape(redact(json.dumps(rest, ensure_ascii=False)))}</pre></details>")


def _step_card(step: Step, img: str | None, redact: Redactor, after: str | None = None) -> str:
    """One step; `after` is the next screen (the next step's, or the final one), for before/after."""
    intended = _intended(step)
    if intended is not None:
        step = step.model_copy(update={"action": intended})
    label = (action_label(step.action, redact) + (" (rejected)" if intended else "")) if step.action else "rejected reply"
    kind = "rejected" if intended else step.kind
    src = {"model": "", "human": '<span class="src">recorded</span>', "replay": '<span class="src">replay</span>'}[step.source]
    toggle = ('<div class="ba"><button class="on" data-show="before">before</button>'
              '<button data-show="after">after</button></div>' if img and after else "")
    shot = (f'{toggle}<figure class="shot" data-before="{escape(img)}" data-after="{escape(after or "")}">'
            f'<img src="{escape(img)}" loading="lazy" alt="step {step.step} screen">'
            f'{overlay_svg(step, redact, rejected=intended is not None)}</figure>' if img else '<div class="shot none">no screenshot</div>')
    error = f'<div class="error">{escape(redact(step.error))}</div>' if step.error else ""
    raw = (f'<details class="raw" open><summary>model reply</summary><pre>{escape(redact(step.raw))}</pre></details>'
           if step.raw is not None else "")
    where = f'<div class="where">pointer at px {step.pixel[0]}, {step.pixel[1]}</div>' if step.pixel else ""
    target = _target_html(step.target, redact) if step.target else ""
    cls = "step err" if step.error else "step"
    return f"""<section class="{cls}" id="step-{step.step}" data-kind="{escape(kind)}">
<div class="shotcol">{shot}</div>
<div class="info"><h3><span class="num">{step.step}</span> <span class="kind k-{escape(kind)}">{escape(kind)}</span> {src}</h3>
<div class="label">{escape(label)}</div>{where}{error}{raw}{target}{_timings(step)}</div>
</section>"""


def _checks(result: Result | None, redact: Redactor) -> str:
    if result is None or not result.checks:
        return '<p class="muted">No success checks recorded.</p>'
    rows = "".join(f'<li class="{"pass" if c.passed else "fail"}"><span class="mark">{"✓" if c.passed else "✗"}</span> '
                   f'<code>{escape(redact(c.check))}</code> <span class="muted">{escape(redact(c.detail))}</span></li>'
                   for c in result.checks)
    return f'<ul class="checks">{rows}</ul>'


def _log_tail(log: Path | None, redact: Redactor) -> str:
    if log is None:
        return ""
    try:
        text = Path(log).read_text(encoding="utf-8", errors="replace")[-LOG_TAIL_CHARS:]
    except OSError:
        return ""
    text = ANSI.sub("", text)
    return (f'<details class="taskyaml"><summary>output of the run ({escape(Path(log).name)})</summary>'
            f'<pre>{escape(redact(text)) or "(empty)"}</pre></details>')


def render_trace(trace: Path, out: Path, slug: str, name: str | None = None, log: Path | None = None) -> Entry:
    task_text = (trace / "task.yaml").read_text(encoding="utf-8", errors="replace") if (trace / "task.yaml").is_file() else ""
    redact = Redactor(task_text)
    try:
        result = load_result(trace)
    except (OSError, ValueError):
        result = None
    task = {}
    try:
        task = yaml.safe_load(task_text) or {}
    except yaml.YAMLError:
        pass
    name = name or (result.task if result and result.task else None) or task.get("name") or trace.name
    steps = read_steps(trace)
    tasks_dir = out / "tasks"
    cards, strip = [], []
    imgs = [_copy_screen(trace, st.screenshot, tasks_dir, slug) for st in steps]
    final_rel = result.final_screenshot if result else None
    final = _copy_screen(trace, final_rel or "screens/final.png", tasks_dir, slug)
    for i, (st, img) in enumerate(zip(steps, imgs)):
        cards.append(_step_card(st, img, redact, after=imgs[i + 1] if i + 1 < len(imgs) else final))
        kind = st.kind
        thumb = f'<img src="{escape(img)}" loading="lazy" alt="">' if img else ""
        strip.append(f'<a href="#step-{st.step}" class="{"err" if st.error else ""}" title="{escape(kind)}">{thumb}'
                     f'<span>{st.step} · {escape(kind)}</span></a>')
    final_thumb = f'<img src="{escape(final)}" loading="lazy" alt="">' if final else ""
    status = result.status if result else "no result"
    reason = redact(result.reason) if result else "the trace has no result.json"
    final_html = (f'<figure class="shot final"><img src="{escape(final)}" alt="final screen"></figure>' if final
                  else '<p class="muted">No final screen.</p>')
    meta = []
    if result:
        meta += [f"{len(steps)} steps", f"{result.duration_s:.1f} s"] + ([f"model <code>{escape(result.model)}</code>"] if result.model else [])
        if result.started:
            meta.append(time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(result.started)))
    answer = f'<p><b>Answer:</b> {escape(redact(result.answer))}</p>' if result and result.answer else ""
    body = f"""<header class="top"><a href="../index.html" class="back">← all tasks</a>
<h1>{escape(name)} {_badge(status)}</h1>
<p class="goal">{escape(redact(str(task.get("goal", ""))))}</p>
<p class="reason">{escape(reason)}</p><p class="meta">{" · ".join(meta)}</p></header>
<nav class="strip">{"".join(strip)}<a href="#final">{final_thumb}<span>final</span></a></nav>
<main>
<h2>Steps</h2>
<div class="controls"><label><input type="checkbox" id="ov" checked> overlays</label>
<label><input type="checkbox" id="errs"> only errors</label><span class="muted">keys: j / k step, o overlays</span></div>
{"".join(cards) or '<p class="muted">No steps were recorded.</p>'}
<section id="final" class="final-sec"><h2>Final screen and checks</h2>
<div class="finalgrid"><div>{final_html}</div><div>{answer}{_checks(result, redact)}</div></div></section>
<details class="taskyaml"><summary>task.yaml</summary><pre>{escape(redact(task_text))}</pre></details>
{_log_tail(log, redact)}
<p class="muted small">Trace: <code>{escape(str(trace))}</code></p>
</main>"""
    (tasks_dir / f"{slug}.html").write_text(_page(f"{name} · vlagent", body, "../"), encoding="utf-8")
    thumb = f"tasks/{final}" if final else (f"tasks/{slug}/{Path(steps[-1].screenshot).name}" if steps and steps[-1].screenshot and (tasks_dir / slug / Path(steps[-1].screenshot).name).exists() else None)
    return Entry(name, slug, status, reason, len(steps), result.duration_s if result else 0.0,
                 result.model if result else "", f"tasks/{slug}.html", thumb, str(trace))
