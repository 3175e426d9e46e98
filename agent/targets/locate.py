"""Target evidence for record/replay: what identifies the thing a pointer action hit, and how to
find it again on a screen where the window moved, widgets moved or the screen size changed.

Evidence (a JSON-able dict, stored as Step.target):
  patch    a small grayscale image around the point (where the point sits inside it)
  context  a larger image around the point (survives a moved window, not moved widgets)
  anchors  small distinctive blobs near the point (labels, usually), with their offsets; they
           survive moved widgets as long as a label stays near its field
  text     the OCR words at and near the point (for messages and the OCR fallback)
  window   the title of the window under the point and the point's place in it
  screen   the point relative to the screen

Finding (agent.targets.locate.search): the patch is matched on a 1/3-size screen across a few scales
(another DPI); the context and the anchors, matched at the winning scale, propose more places;
each place is refined at full resolution, then scored: patch similarity, plus its neighbourhood
(anchors where they were, or the whole context when it is intact), plus, weakly, its place in the
window of the same title. The best place wins above MIN_CONFIDENCE; two different places that
score alike are refused as ambiguous. OCR of the whole screen runs only as a fallback (one
tesseract call costs more than the whole template search).
"""
from __future__ import annotations

import base64
import io
import math
import re
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
from PIL import Image

from agent import trust
from sandbox.windows import Window, list_windows  # noqa: F401  (the one window lister)

EVIDENCE_VERSION = 1
PATCH_HALVES = ((56, 24), (72, 30))  # px: the smallest patch around the point that shows
PATCH_HALF = PATCH_HALVES[0]         # some structure (small, since neighbours move)
CONTEXT_HALF = (160, 60)  # px: 320x120, usually holds the field's label too
ANCHOR_REGION_HALF = (360, 100)  # px: where anchors are looked for around the point
MAX_ANCHORS = 4
FALLBACK_ANCHORS = 2  # when nothing shares the target's row or column, the nearest others
ROW_BAND_PX = 24  # an anchor whose centre is this close vertically shares the target's row
COLUMN_BAND_PX, ABOVE_PX = 60, 64  # a label right above its field
ANCHOR_MIN_PX, ANCHOR_MAX_PX = (8, 6), (160, 40)  # (w, h) of a useful anchor blob
MIN_TEMPLATE_STD = 4.0  # gray levels: a flatter patch matches everywhere, use the context instead
COARSE = 3  # downscale factor of the whole-screen searches (cost falls with its square)
SCALES = (1.0, 0.8, 1.25, 0.67, 1.5, 2.0)  # template scales tried (screen DPI differs)
GOOD_MATCH = 0.92  # a coarse score this high at one scale: skip the other scales
SAME_SCALE = 0.8  # a score this high at scale 1 means the DPI did not change: skip the others
INTACT_CONTEXT = 0.97  # the whole neighbourhood matches this well: no need for anchors
CONTEXT_SLACK_PX = 12  # the point may sit this far from where the context puts it
PEAKS_PER_SCALE = 6
MAX_CANDIDATES = 8
MIN_PEAK = 0.45  # coarse peaks below this are not candidates
MIN_CONFIDENCE = 0.62  # below this a target counts as not found
AMBIGUOUS_MARGIN = 0.03  # two places this close in confidence: refuse to guess ...
PLATEAU_DROP = 0.08  # ... unless the patch matches all the way between them (one plain field)
ANCHOR_PEAKS = 6  # places each anchor may match (labels repeat)
ANCHOR_PROPOSALS = 2  # of which the best propose where the target is
ANCHOR_ROW_PX, ANCHOR_COLUMN_PX = 200.0, 30.0  # offsets at which an anchor's weight halves
ANCHOR_TOL_PX = 25.0  # drift at which an anchor's agreement falls to 1/e ...
ANCHOR_TOL_FRACTION = 0.35  # ... plus this share of its offset on that axis (a label left of its
                            # field may drift sideways when columns widen, hardly up or down)
W_PATCH, W_NEIGHBOUR, W_WINDOW = 0.55, 0.35, 0.10
OCR_FALLBACK_SCORE = 0.7
DESKTOP_EDGE_SHARE = 0.6  # the screen's edge is this much one colour: a plain desktop
MIN_OCR_CONF = 60.0  # tesseract's confidence (0..100) below which a word is noise
NEAR_PENALTY_PER_PX = 0.0005  # score given up per px of distance, to break ties on plain fields


