"""What a recorded target is, and finding it again: every kind of evidence a desktop offers, each
recorded at record time (a person's recording and an agent's trace alike), and a finder that says
which one decided and how strongly.

Evidence of a target (Step.target), from agent.targets.locate plus:
  a11y      the accessibility element under the point (sandbox.atspi): role, name, app, window,
            labels around it, place, which of its look-alikes
  own_text  the target's own text, read by OCR on a magnified crop of it (a button's "OK", a key's "5")
The recorded screenshot itself (Step.screenshot) says whether the screen changed.

Finding, in order of trust:
  1. same screen   the window around the point looks as recorded: the recorded point, by definition
                   (a featureless target, an empty text area, needs nothing else); or the same
                   window, moved or on another screen, with its content as recorded: the point with it
  2. a11y          the same element in the app's current tree (given a second to appear there);
                   ambiguity is an error
  3. pixels        the template finder (gray levels, then edge maps for another theme), every
                   candidate checked: its own text must read the same, its element (where there is a
                   tree) must have the recorded role, and it must clearly beat a different runner-up
                   (or the text must point at one of two look-alikes)
  4. text          the own text found by OCR on magnified window crops, or else the nearest label's
                   text and the recorded offset from it, scaled with the text
A wrong click is worse than a stop: when the evidence disagrees or two places are alike, the answer
is "not found" or "ambiguous" with both places named, never a guess.
"""
from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from sandbox import atspi
from agent.targets.locate import as_windows, describe_target, label, search, window_at
from agent.targets.alike import alike_around, moved_window, same_screen

OWN_HALF = (90, 18)  # px: where the target's own text is read around the point
OWN_SCALE = 3  # magnification of that crop: small GUI text and single characters need it
TEXT_AGREES = 0.75  # fuzzy similarity of two readings of one text
PIXEL_MARGIN = 0.08  # a pixel candidate must beat a different place by this, unless its text decides
RUNNER_UP_PX = 12  # two candidates closer than this are one place
SIGNS = re.compile(r"[-+*/=<>%.,()!?#&]{1,3}")  # a key's sign is text; a radio's circle read as '™' is not
RETARGET_PX = 4  # a found point this far from the recorded one counts as retargeted


@dataclass
class Decision:
    """Where the target is now, which evidence decided and how strongly, or why it is not found."""

    pixel: tuple[int, int] | None
    method: str = ""
    score: float = 0.0
    reason: str = ""
    ambiguous: bool = False
    runner_up: tuple[int, int] | None = None
    detail: dict = field(default_factory=dict)

    @property
    def alike(self) -> bool:
        """The target's window looked as recorded (same screen, same window), as a whole."""
        return self.method in ("same screen", "same window") or bool(self.detail.get("window_alike"))

    def as_json(self, recorded=None) -> dict:
        out = {"method": self.method, "score": round(self.score, 3), "detail": self.detail}
        if self.pixel is not None:
            out["pixel"] = list(self.pixel)
        if self.runner_up is not None:
            out["runner_up"] = list(self.runner_up)
        if recorded is not None and self.pixel is not None:
            out["retargeted"] = math.dist(recorded, self.pixel) > RETARGET_PX
        return out


# ------------------------------------------------------------------------------ recording

def own_text(image: Image.Image, pixel, box=None) -> str:
    """The text of the thing at pixel: the line of words over it (or inside its element's box), read
    on a magnified crop. "" for a target without text (an empty field, an icon)."""
    from agent.ocr import ocr_words as read

    x, y = int(pixel[0]), int(pixel[1])
    if box is not None and 4 < box[2] <= 2 * OWN_HALF[0] * 2 and 4 < box[3] <= 3 * OWN_HALF[1]:
        x0, y0, x1, y1 = box[0], box[1], box[0] + box[2], box[1] + box[3]
    else:
        x0, y0, x1, y1 = x - OWN_HALF[0], y - OWN_HALF[1], x + OWN_HALF[0], y + OWN_HALF[1]
    x0, y0 = max(x0, 0), max(y0, 0)
    x1, y1 = min(x1, image.width), min(y1, image.height)
    if x1 - x0 < 4 or y1 - y0 < 4:
        return ""
    crop = image.crop((x0, y0, x1, y1))
    words = []
    for img in (readable(crop), readable(_against(crop, (x - x0, y - y0)))):
        words = [w for w in read(img, scale=OWN_SCALE, psm=7)
                 if w.conf >= 40 and re.search(r"\w", w.text) or w.conf >= 70 and SIGNS.fullmatch(w.text)]
        if words:
            break
    if box is None:  # no element: the phrase under the point (a word there, and its close neighbours)
        words = _phrase_at(words, (x - x0, y - y0), np.asarray(image.convert("L").crop((x0, y0, x1, y1))))
    return " ".join(w.text for w in sorted(words, key=lambda w: w.box[0])).strip()


