"""OCR of screenshots with the tesseract CLI: words with confidences and boxes, in any theme.

The one module that reads text off the screen: the screen_text check, replay's target evidence and
secrets masking all come here. Screens mix polarities (a dark window holding a white display box,
a light page with a dark button) and colours, and tesseract reads dark text on a light, even ground.
So a sparse read first turns the image into black ink on white (ink_image): the dark strokes and the
light ones (morphological black-hat and top-hat per colour channel: panels, boxes and gradients
vanish, text of any colour stays), each stroke kept where it stands on a ground of the other
polarity. A one-line crop (psm 7) is read as grey, turned over when its border is dark.

read_words/read_text read regions of a screen (its windows, an element's box) apart and magnified:
tesseract misses small GUI text on a whole 1280x800 frame.
One tesseract process per read, image piped in as PGM (no temp files, no PNG encoding).
"""
from __future__ import annotations

import io
import os
import shutil
import subprocess
from dataclasses import dataclass

import numpy as np
from PIL import Image

from agent.errors import VlagentError

PSM_SPARSE = 11  # "sparse text": screens are scattered labels, not paragraphs
PSM_LINE = 7  # one line of text (a button's own text, one character included)
SMALL_SIDE_PX = 400  # images whose shorter side is below this (crops) are upscaled ...
SMALL_SCALE = 2  # ... by this factor: tesseract misses text under ~10 px x-height
INK_KERNEL_PX = 25  # strokes narrower than this are ink (a 1.5x bold font's are ~10 px); panels are not
INK_GAIN = 2.5  # ink contrast stretch, at most: grey-on-grey text of a disabled key reaches black ...
INK_TARGET = 160  # ... a stroke's mean contrast (of 255) is stretched to this
BORDER_LINE_PX = 40  # a straight ink run this long is a border or a rule, not a letter: painted out ...
BORDER_UPRIGHT_PX = 22  # ... and a thin upright one this long (an "l" of GUI text is shorter) ...
THICK_PX = 3  # ... of pixels in no run this wide across (a large font's stroke, even a curved one)
MIN_REGION_PX = 8
INK_MIN = 80  # (of 255, after INK_GAIN) a stroke's pixels: what decides which ground it stands on
GROUND_DOWN, GROUND_MEDIAN = 4, 9  # the ground: a 9-pixel median on a 4x smaller image (~36 px)
LIGHT_GROUND = 128
OVERLAP = 0.3  # words of two regions covering this share of the smaller box are one word
TIMEOUT_S = 30.0
# One OpenMP thread: on small machines tesseract's threads fight each other (0.4 s vs 3 s here).
ENV = {**os.environ, "OMP_THREAD_LIMIT": "1"}
POLARITIES = ("both", "auto", "as-is")


@dataclass(frozen=True)
class Word:
    text: str
    conf: float  # 0..100
    box: tuple[int, int, int, int]  # x, y, w, h in pixels of the image given to ocr_words
    line: int = 0  # words with the same number are on one text line, numbered top-down

    @property
    def center(self) -> tuple[int, int]:
        x, y, w, h = self.box
        return x + w // 2, y + h // 2


def _tesseract() -> str:
    exe = shutil.which("tesseract")
    if exe is None:
        raise VlagentError("tesseract not found: install it (apt-get install tesseract-ocr)")
    return exe


def ocr_words(image: Image.Image, scale: int | None = None, psm: int = PSM_SPARSE,
              polarity: str = "auto") -> list[Word]:
    """Words tesseract finds in `image`, boxes in the image's own pixels.

    `scale` upscales before OCR (None: SMALL_SCALE for small images, else 1); `psm` 7 reads a crop
    as one line (a button's own text, one character included), which sparse mode misses.
    `polarity`: "both" reads dark and light text, each where it stands on its ground (ink_image: any
    theme, mixed panels, coloured text); "auto" is "both" for sparse reads and, for one line, the grey
    image turned dark-on-light by its border's brightness; "as-is" reads the grey image as given."""
    if polarity not in POLARITIES:
        raise ValueError(f"polarity must be one of {POLARITIES}")
    if scale is None:
        scale = SMALL_SCALE if min(image.size) < SMALL_SIDE_PX else 1
    if polarity == "auto":
        polarity = "both" if psm != PSM_LINE else "line"
    if polarity == "both":
        prepared = ink_image(image)
    else:
        gray = image.convert("L")
        prepared = _dark_on_light(gray) if polarity == "line" else gray
    # An ink image is dark on light throughout: tesseract's own retry of a line turned over is waste.
    return _read(_scaled(prepared, scale), psm, scale, invert=polarity != "both")


def ocr_text(image: Image.Image, scale: int | None = None) -> str:
    """All text on the image, one line per text line, top to bottom."""
    return lines_of(ocr_words(image, scale))


