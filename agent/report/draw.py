"""The action drawn over the screenshot the model saw: shapes in the frame's own pixels, which the
`overlay` macro (templates/macros.html.j2) renders as an SVG laid over the <img> by CSS, so it
stays sharp at any zoom and costs no image re-encoding.

Positions are what the step recorded: `pixel` and `start_pixel` in screen pixels, mapped onto the
frame with the step's `frame` and `screen` sizes (they differ under HiDPI and --max-pixels). A
rejected reply never ran and has no pixel: its intended action is placed from its own 0..1000
coordinates, and drawn faded and dashed.
"""
from __future__ import annotations

import json

from actions.coords import to_pixels
from actions.schema import Action

CLICK_COUNT = {"left_click": 1, "right_click": 1, "middle_click": 1, "double_click": 2, "triple_click": 3}
COLOR = {"left_click": "#ff3b6b", "right_click": "#ff9f1a", "middle_click": "#b84dff", "double_click": "#ff3b6b",
         "triple_click": "#ff3b6b", "mouse_move": "#2ec4ff", "left_click_drag": "#19d3a2", "scroll": "#2ec4ff",
         "hscroll": "#2ec4ff", "type": "#ffd23f", "key": "#ffd23f"}
OTHER_COLOR = "#9aa4ff"
CAPTION_CHARS = 80  # longer typed text is cut in the overlay (the full text is beside it)
CHAR_W = 0.56  # average glyph width / font size, to size a caption's background

Point = tuple[float, float]


def action_label(action: Action) -> str:
    """One line saying what the action does, e.g. `left_click at (500, 320)` or `type "Ada"`."""
    kind = action.action
    coord = getattr(action, "coordinate", None)
    at = f" at ({_n(coord[0])}, {_n(coord[1])})" if coord is not None else ""
    match kind:
        case "type" | "answer" | "ask_user":
            return f"{kind} {json.dumps(action.text, ensure_ascii=False)}"
        case "key":
            return "key " + " + ".join(action.keys)
        case "scroll" | "hscroll":
            return f"{kind} {action.pixels} px{at}"
        case "wait":
            return f"wait {_n(action.time)} s"
        case "terminate":
            return f"terminate ({action.status})"
        case "left_click_drag":
            start = action.start_coordinate
            frm = f" from ({_n(start[0])}, {_n(start[1])})" if start is not None else ""
            return f"drag{frm} to ({_n(coord[0])}, {_n(coord[1])})"
    return f"{kind}{at}"


def mark_label(step) -> str:
    """`mark 7 (push button 'OK') -> ` for a click the model aimed by an element mark (--marks)."""
    mark = getattr(step, "mark", None)
    return f"mark {mark['n']} ({mark['role']} {mark['name'][:40]!r}) -> " if mark else ""


