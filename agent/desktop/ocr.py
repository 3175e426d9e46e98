"""OCR of screenshots with the tesseract CLI: words with confidences and boxes.

Used by the screen_text check and by replay to re-find a target by its text. One tesseract
process per call, image piped in as PGM (no temp files, no PNG encoding).
"""
from __future__ import annotations

import io
import os
import shutil
import subprocess
from dataclasses import dataclass

from PIL import Image

from agent.errors import VlagentError

PSM_SPARSE = 11  # "sparse text": screens are scattered labels, not paragraphs
SMALL_SIDE_PX = 400  # images whose shorter side is below this (crops) are upscaled ...
SMALL_SCALE = 2  # ... by this factor: tesseract misses text under ~10 px x-height
TIMEOUT_S = 30.0
# One OpenMP thread: on small machines tesseract's threads fight each other (0.4 s vs 3 s here).
ENV = {**os.environ, "OMP_THREAD_LIMIT": "1"}


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


def ocr_words(image: Image.Image, scale: int | None = None, psm: int = PSM_SPARSE) -> list[Word]:
    """Words tesseract finds in `image`, boxes in the image's own pixels.

    `scale` upscales before OCR (None: SMALL_SCALE for small images, else 1); `psm` 7 reads a crop
    as one line (a button's own text, one character included), which sparse mode misses."""
    if scale is None:
        scale = SMALL_SCALE if min(image.size) < SMALL_SIDE_PX else 1
    gray = image.convert("L")
    if scale != 1:
        gray = gray.resize((gray.width * scale, gray.height * scale), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    gray.save(buf, format="PPM")  # PGM for mode L
    try:
        proc = subprocess.run(
            [_tesseract(), "stdin", "stdout", "--psm", str(psm), "tsv"],
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


def ocr_text(image: Image.Image, scale: int | None = None) -> str:
    """All text on the image, one line per text line, top to bottom."""
    by_line: dict[int, list[Word]] = {}
    for w in ocr_words(image, scale):
        by_line.setdefault(w.line, []).append(w)
    return "\n".join(
        " ".join(w.text for w in sorted(ws, key=lambda w: w.box[0])) for _, ws in sorted(by_line.items())
    )