def _against(crop: Image.Image, px) -> Image.Image:
    """Black text on white, judged against the colour around the point (white text on a selection's
    blue reads as mid-gray on mid-gray in plain gray levels)."""
    gray = np.asarray(crop.convert("L"), dtype=np.int16)
    y = int(min(max(px[1], 0), gray.shape[0] - 1))
    ground = np.median(gray[max(y - 2, 0):y + 3])
    return Image.fromarray(np.where(np.abs(gray - ground) > 50, 0, 255).astype(np.uint8))


def _phrase_at(words: list, px, gray: np.ndarray) -> list:
    """The word at px (within a few pixels) and the words that continue it on its line: gaps no
    wider than a letter's height, as between the words of one label. A point on the plain part of a
    row (a menu item, a list row) right of or left of its text has that text, when nothing but the
    row's own colour lies between them."""
    at = [w for w in words if w.box[0] - 8 <= px[0] <= w.box[0] + w.box[2] + 8
          and w.box[1] - 6 <= px[1] <= w.box[1] + w.box[3] + 6]
    if not at:
        row = [w for w in words if w.box[1] - 6 <= px[1] <= w.box[1] + w.box[3] + 6]
        near = min(row, key=lambda w: abs(w.box[0] + w.box[2] / 2 - px[0]), default=None)
        if near is not None:
            a, b = sorted((int(px[0]), near.box[0] + near.box[2] if near.box[0] < px[0] else near.box[0]))
            strip = gray[max(int(px[1]) - 2, 0):int(px[1]) + 3, a + 2:max(b - 2, a + 3)]
            if strip.size and strip.std() < 6:  # one plain surface from the text to the point
                at = [near]
    if not at:
        return []
    line = sorted((w for w in words if abs((w.box[1] + w.box[3] / 2) - (at[0].box[1] + at[0].box[3] / 2))
                   <= at[0].box[3] / 2), key=lambda w: w.box[0])
    k = line.index(at[0])
    lo = hi = k
    gap = lambda a, b: b.box[0] - (a.box[0] + a.box[2])  # noqa: E731
    while lo > 0 and gap(line[lo - 1], line[lo]) <= line[lo].box[3]:
        lo -= 1
    while hi < len(line) - 1 and gap(line[hi], line[hi + 1]) <= line[hi].box[3]:
        hi += 1
    return line[lo:hi + 1]


def describe(image: Image.Image, pixel, windows=(), nodes=(), ocr: bool = True, later=None,
             field_text: bool = False) -> dict:
    """Everything that identifies the thing at pixel: pixels and text (agent.targets.locate), the
    accessibility element (when the app publishes one) and the target's own text. `later()`: the tree
    read again now, for when `nodes` (read before the input) did not hold the element yet (see
    late_element). Without `field_text` (a task's allow.store_field_text) no text of an editable
    field is kept: not its content in the element, not the words OCR reads inside any editable
    field's box, not the target's own text when it is one (its role, name and labels stay)."""
    fields = [] if field_text else [n.box for n in nodes if "editable" in n.states]
    ev = describe_target(image, pixel, windows, ocr=ocr, hide=fields)
    element = atspi.describe(list(nodes), pixel) if nodes else None
    if element is not None and not _same_top_window(element, windows, pixel):
        element = None  # the tree was read before this window showed (or after it went): not evidence
    if (element is None or element["role"] in CONTAINERS) and nodes and later is not None:
        element = late_element(later, windows, pixel) or element
    in_field = any(_within(pixel, box) for box in fields)
    if element is not None:
        if not field_text and "editable" in element["states"]:
            element["text"] = ""
            in_field = True
        ev["a11y"] = element
    if ocr:
        box = element["box"] if element else None
        ev["own_text"] = "" if in_field else own_text(image, pixel, box)
    return ev


