"""The action drawn over the screenshot the model saw: an SVG in the frame's own pixels, laid over
the <img> by CSS, so it stays sharp at any zoom and costs no image re-encoding."""
from __future__ import annotations

import json
from html import escape

from actions.coords import to_pixels
from actions.schema import to_json

CLICK_COUNT = {"left_click": 1, "right_click": 1, "middle_click": 1, "double_click": 2, "triple_click": 3}
COLOR = {"left_click": "#ff3b6b", "right_click": "#ff9f1a", "middle_click": "#b84dff", "double_click": "#ff3b6b",
         "triple_click": "#ff3b6b", "mouse_move": "#2ec4ff", "left_click_drag": "#19d3a2", "scroll": "#2ec4ff",
         "hscroll": "#2ec4ff", "type": "#ffd23f", "key": "#ffd23f"}
CAPTION_CHARS = 80  # longer typed text is cut in the overlay (the full text is beside it)
CHAR_W = 0.56  # average glyph width / font size, to size a caption's background


def action_label(action, redact=lambda s: s) -> str:
    """One line saying what the action does, e.g. `left_click at (500, 320)` or `type "Ada"`."""
    action = to_json(action)
    kind = action.get("action", "?")
    at = f" at ({_n(action['coordinate'][0])}, {_n(action['coordinate'][1])})" if action.get("coordinate") else ""
    match kind:
        case "type":
            return f"type {json.dumps(redact(action.get('text', '')), ensure_ascii=False)}"
        case "key":
            return "key " + " + ".join(action.get("keys", []))
        case "scroll" | "hscroll":
            return f"{kind} {action.get('pixels')} px{at}"
        case "wait":
            return f"wait {action.get('time')} s"
        case "terminate":
            return f"terminate ({action.get('status')})"
        case "answer":
            return f"answer {json.dumps(redact(action.get('text', '')), ensure_ascii=False)}"
        case "left_click_drag":
            start = action.get("start_coordinate")
            frm = f" from ({_n(start[0])}, {_n(start[1])})" if start else ""
            return f"drag{frm} to ({_n(action['coordinate'][0])}, {_n(action['coordinate'][1])})"
    return f"{kind}{at}"