def read_words(image: Image.Image, regions=None, scale: int | None = None) -> list[Word]:
    """Words on a screen, in its pixels, read region by region (each window, or element boxes:
    anything with x, y, w, h, or (x, y, w, h) tuples), each magnified when small (ocr_words); words
    outside every region are not read. No regions: the whole image as one region."""
    boxes = _clip_regions(image, regions)
    words: list[Word] = []
    for x0, y0, x1, y1 in boxes:
        crop = image.crop((x0, y0, x1, y1))
        words += [Word(w.text, w.conf, (w.box[0] + x0, w.box[1] + y0, w.box[2], w.box[3]))
                  for w in ocr_words(crop, scale=scale, polarity="both")]
    return _group_lines(merge(words) if len(boxes) > 1 else words)


def read_text(image: Image.Image, regions=None, scale: int | None = None) -> str:
    """read_words as text: one line per text line, top to bottom."""
    return lines_of(read_words(image, regions, scale))


def lines_of(words: list[Word]) -> str:
    by_line: dict[int, list[Word]] = {}
    for w in words:
        by_line.setdefault(w.line, []).append(w)
    return "\n".join(
        " ".join(w.text for w in sorted(ws, key=lambda w: w.box[0])) for _, ws in sorted(by_line.items())
    )


# ------------------------------------------------------------------------------ preparing images

def ink_image(image: Image.Image) -> Image.Image:
    """`image` as black ink on white, whatever its theme: per colour channel, the strokes narrower than
    INK_KERNEL_PX darker (black-hat) or lighter (top-hat) than their surroundings, the strongest channel
    taken (red on white is ink in green and blue), contrast stretched, long straight lines (borders)
    painted out. Each stroke of dark ink is kept where it stands on a light ground, each of light ink on
    a dark ground (the ground: a median over ~36 px); the other map's strokes there are the gaps between
    letters. A white box in a dark window, a dark button on a light page: the box is gone, its text stays."""
    import cv2

    rgb = np.asarray(image.convert("RGB"))
    h, w = rgb.shape[:2]
    light = _light_ground(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY))
    k = cv2.getStructuringElement(cv2.MORPH_RECT, (INK_KERNEL_PX, INK_KERNEL_PX))
    out = np.zeros((h, w), np.uint8)
    for op, on_light in ((cv2.MORPH_BLACKHAT, True), (cv2.MORPH_TOPHAT, False)):
        raw = cv2.morphologyEx(rgb, op, k).max(axis=2)
        ink = _without_lines(cv2.convertScaleAbs(raw, alpha=INK_GAIN))
        n, labels, stats, _ = cv2.connectedComponentsWithStats((ink >= INK_MIN).astype(np.uint8), connectivity=8)
        if n <= 1:
            continue
        area = np.maximum(stats[:, cv2.CC_STAT_AREA], 1)
        share = np.bincount(labels.ravel(), weights=light.ravel(), minlength=n) / area
        keep = share > 0.5 if on_light else share < 0.5
        keep[0] = False
        # Each stroke's contrast stretched on its own: grey on grey (a disabled key) as black as black
        # on white, which stays as it is (a gain there thickens it: "ri" read as "n").
        mean = np.bincount(labels.ravel(), weights=raw.ravel(), minlength=n) / area
        gain = np.clip(INK_TARGET / np.maximum(mean, 1), 1.0, INK_GAIN)
        grown = cv2.dilate(labels.astype(np.float32), np.ones((3, 3), np.uint8)).astype(np.int32)  # (the antialiased rim)
        mask = keep[grown] & (ink > 0)
        out[mask] = np.maximum(out[mask], np.clip(raw[mask] * gain[grown[mask]], 0, 255).astype(np.uint8))
    return Image.fromarray(255 - out)