def _within(pixel, box) -> bool:
    x, y, w, h = box
    return x <= pixel[0] < x + w and y <= pixel[1] < y + h


LATE_TREE_S = 1.0  # how long a recording waits for the tree to hold the element (Chromium's page fills in late)
LATE_POLL_S = 0.2
CONTAINERS = {"document web", "document frame", "panel", "filler", "scroll pane", "section", "frame", "window",
              "internal frame", "layered pane", "viewport"}  # not a target: the page or pane around it
VOLATILE = ("focused", "checked", "selected", "pressed", "expanded", "indeterminate")


def late_element(later, windows, pixel) -> dict | None:
    """The element at pixel from the tree read again (`later()`), for an app whose tree did not hold it
    when read before the input (Chromium builds a page's tree on the first request; a dialog's widgets
    follow its window). Read after the input, its changing states (focused, checked, ...) may be the
    input's own doing: they are left out, and the element says so ("late": the effect checks that
    compare a state with the recorded one skip it)."""
    deadline = time.monotonic() + LATE_TREE_S
    while True:
        nodes = later()
        element = atspi.describe(list(nodes), pixel) if nodes else None
        if element is not None and element["role"] not in CONTAINERS and _same_top_window(element, windows, pixel):
            element["states"] = [s for s in element["states"] if s not in VOLATILE]
            element["late"] = True
            return element
        if time.monotonic() >= deadline:
            return None
        time.sleep(LATE_POLL_S)


def _same_top_window(element: dict, windows, pixel) -> bool:
    """The element's window is the topmost window on screen at the point (by title), as far as the
    window list tells: a dialog that opened a moment ago may not be in the tree yet."""
    from agent.targets.locate import title_words

    top = window_at(windows, tuple(pixel))
    if top is None or not element["window"]["name"] or element["role"] in atspi.MENU_ITEMS:
        return True  # an open menu's items: the tree had the popup already (its X window is untitled)
    a, b = title_words(top.title), title_words(element["window"]["name"])
    return a == b or (bool(a) and bool(b) and (a in b or b in a)) or atspi.similar(a, b) >= 0.6


# ------------------------------------------------------------------------------ finding

def find(ev: dict, frame: Image.Image, windows=(), nodes=(), recorded: Image.Image | None = None,
         pixels: bool = True, target: bool = True) -> Decision:
    """The target of evidence `ev` on `frame` (the current screen). `recorded`: the screenshot the
    evidence came from (for "nothing changed"); nodes: the current accessibility tree. Where there is
    a tree, the decision names the element at its point (what the click will land on). `nodes` and
    `windows` may be functions that read them: then they are read only when the screen changed.
    pixels=False: when the app has a tree but the element is not in it yet (a popup's items reach the
    tree a moment after they show), say "not found" rather than search pixels; the caller looks again.

    The recorded place (same screen, same window) counts only while the target's neighbourhood looks
    as recorded: two options that swapped places or a relabelled button leave the window alike but
    not around the target, which is then looked for by what it is (detail "window_alike" says the
    window did look alike). target=False: `ev` describes a recorded effect, not a place to act on;
    else, where there is a tree, the element at a point found otherwise must be the recorded one."""
    says = (ev.get("a11y") or {}).get("says")
    read: list = []

    def tree() -> list:  # read once, and only when needed
        if not read:
            read.append(list(nodes() if callable(nodes) else nodes))
        return read[0]

    window_alike = False
    if recorded is not None and same_screen(ev, recorded, frame):
        vouched = _vouched(ev, recorded, frame, tuple(ev["pixel"]), tree, pixels)
        if vouched is None:
            return Decision(None, "accessibility", 0.0, f"{ev['a11y']['app']!r} is not in the accessibility tree yet")
        if vouched:
            d = Decision(tuple(ev["pixel"]), "same screen", 1.0)
            if says:  # the same screen: the element recorded there
                d.detail["element"] = says
            return d
        window_alike = True
    windows = as_windows(windows() if callable(windows) else windows)
    if recorded is not None and not window_alike:
        moved = moved_window(ev, recorded, frame, windows)
        vouched = moved is not None and _vouched(ev, recorded, frame, moved, tree, pixels)
        if vouched is None:
            return Decision(None, "accessibility", 0.0, f"{ev['a11y']['app']!r} is not in the accessibility tree yet")
        if vouched:  # only the window moved
            d = Decision(moved, "same window", 1.0)
            if says:
                d.detail["element"] = says
            return d
        window_alike = moved is not None
    nodes = tree()
    d = _find(ev, frame, windows, nodes, pixels)
    if window_alike:
        d.detail["window_alike"] = True
    if d.pixel is not None and nodes:
        d.detail["element"] = there = atspi.name_at(nodes, d.pixel)
        if target and says and there is not None and there != says:
            # The tree names another widget at the point than the one recorded (a field by another
            # label that the finder took for it): not worth a click.
            return Decision(None, d.method, d.score, f"the element there is {there or 'none'}, recorded {says}",
                            detail=d.detail)
    return d


