"""Pages and page pieces of the console, rendered server-side by Jinja2 with autoescape (model
output, typed text and task names are text, never markup) from redacted data. Step cards and
overlays are the report's own (agent/report/templates/macros.html.j2), so a step looks the same
live, in the console's history and in a report.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import quote

from jinja2 import ChoiceLoader, Environment, FileSystemLoader, StrictUndefined

from agent import secrets

TEMPLATES = Path(__file__).with_name("templates")
STATIC = Path(__file__).with_name("static")
REPORT_TEMPLATES = Path(__file__).resolve().parents[1] / "report" / "templates"
REPORT_ASSETS = Path(__file__).resolve().parents[1] / "report" / "assets"

ENV = Environment(loader=ChoiceLoader([FileSystemLoader(TEMPLATES), FileSystemLoader(REPORT_TEMPLATES)]),
                  autoescape=True, undefined=StrictUndefined)


def render(template: str, **context) -> str:
    return ENV.get_template(template).render(**secrets.redact_data(context))


def files_url(url_id: str, rel: str | None) -> str | None:
    return f"/files?id={quote(url_id, safe='')}&f={quote(rel, safe='')}" if rel else None


def step_card(step, url_id: str) -> dict:
    """A trace Step as the report's card, its screenshot served from the run's folder."""
    from agent.report.page import card as report_card

    card = report_card(step, files_url(url_id, step.marks or step.screenshot), None)  # what the model saw
    card["decision"] = step.decision
    card["replayed"] = None  # (the report shows a replayed step beside its recording; live, the step alone)
    card["source"] = card["source"] or ""
    return card


def step_html(step: dict, url_id: str) -> str:
    from agent.trace import Step

    return render("step.html.j2", c=step_card(Step.model_validate(step), url_id))


def checks_html(checks: list[dict]) -> str:
    return render("checks.html.j2", checks=checks)


def action_of(data: dict):
    from actions.schema import ACTION_ADAPTER

    return ACTION_ADAPTER.validate_python(data)


def overlay_html(action, frame_size: tuple[int, int], step_no: int = 0) -> str:
    """The report's overlay of an action on a frame of this size, placed from its 0..1000 coordinates."""
    from agent.report.draw import overlay

    fake = SimpleNamespace(step=step_no, frame=frame_size, pixel=None, start_pixel=None, screen=None, action=action)
    o = overlay(fake)
    return render("overlay.html.j2", o=o) if o else ""


def proposal_view(p) -> dict:
    from agent.report.draw import action_label

    action = action_of(p.action)
    return {"step": p.step, "why": p.why, "action": p.action, "label": action_label(action),
            "overlay": overlay_html(action, p.frame_size, p.step), "frame": list(p.frame_size),
            "asked": p.asked}


def when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else ""


def dumps(data) -> str:
    """JSON for a <script type="application/json"> block: no `</` can end the block early."""
    return json.dumps(secrets.redact_data(data)).replace("</", "<\\/")


ENV.filters["when"] = when


def make_backend(model: str, backend: str = "auto", base_url: str | None = None):
    """A backend as `vlagent run --model --backend --base-url` makes it."""
    from agent.backends import load_backend
    from agent.errors import VlagentError

    if backend == "openai" and not base_url:
        raise VlagentError("--backend openai needs a base URL")
    return load_backend(model, backend=backend, **({"base_url": base_url} if backend == "openai" else {}))