def _n(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def _caption(text: str, x: float, y: float, fs: float, w: int, color: str) -> str:
    """A dark rounded box with light text, kept inside the frame."""
    text = text if len(text) <= CAPTION_CHARS else text[: CAPTION_CHARS - 1] + "…"
    bw, bh = len(text) * fs * CHAR_W + fs, fs * 1.6
    x = min(max(x, 2), max(w - bw - 2, 2))
    return (f'<g class="cap"><rect x="{x:.0f}" y="{y:.0f}" width="{bw:.0f}" height="{bh:.0f}" rx="{fs * 0.3:.0f}" '
            f'fill="rgba(20,22,30,.85)" stroke="{color}" stroke-width="{fs * 0.08:.1f}"/>'
            f'<text x="{x + fs * 0.5:.0f}" y="{y + fs * 1.15:.0f}" font-size="{fs:.0f}" fill="#fff">{escape(text)}</text></g>')


def _point(action: dict, key: str, frame, fallback):
    if action.get(key) is not None:
        return to_pixels(tuple(action[key]), frame)
    return tuple(fallback) if fallback else None


def overlay_svg(step, redact=lambda s: s, rejected: bool = False) -> str:
    """The SVG for one step, or "" when there is nothing to draw (no action or unknown frame).
    `rejected`: the action was refused and never ran; drawn faded and dashed."""
    if not step.action or not step.frame:
        return ""
    a, (w, h) = to_json(step.action), step.frame
    kind = a.get("action", "")
    color = COLOR.get(kind, "#9aa4ff")
    r = max(w, h) / 70  # marker radius, in frame pixels
    fs = max(w, h) / 60  # caption font size
    sw = r / 4  # stroke width
    parts = []
    p = _point(a, "coordinate", (w, h), step.pixel)
    if kind in CLICK_COUNT and p:
        x, y = p
        for i in range(CLICK_COUNT[kind]):
            parts.append(f'<circle cx="{x}" cy="{y}" r="{r * (1 + 0.55 * i):.1f}" fill="none" stroke="{color}" stroke-width="{sw:.1f}"/>')
        parts.append(f'<circle cx="{x}" cy="{y}" r="{sw * 1.2:.1f}" fill="{color}"/>')
        parts.append(f'<path d="M{x - 2.2 * r:.0f} {y}h{1.2 * r:.0f}M{x + r:.0f} {y}h{1.2 * r:.0f}M{x} {y - 2.2 * r:.0f}v{1.2 * r:.0f}M{x} {y + r:.0f}v{1.2 * r:.0f}" '
                     f'stroke="{color}" stroke-width="{sw / 1.5:.1f}"/>')
        parts.append(_caption(action_label(a), x + 2.5 * r, y - 0.8 * fs, fs, w, color))
    elif kind == "mouse_move" and p:
        x, y = p
        parts.append(f'<circle cx="{x}" cy="{y}" r="{r:.1f}" fill="none" stroke="{color}" stroke-width="{sw:.1f}" stroke-dasharray="{sw * 2:.1f}"/>')
        parts.append(_caption(action_label(a), x + 2 * r, y - 0.8 * fs, fs, w, color))
    elif kind == "left_click_drag" and p:
        s = _point(a, "start_coordinate", (w, h), step.start_pixel)
        if s:
            parts.append(f'<line x1="{s[0]}" y1="{s[1]}" x2="{p[0]}" y2="{p[1]}" stroke="{color}" stroke-width="{sw:.1f}" marker-end="url(#arrow-{step.step})"/>')
            parts.append(f'<circle cx="{s[0]}" cy="{s[1]}" r="{r * 0.6:.1f}" fill="none" stroke="{color}" stroke-width="{sw:.1f}"/>')
        parts.append(f'<circle cx="{p[0]}" cy="{p[1]}" r="{r * 0.6:.1f}" fill="{color}"/>')
        parts.append(_caption(action_label(a), p[0] + 2 * r, p[1] - 0.8 * fs, fs, w, color))
    elif kind in ("scroll", "hscroll"):
        x, y = p or (w // 2, h // 2)
        px = a.get("pixels", 0)
        # pixels > 0: up (scroll) or right (hscroll)
        dx, dy = ((1 if px > 0 else -1) * 3 * r, 0) if kind == "hscroll" else (0, (-1 if px > 0 else 1) * 3 * r)
        parts.append(f'<line x1="{x}" y1="{y}" x2="{x + dx:.0f}" y2="{y + dy:.0f}" stroke="{color}" stroke-width="{sw * 1.5:.1f}" marker-end="url(#arrow-{step.step})"/>')
        parts.append(_caption(action_label(a), x + 2 * r, y + r, fs, w, color))
    elif kind == "type":
        text = "⌨ " + redact(a.get("text", ""))
        if step.pixel:
            x, y = step.pixel
            parts.append(f'<circle cx="{x}" cy="{y}" r="{sw * 1.5:.1f}" fill="{color}"/>')
        parts.append(_caption(text, fs, h - 2.4 * fs, fs * 1.2, w, color))
    elif kind == "key":
        parts.append(_caption("⌨ " + " + ".join(a.get("keys", [])), fs, h - 2.4 * fs, fs * 1.2, w, color))
    else:  # wait, terminate, answer
        parts.append(_caption(action_label(a, redact), fs, fs, fs * 1.2, w, color))
    marker = (f'<defs><marker id="arrow-{step.step}" viewBox="0 0 10 10" refX="8" refY="5" markerWidth="4" markerHeight="4" orient="auto-start-reverse">'
              f'<path d="M0 0L10 5L0 10z" fill="{color}"/></marker></defs>')
    if rejected:
        parts = [f'<g opacity="0.75" stroke-dasharray="{sw * 2:.1f} {sw:.1f}">{"".join(parts)}</g>']
    return (f'<svg class="overlay{" rejected" if rejected else ""}" viewBox="0 0 {w} {h}" preserveAspectRatio="none" font-family="DejaVu Sans, sans-serif" '
            f'aria-label="{escape(action_label(a, redact))}">{marker}{"".join(parts)}</svg>')