def _vouched(ev: dict, recorded: Image.Image, frame: Image.Image, point, tree, pixels: bool = True) -> bool | None:
    """The recorded place (of a window that looks as recorded) is still the target's: its
    neighbourhood looks as recorded (a caret aside); or, where something changed there (a hover, or
    options that swapped places, a relabelled button), the app's tree names the recorded element at
    the point; or, with no tree to ask, the window alike and the patch in place (same_screen) do.
    None: the app had a tree, it is not there yet (just started), and pixels=False asks to wait."""
    if alike_around(ev, recorded, frame, point):
        return True
    element = ev.get("a11y") or {}
    nodes = tree() if element.get("says") else []
    if any(n.app == element["app"] for n in nodes):
        if atspi.name_at(nodes, point) == element["says"]:
            return True
        # Another element there now (swapped options, a relabelled button, a list in another order);
        # but an open menu's items reach the tree a moment after they show: no menu item at the point
        # in the tree yet is not another one.
        here = atspi.element_at(nodes, point)
        return element["role"] in atspi.MENU_ITEMS and (here is None or here.role not in atspi.MENU_ITEMS)
    if element.get("says") and not pixels:
        return None
    # No tree to ask (a Tk app; a GTK app whose tree did not come): the window alike and the target's
    # own patch in place have to do. Pixels cannot tell a swap from what a person's recording holds
    # besides the target (a hover's highlight, a tooltip under the pointer).
    return True


def _find(ev: dict, frame: Image.Image, windows, nodes, pixels: bool = True) -> Decision:
    element = ev.get("a11y")
    if element and any(n.app == element["app"] for n in nodes):
        f = atspi.find(element, nodes)
        if f.pixel is not None:
            return Decision(f.pixel, "accessibility", f.score, detail=f.detail or {},
                            runner_up=f.runner_up.centre if f.runner_up is not None else None)
        if f.runner_up is not None:  # two elements alike: not a guess
            return Decision(None, "accessibility", f.score, f.reason, True, f.runner_up.centre,
                            detail={"first": list(f.node.centre)})
        why = f.reason
        if not pixels:
            return Decision(None, "accessibility", f.score, why)
    else:
        why = ""
    d = _by_pixels(ev, frame, windows, nodes)
    if d.pixel is not None:
        return d
    t = _by_text(ev, frame, windows, nodes)
    if d.ambiguous:  # two places look alike: the text (own, or the label's) may tell which one
        pair = [tuple(d.detail["first"]), tuple(d.runner_up)]
        near = [p for p in pair if t.pixel is not None and math.dist(p, t.pixel) <= 2 * RUNNER_UP_PX]
        if len(near) == 1:
            return Decision(near[0], f"{d.method}+{t.method}", d.score, runner_up=pair[1 - pair.index(near[0])],
                            detail={"tie_break": t.method, **t.detail})
        return d
    if t.pixel is not None or t.ambiguous:
        return t
    return Decision(None, d.method, d.score, "; ".join(r for r in (why, d.reason, t.reason) if r))