@dataclass
class Match:
    pixel: tuple[int, int]
    score: float  # confidence 0..1
    method: str  # "template", "template+context", "template+anchors", "ocr"
    scale: float = 1.0
    detail: dict[str, float] = field(default_factory=dict)


@dataclass
class Search:
    """The outcome of a search: the match, or why there is none (one line)."""

    match: Match | None
    reason: str = ""
    candidates: list[Match] = field(default_factory=list)
    same_place: Any = None  # (Match, Match) -> bool: one place (one plain field), not two targets


# ---------------------------------------------------------------- images in evidence

def _gray(image) -> np.ndarray:
    if isinstance(image, np.ndarray):
        return image if image.ndim == 2 else np.asarray(Image.fromarray(image).convert("L"))
    return np.asarray(image.convert("L"))


def _encode(a: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG", optimize=True)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def decode_patch(s: str) -> np.ndarray:
    return np.asarray(trust.decode_image(base64.b64decode(s)).convert("L"))  # bounded pixels (agent.trust)


def _crop(gray: np.ndarray, pixel: tuple[int, int], half: tuple[int, int]) -> tuple[np.ndarray, list[int]]:
    """A crop centred on pixel (clipped at the screen edge) and where pixel sits in it."""
    h, w = gray.shape
    x0, y0 = max(pixel[0] - half[0], 0), max(pixel[1] - half[1], 0)
    x1, y1 = min(pixel[0] + half[0], w), min(pixel[1] + half[1], h)
    return np.ascontiguousarray(gray[y0:y1, x0:x1]), [pixel[0] - x0, pixel[1] - y0]


# ---------------------------------------------------------------- windows

def as_windows(windows) -> list[Window]:
    out = []
    for w in windows or []:
        out.append(w if isinstance(w, Window) else
                   Window(0, w["title"], w["x"], w["y"], w["width"], w["height"], w.get("cls", "")))
    return out


def estimate_window(image, pixel: Sequence[int]) -> Window | None:
    """The window under `pixel` guessed from a screenshot alone (agent traces keep no window
    list): the region around it that is not the plain desktop colour. None when the screen
    edge is not one plain colour (a wallpaper, a maximised window): then nothing is clipped."""
    import cv2

    gray = _gray(image)
    edge = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    values, counts = np.unique(edge, return_counts=True)
    if counts.max() < DESKTOP_EDGE_SHARE * edge.size:
        return None
    desktop = values[counts.argmax()]
    # Text inside a window may share the desktop's colour: close small holes before labelling.
    solid = cv2.morphologyEx((gray != desktop).astype(np.uint8), cv2.MORPH_CLOSE, np.ones((9, 9), np.uint8))
    _, labels, stats, _ = cv2.connectedComponentsWithStats(solid, connectivity=4)
    k = labels[int(pixel[1]), int(pixel[0])]
    if k == 0 or not solid[int(pixel[1]), int(pixel[0])]:
        return None
    x, y, w, h, _ = (int(v) for v in stats[k])
    return Window(0, "", x, y, w, h)


def window_at(windows, pixel: tuple[int, int]) -> Window | None:
    """The topmost window under pixel (the list is bottom first)."""
    hits = [w for w in as_windows(windows) if w.contains(*pixel)]
    return hits[-1] if hits else None


# ---------------------------------------------------------------- OCR

def ocr_words(image) -> list[tuple[str, tuple[int, int, int, int]]]:
    """(text, (x, y, w, h)) of each word tesseract reads with confidence (agent.ocr)."""
    from agent.ocr import ocr_words as read

    return [(w.text, tuple(w.box)) for w in read(image) if re.search(r"\w", w.text) and w.conf >= MIN_OCR_CONF]


def _norm_text(s: str) -> str:
    return re.sub(r"[^\w]", "", s).lower()


# ---------------------------------------------------------------- describing a target

def _blobs(gray: np.ndarray) -> list[tuple[int, int, int, int]]:
    """Word-like blobs (x, y, w, h): strong local contrast, letters merged into words."""
    import cv2

    grad = cv2.morphologyEx(gray, cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8))
    _, mask = cv2.threshold(grad, 60, 255, cv2.THRESH_BINARY)
    # Drop long straight edges (field and button borders) so a label does not merge into its field.
    lines = cv2.morphologyEx(mask, cv2.MORPH_OPEN, np.ones((1, 25), np.uint8)) | \
        cv2.morphologyEx(mask, cv2.MORPH_OPEN, np.ones((25, 1), np.uint8))
    mask = cv2.subtract(mask, cv2.dilate(lines, np.ones((3, 3), np.uint8)))
    mask = cv2.dilate(mask, np.ones((3, 7), np.uint8))  # merge the letters of a word
    n, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    out = []
    for x, y, w, h, _area in stats[1:n]:
        if ANCHOR_MIN_PX[0] <= w <= ANCHOR_MAX_PX[0] and ANCHOR_MIN_PX[1] <= h <= ANCHOR_MAX_PX[1]:
            out.append((int(x), int(y), int(w), int(h)))
    return out