def _n(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def _f(v: float, digits: int = 0) -> str:
    """An SVG number: whole pixels stay whole ("160"), the rest keep `digits` decimals."""
    return str(int(v)) if float(v).is_integer() and not digits else f"{v:.{digits}f}"


def on_frame(step, recorded, coordinate) -> Point | None:
    """Where to draw, in frame pixels: the recorded screen pixel mapped onto the frame, or, for a
    step that never ran (no pixel), the action's own 0..1000 coordinate on the frame."""
    w, h = step.frame
    if recorded is not None:
        sw, sh = step.screen or step.frame  # traces before `screen` was recorded: the same size
        return (recorded[0] * w / sw, recorded[1] * h / sh) if (sw, sh) != (w, h) else tuple(recorded)
    if coordinate is not None:
        return to_pixels(tuple(coordinate), (w, h))
    return None


def _caption(text: str, x: float, y: float, fs: float, w: int, color: str) -> dict:
    """A dark rounded box with light text, kept inside the frame."""
    text = text if len(text) <= CAPTION_CHARS else text[: CAPTION_CHARS - 1] + "…"
    bw, bh = len(text) * fs * CHAR_W + fs, fs * 1.6
    x = min(max(x, 2), max(w - bw - 2, 2))
    return {"shape": "caption", "x": f"{x:.0f}", "y": f"{y:.0f}", "w": f"{bw:.0f}", "h": f"{bh:.0f}",
            "rx": f"{fs * 0.3:.0f}", "stroke": color, "sw": f"{fs * 0.08:.1f}", "text": text,
            "tx": f"{x + fs * 0.5:.0f}", "ty": f"{y + fs * 1.15:.0f}", "fs": f"{fs:.0f}"}


def overlay(step, action: Action | None = None, rejected: bool = False) -> dict | None:
    """The shapes for one step (its own action, or `action` for a rejected reply's intent), or None
    when there is nothing to draw (no action, or the frame's size is unknown)."""
    action = action if action is not None else step.action
    if action is None or not step.frame:
        return None
    (w, h), kind = step.frame, action.action
    color = COLOR.get(kind, OTHER_COLOR)
    r, fs = max(w, h) / 70, max(w, h) / 60  # marker radius and caption font size, in frame pixels
    sw = r / 4  # stroke width
    label = mark_label(step) + action_label(action)
    p = on_frame(step, None if rejected else step.pixel, getattr(action, "coordinate", None))
    shapes: list[dict] = []

    def circle(c: Point, radius: float, fill: str = "none", dash: str | None = None) -> dict:
        return {"shape": "circle", "cx": _f(c[0]), "cy": _f(c[1]), "r": f"{radius:.1f}", "fill": fill,
                "stroke": color, "sw": f"{sw:.1f}", "dash": dash}

    def line(a: Point, b: Point, width: float) -> dict:
        return {"shape": "line", "x1": _f(a[0]), "y1": _f(a[1]), "x2": _f(b[0]), "y2": _f(b[1]),
                "stroke": color, "sw": f"{width:.1f}"}

    if kind in CLICK_COUNT and p:
        x, y = p
        shapes += [circle(p, r * (1 + 0.55 * i)) for i in range(CLICK_COUNT[kind])]
        shapes.append({**circle(p, sw * 1.2, fill=color), "stroke": "none"})
        shapes.append({"shape": "path", "stroke": color, "sw": f"{sw / 1.5:.1f}",
                       "d": f"M{x - 2.2 * r:.0f} {_f(y)}h{1.2 * r:.0f}M{x + r:.0f} {_f(y)}h{1.2 * r:.0f}"
                            f"M{_f(x)} {y - 2.2 * r:.0f}v{1.2 * r:.0f}M{_f(x)} {y + r:.0f}v{1.2 * r:.0f}"})
        shapes.append(_caption(label, x + 2.5 * r, y - 0.8 * fs, fs, w, color))
    elif kind == "mouse_move" and p:
        shapes.append(circle(p, r, dash=f"{sw * 2:.1f}"))
        shapes.append(_caption(label, p[0] + 2 * r, p[1] - 0.8 * fs, fs, w, color))
    elif kind == "left_click_drag" and p:
        s = on_frame(step, None if rejected else step.start_pixel, action.start_coordinate)
        if s:
            shapes.append({**line(s, p, sw), "arrow": True})
            shapes.append(circle(s, r * 0.6))
        shapes.append({**circle(p, r * 0.6, fill=color), "stroke": "none"})
        shapes.append(_caption(label, p[0] + 2 * r, p[1] - 0.8 * fs, fs, w, color))
    elif kind in ("scroll", "hscroll"):
        x, y = p or (w // 2, h // 2)
        # pixels > 0: up (scroll) or right (hscroll)
        sign = 1 if action.pixels > 0 else -1
        dx, dy = (sign * 3 * r, 0) if kind == "hscroll" else (0, -sign * 3 * r)
        shapes.append({**line((x, y), (round(x + dx), round(y + dy)), sw * 1.5), "arrow": True})
        shapes.append(_caption(label, x + 2 * r, y + r, fs, w, color))
    elif kind == "type":
        if p:
            shapes.append({**circle(p, sw * 1.5, fill=color), "stroke": "none"})
        shapes.append(_caption("⌨ " + action.text, fs, h - 2.4 * fs, fs * 1.2, w, color))
    elif kind == "key":
        shapes.append(_caption("⌨ " + " + ".join(action.keys), fs, h - 2.4 * fs, fs * 1.2, w, color))
    else:  # wait, terminate, answer
        shapes.append(_caption(label, fs, fs, fs * 1.2, w, color))
    return {"w": w, "h": h, "color": color, "label": label, "rejected": rejected, "shapes": shapes,
            "dash": f"{sw * 2:.1f} {sw:.1f}", "marker": f"arrow-{step.step}"}