def _by_pixels(ev: dict, frame: Image.Image, windows, nodes) -> Decision:
    """The template finder, gray levels first and edge maps second; its best place is accepted only
    when everything else agrees and it clearly beats any different place."""
    reasons = []
    for edges in (False, True):
        s = search(ev, frame, windows, edges=edges, ocr=False)
        cands = sorted(s.candidates, key=lambda m: -m.score)
        if s.match is None and not cands:
            reasons.append(s.reason)
            continue
        method = "edges" if edges else "template"
        # Only the leading few are read (an OCR each): the rest cannot win anyway.
        ok = [m for m in cands[:4] if m.score >= max(0.5, cands[0].score - 0.25) and agrees(ev, frame, m.pixel, nodes)[0]]
        if not ok or (s.match is None and ok[0].score < _min_score(ev)):
            reasons.append(s.reason or f"{label(ev)}: no place where the evidence agrees")
            continue
        best = ok[0]
        _, how = agrees(ev, frame, best.pixel, nodes)
        rivals = [m for m in ok[1:] if math.dist(m.pixel, best.pixel) > RUNNER_UP_PX and not s.same_place(best, m)]
        if rivals and best.score - rivals[0].score < PIXEL_MARGIN:
            return Decision(None, method, best.score, f"{label(ev)} is ambiguous: {best.pixel} and "
                            f"{rivals[0].pixel} agree alike ({best.score:.2f} vs {rivals[0].score:.2f})",
                            True, rivals[0].pixel, detail={"first": list(best.pixel)})
        return Decision(best.pixel, f"{method}+{best.method.split('+')[-1]}", best.score,
                        runner_up=rivals[0].pixel if rivals else None,
                        detail={**best.detail, **how, "scale": best.scale})
    return Decision(None, "template", 0.0, "; ".join(dict.fromkeys(reasons)))


def _min_score(ev: dict) -> float:
    from agent.targets.locate import MIN_CONFIDENCE

    # A candidate whose own text reads as recorded needs less visual likeness (theme, font changed).
    return 0.5 if ev.get("own_text") else MIN_CONFIDENCE


def agrees(ev: dict, frame: Image.Image, pixel, nodes) -> tuple[bool, dict]:
    """Does the place look like the target to the other evidence: its element's role (where the app
    has a tree) and its own text (where it had one)?"""
    how: dict = {}
    element = ev.get("a11y")
    if element and nodes:
        here = atspi.element_at(nodes, pixel)
        if here is not None and here.app == element["app"]:
            if here.role != element["role"] or atspi.similar(here.name, element["name"]) < atspi.NAME_AGREES:
                return False, {"a11y": f"{here.role} {here.name!r}"}
            how["a11y"] = "agrees"
    want = ev.get("own_text") or ""
    if want:
        got = own_text(frame, pixel, None)
        sim = atspi.similar(want, got)
        how["own_text"] = round(sim, 3)
        if sim < TEXT_AGREES:
            return False, how
    return True, how


def _by_text(ev: dict, frame: Image.Image, windows, nodes) -> Decision:
    """Text read on magnified crops of the windows (or the screen): the target's own text, or else the
    label nearest to it, the point then placed at the recorded offset from the label (scaled as the
    label's text is: a larger font moves it). The labels around break ties; one place or an error."""
    want, method = ev.get("own_text") or "", "text"
    offset, width = (0, 0), 0
    if not want:
        named = sorted((a for a in ev.get("anchors", []) if len(re.sub(r"\W", "", a.get("text", ""))) >= 2),
                       key=lambda a: math.hypot(*a["offset"]))
        if not named:
            return Decision(None, "text", 0.0, "")
        want, method, offset, width = named[0]["text"], "label", named[0]["offset"], named[0]["size"][0] - 10
    places = []
    for box in _read(want, frame, windows):
        s = min(max((box[2] - box[0]) / width, 0.5), 2.5) if width > 4 else 1.0
        places.append((round((box[0] + box[2]) / 2 - offset[0] * s), round((box[1] + box[3]) / 2 - offset[1] * s)))
    distinct: list = []  # overlapping windows read one place twice
    for p in places:
        if all(math.dist(p, q) > RUNNER_UP_PX for q in distinct):
            distinct.append(p)
    places = [p for p in distinct if 0 <= p[0] < frame.width and 0 <= p[1] < frame.height
              and agrees({**ev, "own_text": ""}, frame, p, nodes)[0]]
    if not places:
        return Decision(None, method, 0.0, f"{want!r} not read on screen")
    if len(places) > 1:
        scored = sorted(((_labels_agree(ev, frame, p), p) for p in places), reverse=True)
        if scored[0][0] - scored[1][0] < 0.34:
            return Decision(None, method, 0.0, f"{want!r} is ambiguous: read at {scored[0][1]} and {scored[1][1]}",
                            True, scored[1][1], detail={"first": list(scored[0][1])})
        places = [scored[0][1]]
    return Decision(places[0], method, 0.7, detail={method: want})