def describe_target(image, pixel: Sequence[int], windows=(), ocr: bool = True, hide=()) -> dict[str, Any]:
    """Evidence that re-finds the thing at `pixel` of `image` (a screenshot) later.

    `windows` (Window objects or dicts with title, x, y, width, height; bottom first) lets the
    evidence keep to the window under the point: what lies outside it is not part of the target,
    and the window's edge would otherwise match any other place near that edge."""
    full = _gray(image)
    h, w = full.shape
    px = (int(pixel[0]), int(pixel[1]))
    win = window_at(windows, px)
    gray, origin = full, (0, 0)
    if win is not None:  # crop to the window: the templates never hold the desktop behind it
        x0, y0 = max(win.x, 0), max(win.y, 0)
        gray, origin = full[y0:min(win.y + win.height, h), x0:min(win.x + win.width, w)], (x0, y0)
    local = (px[0] - origin[0], px[1] - origin[1])
    for half in PATCH_HALVES:  # inside a plain field: grow until the field's border shows
        patch, patch_at = _crop(gray, local, half)
        if patch.std() >= MIN_TEMPLATE_STD:
            break
    context, context_at = _crop(gray, local, CONTEXT_HALF)
    region, region_at = _crop(gray, local, ANCHOR_REGION_HALF)
    rx0, ry0 = px[0] - region_at[0], px[1] - region_at[1]

    words = []
    if ocr:
        pil = image if isinstance(image, Image.Image) else Image.fromarray(full)
        box = (rx0, ry0, rx0 + region.shape[1], ry0 + region.shape[0])
        words = [(t, (x + rx0, y + ry0, bw, bh)) for t, (x, y, bw, bh) in ocr_words(pil.crop(box))]
        # `hide`: boxes whose words are not kept (editable fields: their content is not evidence to store)
        words = [(t, b) for t, b in words if not any(_overlap((b[0] + b[2] // 2, b[1] + b[3] // 2, 1, 1), f) for f in hide)]

    anchors = []
    for bx, by, bw, bh in _blobs(region):
        ax, ay = bx + rx0, by + ry0
        cx, cy = ax + bw / 2, ay + bh / 2
        if ax - 2 <= px[0] < ax + bw + 2 and ay - 2 <= px[1] < ay + bh + 2:
            continue  # the target itself is in the patch already
        tpl = full[max(ay - 2, origin[1]):ay + bh + 2, max(ax - 2, origin[0]):ax + bw + 2]
        if tpl.std() < MIN_TEMPLATE_STD:
            continue
        text = " ".join(t for t, (x, y, ww, hh) in words if _overlap((x, y, ww, hh), (ax, ay, bw, bh)))
        anchors.append({"png": _encode(np.ascontiguousarray(tpl)), "offset": [round(cx - px[0]), round(cy - px[1])],
                        "size": [int(tpl.shape[1]), int(tpl.shape[0])], "text": text})
    # Most telling first: same row or column beats a diagonal; words beat unlabelled blobs. Only
    # those in the target's row or right above it when there are any: forms reorder their rows.
    anchors.sort(key=lambda a: -_anchor_weight(a) * (1.3 if a["text"] else 1.0))
    own = [a for a in anchors if _in_band(a)]
    anchors = own[:MAX_ANCHORS] if own else anchors[:FALLBACK_ANCHORS]

    at = [t for t, b in words if _overlap(b, (px[0] - 3, px[1] - 3, 6, 6))]
    near = sorted(words, key=lambda wd: math.hypot(wd[1][0] + wd[1][2] / 2 - px[0], wd[1][1] + wd[1][3] / 2 - px[1]))
    at_box = next((b for t, b in words if _overlap(b, (px[0] - 3, px[1] - 3, 6, 6))), None)
    ev: dict[str, Any] = {
        "version": EVIDENCE_VERSION,
        "frame": [w, h],
        "pixel": list(px),
        "patch": {"png": _encode(patch), "at": patch_at},
        "context": {"png": _encode(context), "at": context_at},
        "anchors": anchors,
        "text": {"at": " ".join(at), "near": [t for t, _ in near[:6]],
                 "at_offset": None if at_box is None else _offset(at_box, px)},
        "screen": {"rel": [px[0] / w, px[1] / h], "size": [w, h]},
        "window": None,
    }
    if win is not None:
        ev["window"] = {"title": win.title, "cls": win.cls, "offset": [px[0] - win.x, px[1] - win.y],
                        "rel": [(px[0] - win.x) / win.width, (px[1] - win.y) / win.height],
                        "size": [win.width, win.height]}
    return ev


def _offset(box, px) -> list[int]:
    """Where a box's centre is, relative to px."""
    return [round(box[0] + box[2] / 2 - px[0]), round(box[1] + box[3] / 2 - px[1])]


def _overlap(a, b) -> bool:
    return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]


def label(evidence: dict | None) -> str:
    """A short human name for a target, for messages: the text at it or its nearest label."""
    if not evidence:
        return "the target"
    text = evidence.get("text") or {}
    if text.get("at"):
        return repr(text["at"])
    named = [a["text"] for a in evidence.get("anchors", []) if a.get("text")]
    if named:
        return f"the target next to {named[0]!r}"
    return f"the target at {tuple(evidence.get('pixel', ()))}"


# ---------------------------------------------------------------- finding a target

def _resize(tpl: np.ndarray, f: float) -> np.ndarray | None:
    import cv2

    if abs(f - 1.0) < 1e-6:
        return tpl
    w, h = round(tpl.shape[1] * f), round(tpl.shape[0] * f)
    if w < 4 or h < 4:
        return None
    return cv2.resize(tpl, (w, h), interpolation=cv2.INTER_AREA if f < 1 else cv2.INTER_LINEAR)


def _match(img: np.ndarray, tpl: np.ndarray) -> np.ndarray | None:
    import cv2

    if tpl.shape[0] > img.shape[0] or tpl.shape[1] > img.shape[1]:
        return None
    r = cv2.matchTemplate(img, tpl, cv2.TM_CCOEFF_NORMED)
    return np.nan_to_num(r, copy=False, nan=0.0, posinf=0.0, neginf=0.0)  # flat spots give NaN


def _peaks(r: np.ndarray, k: int, min_score: float, sep: tuple[int, int]) -> list[tuple[float, int, int]]:
    """Up to k local maxima (score, x, y), at least `sep` apart."""
    r = r.copy()
    out = []
    for _ in range(k):
        y, x = np.unravel_index(int(np.argmax(r)), r.shape)
        v = float(r[y, x])
        if v < min_score:
            break
        out.append((v, int(x), int(y)))
        r[max(y - sep[1], 0):y + sep[1] + 1, max(x - sep[0], 0):x + sep[0] + 1] = -1.0
    return out


def _score_at(gray: np.ndarray, tpl: np.ndarray, at: Sequence[float], pixel: tuple[float, float],
              slack: int | tuple[int, int], prefer_near: bool = False) -> tuple[float, tuple[int, int]]:
    """Best NCC of tpl placed with its point `at` near `pixel` (+-slack px), and where the point
    then lands. The template is clipped to the screen, so targets near an edge still score."""
    sx, sy = (slack, slack) if isinstance(slack, int) else slack
    h, w = gray.shape
    th, tw = tpl.shape
    here = (round(pixel[0]), round(pixel[1]))
    x0, y0 = here[0] - round(at[0]), here[1] - round(at[1])
    # Clip the template to the part that can lie on screen for every shift.
    cx0, cy0 = max(0, sx - x0), max(0, sy - y0)
    cx1, cy1 = min(tw, w - x0 - sx), min(th, h - y0 - sy)
    if cx1 - cx0 < 4 or cy1 - cy0 < 4:
        return 0.0, here
    sub = tpl[cy0:cy1, cx0:cx1]
    if sub.std() < 1e-3:
        return 0.0, here
    ix0, iy0 = x0 + cx0 - sx, y0 + cy0 - sy
    img = gray[iy0:iy0 + (cy1 - cy0) + 2 * sy, ix0:ix0 + (cx1 - cx0) + 2 * sx]
    r = _match(img, sub)
    if r is None or r.size == 0:
        return 0.0, here
    if prefer_near:  # on a plateau of equal scores take the place nearest the expected one
        yy, xx = np.mgrid[0:r.shape[0], 0:r.shape[1]]
        r = r - NEAR_PENALTY_PER_PX * np.hypot(xx - sx, yy - sy)
    y, x = np.unravel_index(int(np.argmax(r)), r.shape)
    v = float(r[y, x]) + (NEAR_PENALTY_PER_PX * math.hypot(x - sx, y - sy) if prefer_near else 0.0)
    return v, (here[0] + int(x) - sx, here[1] + int(y) - sy)


def _anchor_agreement(anchor_peaks: list[tuple[dict, list[tuple[float, int, int]]]], pixel: tuple[int, int],
                      scale: float) -> float | None:
    """How well the anchors sit where they sat around the target (0..1), or None without anchors.
    anchor_peaks: each anchor with the places (score, x, y of its centre) it matched on screen."""
    total = weight = 0.0
    for a, peaks in anchor_peaks:
        ex, ey = pixel[0] + a["offset"][0] * scale, pixel[1] + a["offset"][1] * scale
        tx, ty = _anchor_tolerance(a, scale)
        agree = max((max(v, 0.0) * math.exp(-math.hypot((x - ex) / tx, (y - ey) / ty))
                     for v, x, y in peaks), default=0.0)
        wgt = _anchor_weight(a)
        total += wgt * agree
        weight += wgt
    return total / weight if weight else None


def _in_band(anchor: dict) -> bool:
    """On the target's row, or right above or below it (a label over its field)."""
    dx, dy = anchor["offset"]
    return abs(dy) <= ROW_BAND_PX or (abs(dx) <= COLUMN_BAND_PX and -ABOVE_PX <= dy < 0)


def _anchor_weight(anchor: dict) -> float:
    """How much an anchor says: a label on the target's row (or right above it) moves with it;
    a widget in another row may not (forms reorder rows)."""
    dx, dy = (abs(o) for o in anchor["offset"])
    return 1.0 / (1.0 + dx / ANCHOR_ROW_PX + dy / ANCHOR_COLUMN_PX)


def _anchor_tolerance(anchor: dict, scale: float) -> tuple[float, float]:
    return tuple((ANCHOR_TOL_PX + ANCHOR_TOL_FRACTION * abs(o)) * scale for o in anchor["offset"])


def _window_prior(ev: dict, windows: list[Window], pixel: tuple[int, int]) -> float | None:
    rec = ev.get("window")
    if not rec:
        return None
    same = [w for w in windows if window_matches(rec, w)]
    if not same:
        return None
    best = 0.0
    for w in same:
        if (w.width, w.height) == tuple(rec["size"]):
            ex, ey = w.x + rec["offset"][0], w.y + rec["offset"][1]
        else:
            ex, ey = w.x + rec["rel"][0] * w.width, w.y + rec["rel"][1] * w.height
        d = math.hypot(pixel[0] - ex, pixel[1] - ey)
        best = max(best, math.exp(-d / (0.5 * math.hypot(*rec["size"]))))
    return best


def window_matches(rec: dict, w: Window) -> bool:
    """The recorded window (a dict) is `w`: by its class where both have one, else by its title
    without per-run parts (paths, numbers, an unsaved-changes '*')."""
    if rec.get("cls") and w.cls and rec["cls"] != w.cls:
        return False
    return title_words(rec["title"]) == title_words(w.title)


def title_words(title: str) -> str:
    title = re.sub(r"(/[^\s/]+)+/?", " ", title or "")  # a document's path
    return " ".join(re.sub(r"[\W\d_]+", " ", title.lower()).split())


def _desktop_hidden(gray: np.ndarray, windows: list[Window]) -> np.ndarray:
    """The screen with the desktop behind the windows painted in the windows' commonest gray.
    Templates were cut inside a window; where a moved window now sits near the screen's edge
    or another window, the dark desktop must not spoil the match."""
    if not windows:
        return gray
    inside = np.zeros(gray.shape, bool)
    for w in windows:
        inside[max(w.y, 0):max(w.y + w.height, 0), max(w.x, 0):max(w.x + w.width, 0)] = True
    if inside.all() or not inside.any():
        return gray
    out = gray.copy()
    out[~inside] = int(np.bincount(gray[inside][::7]).argmax())
    return out


class _Finder:
    """One search: the screen at two resolutions, the decoded templates, cached match maps."""

    def __init__(self, evidence: dict, image, windows, edges: bool = False):
        import cv2

        self.ev = evidence
        self.windows = as_windows(windows)
        prep = edge_map if edges else (lambda a: a)  # edges: the same structure in any colours
        self.gray = prep(_desktop_hidden(_gray(image), self.windows))
        self.small = cv2.resize(self.gray, (self.gray.shape[1] // COARSE, self.gray.shape[0] // COARSE),
                                interpolation=cv2.INTER_AREA)
        self.patch, self.patch_at = prep(decode_patch(evidence["patch"]["png"])), evidence["patch"]["at"]
        self.context, self.context_at = prep(decode_patch(evidence["context"]["png"])), evidence["context"]["at"]
        self.flat = self.patch.std() < MIN_TEMPLATE_STD  # a patch inside a plain area says little
        self.anchors = [(prep(decode_patch(a["png"])), a) for a in evidence.get("anchors", [])]
        self.maps: dict[tuple[str, float], np.ndarray | None] = {}
        self.refined: set[tuple[float, int, int]] = set()  # coarse cells refined already

    def anchor_peaks(self, s: float) -> list[tuple[dict, list[tuple[float, int, int]]]]:
        return [(a, self.coarse_peaks(str(i), s, (t.shape[1] / 2, t.shape[0] / 2), ANCHOR_PEAKS))
                for i, (t, a) in enumerate(self.anchors)]

    def template(self, name: str) -> np.ndarray:
        tpl = {"patch": self.patch, "context": self.context}.get(name)
        return self.anchors[int(name)][0] if tpl is None else tpl

    def coarse_map(self, name: str, s: float) -> np.ndarray | None:
        key = (name, s)
        if key not in self.maps:
            tpl = self.template(name)
            small_tpl = _resize(tpl, s / COARSE)
            self.maps[key] = None if small_tpl is None else _match(self.small, small_tpl)
        return self.maps[key]

    def coarse_peaks(self, name: str, s: float, at: Sequence[float], k: int) -> list[tuple[float, int, int]]:
        """(score, x, y) of the template's point `at`, in full-resolution pixels."""
        r = self.coarse_map(name, s)
        if r is None:
            return []
        th, tw = self.template(name).shape  # peaks closer than half the template are one place
        sep = tuple(max(round(min(size, 2 * half) * s / COARSE / 2), 2) for size, half in zip((tw, th), PATCH_HALF))
        return [(v, round(x * COARSE + at[0] * s), round(y * COARSE + at[1] * s))
                for v, x, y in _peaks(r, k, MIN_PEAK, sep)]

    def proposals(self) -> list[tuple[float, tuple[int, int], int]]:
        """(scale, expected point, slack px) to refine: from the patch, the context and the anchors.
        The patch (small, cheap) picks the scale; the others are matched at that scale only."""
        out, best = [], {}
        first, first_at = ("context", self.context_at) if self.flat else ("patch", self.patch_at)
        for s in SCALES:
            peaks = self.coarse_peaks(first, s, first_at, PEAKS_PER_SCALE)
            out += [(s, (x, y), COARSE + 2) for v, x, y in peaks]
            if peaks:
                best[s] = peaks[0][0]
                if peaks[0][0] >= GOOD_MATCH or (s == 1.0 and peaks[0][0] >= SAME_SCALE):
                    break
        scale = max(best, key=best.get) if best else 1.0
        if not self.flat:
            peaks = self.coarse_peaks("context", scale, self.context_at, PEAKS_PER_SCALE)
            out += [(scale, (x, y), CONTEXT_SLACK_PX) for v, x, y in peaks]
            if peaks and peaks[0][0] >= INTACT_CONTEXT:
                return out  # the neighbourhood is intact: only the window moved
        for a, peaks in self.anchor_peaks(scale):
            for v, x, y in peaks[:ANCHOR_PROPOSALS]:
                tx, ty = _anchor_tolerance(a, scale)
                out.append((scale, (round(x - a["offset"][0] * scale), round(y - a["offset"][1] * scale)),
                            (round(2 * tx), round(2 * ty))))
        return out

    def refine(self, s: float, expected: tuple[int, int], slack) -> tuple[float, tuple[int, int]] | None:
        """The patch's best place near `expected` (+-slack px); on a plateau (a plain field) the
        nearest one. Searched on the coarse map first, so a wide slack costs nothing; None when
        this place was refined already."""
        name, at = ("context", self.context_at) if self.flat else ("patch", self.patch_at)
        r = self.coarse_map(name, s)
        tpl = _resize(self.template(name), s)
        if r is None or tpl is None:
            return 0.0, expected
        sx, sy = (slack, slack) if isinstance(slack, int) else slack
        cx, cy = round((expected[0] - at[0] * s) / COARSE), round((expected[1] - at[1] * s) / COARSE)
        rx, ry = sx // COARSE + 1, sy // COARSE + 1
        x0, y0 = max(cx - rx, 0), max(cy - ry, 0)
        sub = r[y0:max(cy + ry + 1, 0), x0:max(cx + rx + 1, 0)]
        if sub.size == 0:
            return 0.0, expected
        yy, xx = np.mgrid[y0:y0 + sub.shape[0], x0:x0 + sub.shape[1]]
        near = sub - NEAR_PENALTY_PER_PX * COARSE * np.hypot(xx - cx, yy - cy)
        by, bx = np.unravel_index(int(np.argmax(near)), near.shape)
        key = (s, x0 + int(bx), y0 + int(by))
        if key in self.refined:
            return None
        self.refined.add(key)
        guess = ((x0 + bx) * COARSE + at[0] * s, (y0 + by) * COARSE + at[1] * s)
        return _score_at(self.gray, tpl, (at[0] * s, at[1] * s), guess, COARSE + 1, prefer_near=True)

    def score(self, s: float, px: tuple[int, int], p: float) -> Match:
        if self.flat:  # the place came from the context; how does the patch itself look there?
            p = _score_at(self.gray, _resize(self.patch, s), (self.patch_at[0] * s, self.patch_at[1] * s), px, 1)[0]
        p_patch = p
        c = _score_at(self.gray, _resize(self.context, s), (self.context_at[0] * s, self.context_at[1] * s), px, 1)[0]
        a = _anchor_agreement(self.anchor_peaks(s), px, s)
        wp = _window_prior(self.ev, self.windows, px)
        # Anchors speak for the neighbourhood; the whole context only when it is intact (it can
        # match on the window's edge alone, which every layout of the window shares).
        neighbour = c if a is None else (max(a, c) if c >= INTACT_CONTEXT else a)
        conf = W_PATCH * max(p_patch, 0.0) + W_NEIGHBOUR * max(neighbour, 0.0)
        conf = conf + W_WINDOW * wp if wp is not None else conf / (W_PATCH + W_NEIGHBOUR)
        method = "template+context" if c >= (a or 0.0) else "template+anchors"
        detail = {"patch": round(p_patch, 3), "context": round(c, 3),
                  "anchors": round(a, 3) if a is not None else -1.0, "window": round(wp, 3) if wp is not None else -1.0}
        return Match(px, round(conf, 4), method, s, detail)

    def same_place(self, a: Match, b: Match) -> bool:
        """Two points on one plateau of the patch's match map (one plain field) are one target."""
        if _distance(a.pixel, b.pixel) <= min(PATCH_HALF):
            return True
        if a.scale != b.scale:
            return False
        r = self.coarse_map("context" if self.flat else "patch", a.scale)
        if r is None:
            return False
        at = self.context_at if self.flat else self.patch_at
        def coarse_score(x: float, y: float) -> float:  # the coarse grid is 1/COARSE: look around
            xi, yi = round((x - at[0] * a.scale) / COARSE), round((y - at[1] * a.scale) / COARSE)
            cell = r[max(yi - 1, 0):yi + 2, max(xi - 1, 0):xi + 2]
            return float(cell.max()) if cell.size else -1.0

        floor = min(coarse_score(*a.pixel), coarse_score(*b.pixel)) - PLATEAU_DROP
        n = max(2, round(_distance(a.pixel, b.pixel) / COARSE))
        (ax, ay), (bx, by) = a.pixel, b.pixel
        return all(coarse_score(ax + t * (bx - ax), ay + t * (by - ay)) >= floor for t in np.linspace(0.0, 1.0, n))


def edge_map(gray: np.ndarray) -> np.ndarray:
    """Where the gray level changes, however it changes: a dark theme inverts light and dark, and
    a matched edge map does not care (raw gray correlates negatively there)."""
    import cv2

    g = gray.astype(np.float32)
    mag = cv2.magnitude(cv2.Sobel(g, cv2.CV_32F, 1, 0, ksize=3), cv2.Sobel(g, cv2.CV_32F, 0, 1, ksize=3))
    # Compressed: a faint edge of a light theme and a strong one of a dark theme look alike.
    return np.clip(np.sqrt(mag) * 8.0, 0, 255).astype(np.uint8)


def search(evidence: dict, image, windows=(), edges: bool = False, ocr: bool = True) -> Search:
    """Find the evidence's target on `image`; the Search says why when it cannot. edges=True
    matches edge maps instead of gray levels (for another theme); ocr=False skips the slow
    whole-screen OCR fallback (agent.targets.evidence reads text on magnified crops instead)."""
    f = _Finder(evidence, image, windows, edges)
    cands: list[Match] = []
    places: list[tuple[float, float, tuple[int, int]]] = []  # (patch score, scale, pixel)
    for s, expected, slack in f.proposals():
        refined = f.refine(s, expected, slack)
        if refined is None:
            continue
        p, px = refined
        if p >= MIN_PEAK and not any(_distance(px, q[2]) < 3 for q in places):
            places.append((p, s, px))
    # Only the best places get the (costlier) neighbourhood score.
    places.sort(key=lambda q: q[0], reverse=True)
    cands = sorted((f.score(s, px, p) for p, s, px in places[:MAX_CANDIDATES]), key=lambda m: m.score, reverse=True)

    name = label(evidence)
    out = _search_outcome(evidence, image, f, cands, name, ocr)
    out.same_place = f.same_place
    return out


def _search_outcome(evidence: dict, image, f: "_Finder", cands: list[Match], name: str, ocr: bool) -> Search:
    if cands and cands[0].score >= MIN_CONFIDENCE:
        best = cands[0]
        for m in cands[1:]:
            if best.score - m.score < AMBIGUOUS_MARGIN and not f.same_place(best, m):
                return Search(None, f"{name} is ambiguous: {best.pixel} and {m.pixel} match equally "
                                    f"({best.score:.2f} vs {m.score:.2f})", cands)
        return Search(best, "", cands)

    # The text at the target, found by OCR of the whole screen (slow, so only as a fallback).
    ocr_match = _find_by_text(evidence, image, f.windows) if ocr else None
    if ocr_match is not None:
        return Search(ocr_match, "", cands)
    got = f"best match {cands[0].score:.2f} < {MIN_CONFIDENCE}" if cands else "no similar place on screen"
    return Search(None, f"{name} not found ({got})", cands)


def _distance(a, b) -> float:
    return math.hypot(a[0] - b[0], a[1] - b[1])


def _find_by_text(evidence: dict, image, windows: list[Window]) -> Match | None:
    text = (evidence.get("text") or {}).get("at")
    if not text:
        return None
    pil = image if isinstance(image, Image.Image) else Image.fromarray(_gray(image))
    want = _norm_text(text)
    boxes = [b for t, b in ocr_words(pil) if _norm_text(t) == want]
    if not boxes:
        return None
    off = (evidence.get("text") or {}).get("at_offset") or [0, 0]
    points = [(round(b[0] + b[2] / 2 - off[0]), round(b[1] + b[3] / 2 - off[1])) for b in boxes]
    if len(points) > 1:  # several: only the window position can tell them apart
        priors = [(_window_prior(evidence, windows, p) or 0.0, p) for p in points]
        priors.sort(reverse=True)
        if priors[0][0] - priors[1][0] < 0.1:
            return None
        points = [priors[0][1]]
    return Match(points[0], OCR_FALLBACK_SCORE, "ocr")


def find_target(evidence: dict, image, windows=()) -> Match | None:
    """The target's pixel on `image`, or None when it cannot be found with confidence."""
    return search(evidence, image, windows).match