def _light_ground(gray: np.ndarray) -> np.ndarray:
    """Where the ground under each pixel is light: the median of its ~36 px around (text is a minority)."""
    import cv2

    h, w = gray.shape
    small = cv2.resize(gray, (max(w // GROUND_DOWN, 1), max(h // GROUND_DOWN, 1)), interpolation=cv2.INTER_AREA)
    k = min(GROUND_MEDIAN, (min(small.shape) - 1) // 2 * 2 + 1)
    if k >= 3:
        small = cv2.medianBlur(small, k)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_NEAREST) >= LIGHT_GROUND


def _without_lines(ink: np.ndarray) -> np.ndarray:
    """Borders painted out: straight runs BORDER_LINE_PX long, and thin upright ones BORDER_UPRIGHT_PX
    long (a field's sides; a large font's upright strokes are thicker and stay)."""
    import cv2

    strong = (ink > 100).astype(np.uint8)
    lines = np.zeros_like(strong)
    if strong.shape[1] >= BORDER_LINE_PX:
        lines |= cv2.morphologyEx(strong, cv2.MORPH_OPEN, np.ones((1, BORDER_LINE_PX), np.uint8))
    if strong.shape[0] >= BORDER_LINE_PX:
        lines |= cv2.morphologyEx(strong, cv2.MORPH_OPEN, np.ones((BORDER_LINE_PX, 1), np.uint8))
    if strong.shape[0] >= BORDER_UPRIGHT_PX:
        thin = strong & ~cv2.morphologyEx(strong, cv2.MORPH_OPEN, np.ones((1, THICK_PX), np.uint8))
        lines |= cv2.morphologyEx(thin, cv2.MORPH_OPEN, np.ones((BORDER_UPRIGHT_PX, 1), np.uint8))
    if lines.any():
        ink = ink.copy()
        ink[cv2.dilate(lines, np.ones((3, 3), np.uint8)) > 0] = 0
    return ink


def _dark_on_light(gray: Image.Image) -> Image.Image:
    """A one-line crop's ground is its border: a dark border means light text, turned over."""
    a = np.asarray(gray)
    if a.size == 0:
        return gray
    border = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])
    return Image.fromarray(255 - a) if np.median(border) < 110 else gray


def _scaled(gray: Image.Image, scale: int) -> Image.Image:
    if scale != 1:
        gray = gray.resize((gray.width * scale, gray.height * scale), Image.Resampling.LANCZOS)
    return gray


def _clip_regions(image: Image.Image, regions) -> list[tuple[int, int, int, int]]:
    if not regions:
        return [(0, 0, image.width, image.height)]
    out = []
    for r in regions:
        x, y, w, h = (r.x, r.y, r.w, r.h) if hasattr(r, "w") else r
        x0, y0, x1, y1 = max(int(x), 0), max(int(y), 0), min(int(x + w), image.width), min(int(y + h), image.height)
        if x1 - x0 >= MIN_REGION_PX and y1 - y0 >= MIN_REGION_PX and (x0, y0, x1, y1) not in out:
            out.append((x0, y0, x1, y1))
    return out


# ------------------------------------------------------------------------------ tesseract

def _read(gray: Image.Image, psm: int, scale: int, invert: bool = True) -> list[Word]:
    buf = io.BytesIO()
    gray.save(buf, format="PPM")  # PGM for mode L
    try:
        proc = subprocess.run(
            [_tesseract(), "stdin", "stdout", "--psm", str(psm), *([] if invert else ["-c", "tessedit_do_invert=0"]), "tsv"],
            input=buf.getvalue(), capture_output=True, timeout=TIMEOUT_S, env=ENV,
        )
    except subprocess.TimeoutExpired:
        raise VlagentError(f"tesseract took longer than {TIMEOUT_S:g} s") from None
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip().splitlines()
        raise VlagentError(f"tesseract failed: {err[-1] if err else f'exit code {proc.returncode}'}")
    return _parse_tsv(proc.stdout.decode("utf-8", errors="replace"), scale)


def _parse_tsv(tsv: str, scale: int) -> list[Word]:
    words = []
    for row in tsv.splitlines()[1:]:
        cols = row.split("\t")
        if len(cols) != 12 or cols[0] != "5":  # level 5 = word
            continue
        text, conf = cols[11].strip(), float(cols[10])
        if not text or conf < 0:
            continue
        x, y, w, h = (round(int(c) / scale) for c in cols[6:10])
        words.append(Word(text, conf, (x, y, w, h)))
    return _group_lines(words)


def merge(words: list[Word]) -> list[Word]:
    """Words read twice (regions that overlap: a dialog over its window) once: of words whose boxes
    overlap by OVERLAP of the smaller one, the most confident (then the longest) stays."""
    ranked = sorted(words, key=lambda w: (-w.conf, -len(w.text)))
    kept: list[Word] = []
    for w in ranked:
        if not any(_overlap(w.box, k.box) > OVERLAP for k in kept):
            kept.append(w)
    return kept


def _overlap(a, b) -> float:
    ix = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    iy = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    if ix <= 0 or iy <= 0:
        return 0.0
    return ix * iy / max(min(a[2] * a[3], b[2] * b[3]), 1)


def _group_lines(words: list[Word]) -> list[Word]:
    """Number visual lines top-down. Sparse mode puts every label in its own block, so lines
    come from geometry: a word joins a line when its vertical centre is within half a height
    of the line's first word."""
    out, line, anchor = [], -1, None
    for w in sorted(words, key=lambda w: w.box[1] + w.box[3] / 2):
        cy, h = w.box[1] + w.box[3] / 2, w.box[3]
        if anchor is None or abs(cy - anchor[0]) > max(h, anchor[1]) / 2:
            line, anchor = line + 1, (cy, h)
        out.append(Word(w.text, w.conf, w.box, line))
    return sorted(out, key=lambda w: (w.line, w.box[0]))