def _read(want: str, frame: Image.Image, windows) -> list[tuple[int, int, int, int]]:
    """Boxes (x0, y0, x1, y1) where `want` is read (fuzzily), window by window."""
    regions = [(w.x, w.y, w.x + w.w, w.y + w.h) for w in windows] or [(0, 0, frame.width, frame.height)]
    n, boxes = len(want.split()), []
    for x0, y0, x1, y1 in regions:
        x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, frame.width), min(y1, frame.height)
        if x1 - x0 < 8 or y1 - y0 < 8:
            continue
        words = ocr_words_scaled(frame.crop((x0, y0, x1, y1)))
        for i in range(len(words)):
            group = words[i:i + n]
            if atspi.similar(want, " ".join(w[0] for w in group)) >= TEXT_AGREES:
                boxes.append((min(w[1][0] for w in group) + x0, min(w[1][1] for w in group) + y0,
                              max(w[1][0] + w[1][2] for w in group) + x0, max(w[1][1] + w[1][3] for w in group) + y0))
    return boxes


def ocr_words_scaled(image: Image.Image) -> list:
    """Words on a crop magnified 2x (small GUI text), in the crop's pixels."""
    from agent.ocr import ocr_words as read

    return [(w.text, w.box) for w in read(readable(image), scale=2) if w.conf >= 50 and w.text.strip()]


def readable(image: Image.Image) -> Image.Image:
    """Dark text on a light ground, as tesseract reads best: a dark theme's crop is inverted, and
    long straight lines (a button's or a field's border) are painted over: they hide the text."""
    import cv2

    gray = np.asarray(image.convert("L"))
    if gray.mean() < 110:
        gray = 255 - gray
    ground = int(np.median(gray))
    ink = (gray < ground - 40).astype(np.uint8)
    lines = cv2.morphologyEx(ink, cv2.MORPH_OPEN, np.ones((1, 25), np.uint8)) | \
        cv2.morphologyEx(ink, cv2.MORPH_OPEN, np.ones((max(min(gray.shape[0] - 4, 25), 12), 1), np.uint8))
    out = gray.copy()
    out[cv2.dilate(lines, np.ones((3, 3), np.uint8)) > 0] = ground
    return Image.fromarray(out)


def _labels_agree(ev: dict, frame: Image.Image, pixel) -> float:
    """Share of the recorded labels (anchor texts) found again in their direction from pixel."""
    named = [a for a in ev.get("anchors", []) if a.get("text")]
    if not named:
        return 0.0
    hits = 0
    for a in named:
        dx, dy = a["offset"]
        cx, cy = pixel[0] + dx, pixel[1] + dy
        box = (max(int(cx - 120), 0), max(int(cy - 20), 0), min(int(cx + 120), frame.width), min(int(cy + 20), frame.height))
        if box[2] - box[0] < 8 or box[3] - box[1] < 8:
            continue
        text = " ".join(t for t, _ in ocr_words_scaled(frame.crop(box)))
        hits += atspi.similar(a["text"], text) >= TEXT_AGREES or a["text"].lower() in text.lower()
    return hits / len(named)


def timed_find(*args, **kwargs) -> tuple[Decision, float]:
    t0 = time.perf_counter()
    d = find(*args, **kwargs)
    return d, (time.perf_counter() - t0) * 1e3


class StepTargets:
    """Target evidence for an agent run's steps, as a recording has it: the tree is walked (by its
    reader process) while the model looks at the frame, the windows are read just before the action
    lands, and the OCR runs on a thread while the screen settles. The walk costs ~10 ms for a dialog
    but ~0.2-0.5 s for a web page, which would otherwise delay every pointer action.

        targets = StepTargets(display)
        targets.look()                                            # the frame was just captured
        pending = targets.before(frame, step.pixel_of(action))   # just before executing
        step.target = pending.result()                            # after, when the step is written
    """

    def __init__(self, display: str, field_text: bool = False):
        from concurrent.futures import ThreadPoolExecutor

        self.display = display
        self.field_text = field_text  # keep editable fields' text in the evidence (allow.store_field_text)
        self.tree = atspi.Tree(display)
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="targets")
        self._ticket: int | None = None
        self._nodes: list | None = None

    def look(self, nodes: list | None = None) -> None:
        """Start walking the tree of the frame just captured (the screen is still: the model is
        deciding what to do with it), or take `nodes`, that tree read already (--marks)."""
        self._nodes = nodes
        self._ticket = self.tree.prefetch() if nodes is None else None

    def before(self, frame: Image.Image, pixels: list[tuple[int, int]]):
        """A future of the evidence for `pixels` (the point, and a drag's start) or None."""
        from sandbox.errors import SandboxError
        from sandbox.windows import list_windows

        if not pixels:
            return None
        try:
            windows = list_windows(self.display)
        except SandboxError:
            windows = []
        ticket, self._ticket = self._ticket, None
        nodes, self._nodes = self._nodes, None
        if nodes is None:
            nodes = self.tree.take(ticket) if ticket is not None else self.tree.nodes()

        def work() -> dict:
            ev = describe(frame, pixels[0], windows, nodes, later=self.tree.nodes, field_text=self.field_text)
            if len(pixels) > 1:
                ev["start"] = describe(frame, pixels[1], windows, nodes, later=self.tree.nodes, field_text=self.field_text)
            return ev

        return self.pool.submit(work)

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        self.tree.close()


def pointer_pixels(action, size: tuple[int, int]) -> list[tuple[int, int]]:
    """Frame pixels an action points at: its coordinate, then a drag's start."""
    from actions.coords import to_pixels

    keys = ("coordinate", "start_coordinate")
    return [to_pixels(tuple(getattr(action, k)), size) for k in keys if getattr(action, k, None) is not None]


EDITABLE = {"text", "entry", "password text", "spin button", "document text"}
CHECKABLE = {"check box", "radio button"}


def missing_effect(ev: dict | None, nodes: list, pixel) -> str | None:
    """What a click on the recorded element should have done and did not, read on the tree after it:
    a field takes the focus, a check box changes, a radio button gets checked. None when it did (or
    when the tree cannot tell: no element recorded, or another element there now, as after a popup)."""
    element = (ev or {}).get("a11y")
    if not element or not nodes or pixel is None:
        return None
    here = atspi.element_at(nodes, pixel)
    if here is None or here.role != element["role"] or here.app != element["app"]:
        return None
    what = f"the {element['role']} {element['name'] or atspi.name_at(nodes, pixel)!r}"
    if element["role"] in EDITABLE and "editable" in element["states"] and "focused" not in here.states:
        return f"{what} was clicked but did not take the keyboard focus"
    if element["role"] == "check box" and not element.get("late") and \
            ("checked" in here.states) == ("checked" in element["states"]):
        return f"{what} was clicked but did not change"
    if element["role"] == "radio button" and "checked" not in here.states:
        return f"{what} was clicked but is not checked"
    return None


def effect_in_tree(target: dict | None, action, nodes: list, pixel) -> tuple[bool | None, str]:
    """What the tree says of an action's effect, read after it: (True, how) when it shows (a clicked
    field took the focus, a check box changed, a radio button got checked, the typed text is in the
    focused field), (False, what is missing) when it does not, (None, "") when the tree cannot tell
    (no tree, a push button, another element at the point now)."""
    if not nodes:
        return None, ""
    kind = action.action
    if kind == "type":
        field = next((n for n in nodes if "focused" in n.states and "editable" in n.states), None)
        if field is None or field.role == "password text" or len(field.text) >= 200:
            return None, ""
        typed = action.text.replace("\n", "")
        if typed and typed in field.text:
            return True, f"the focused {field.role} holds {typed!r}"
        # (what the field holds instead is not quoted: a message lands in traces and reports)
        return False, f"the focused {field.role} does not hold the typed {typed!r}"
    element = (target or {}).get("a11y")
    if kind not in ("left_click", "double_click") or not element or pixel is None:
        return None, ""
    missing = missing_effect(target, nodes, pixel)
    if missing is not None:
        return False, missing
    here = atspi.element_at(nodes, pixel)
    if here is None or here.role != element["role"] or here.app != element["app"]:
        return None, ""
    what = f"the {element['role']} {element['name'] or atspi.name_at(nodes, pixel)!r}"
    if element["role"] in EDITABLE and "editable" in element["states"]:
        return True, f"{what} took the focus"
    if element["role"] in CHECKABLE:
        return True, f"{what} changed as recorded"
    return None, ""
