"""Grounding samples in the ScreenSpot family's layout: an instruction, a screenshot, a target box.

Read from a local folder:
- ScreenSpot-v2: `screenspot_{desktop,mobile,web}_v2.json` (bbox [x, y, w, h], `data_type` text|icon)
  beside an image folder (`screenspotv2_image/` or `images/`);
- ScreenSpot-Pro and the sets built in its format (OSWorld-G and MMBench-GUI as MAI-UI ships them):
  `annotations/*.json` (bbox [x1, y1, x2, y2], `ui_type`, `platform`, `application`) and `images/`;
- vlagent's own sets (examples/grounding_set): `samples.json`, the Pro layout with `bbox_format`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from agent.errors import VlagentError

IMAGE_DIRS = ("images", "screenspotv2_image", "screenspot_imgs", "imgs", ".")


@dataclass(frozen=True)
class Sample:
    image: Path
    instruction: str
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in the screenshot's pixels
    platform: str = "unknown"  # desktop, web, mobile, or the OS (ScreenSpot-Pro)
    kind: str = "unknown"  # the element type: text, icon, or the accessibility role
    source: str = ""  # the application or page

    @property
    def tree(self) -> Path:
        """The screenshot's accessibility tree, where the set has one (`trees/<image>.json`, the
        shipped set): what `vlagent eval grounding --marks` numbers."""
        return self.image.parent.parent / "trees" / f"{self.image.stem}.json"

    def nodes(self) -> list:
        from sandbox.atspi import Node

        if not self.tree.is_file():
            raise VlagentError(f"--marks needs the screenshot's accessibility tree: no {self.tree}")
        try:
            data = json.loads(self.tree.read_text(encoding="utf-8"))
            return [Node(**{**d, "states": tuple(d["states"]), "box": tuple(d["box"])}) for d in data]
        except (OSError, ValueError, TypeError, KeyError) as e:
            raise VlagentError(f"{self.tree}: not an accessibility tree ({e})") from None

    def hit(self, px: tuple[float, float]) -> bool:
        x1, y1, x2, y2 = self.box
        return x1 <= px[0] <= x2 and y1 <= px[1] <= y2


def _box(entry: dict, xywh: bool) -> tuple[float, float, float, float]:
    b = [float(v) for v in entry["bbox"]]
    if len(b) != 4:
        raise ValueError("bbox needs 4 numbers")
    fmt = entry.get("bbox_format", "xywh" if xywh else "xyxy")
    return (b[0], b[1], b[0] + b[2], b[1] + b[3]) if fmt == "xywh" else tuple(b)


def _image(root: Path, name: str) -> Path:
    for d in IMAGE_DIRS:
        p = root / d / name
        if p.is_file():
            return p
    raise VlagentError(f"image {name} not found under {root} (looked in {', '.join(IMAGE_DIRS)})")


def _files(root: Path) -> list[tuple[Path, bool]]:
    """(annotation file, bbox is [x, y, w, h])."""
    if (root / "samples.json").is_file():
        return [(root / "samples.json", False)]
    v2 = sorted(root.glob("screenspot_*_v2.json")) or sorted(root.glob("*/screenspot_*_v2.json"))
    if v2:
        return [(p, True) for p in v2]
    pro = sorted((root / "annotations").glob("*.json"))
    if pro:
        return [(p, False) for p in pro]
    loose = sorted(root.glob("*.json"))
    if loose:
        return [(p, False) for p in loose]
    raise VlagentError(f"{root}: no grounding annotations (samples.json, screenspot_*_v2.json or annotations/*.json)")


def load(folder: str | Path, limit: int | None = None) -> list[Sample]:
    root = Path(folder)
    if not root.is_dir():
        raise VlagentError(f"no such dataset folder: {root}")
    samples: list[Sample] = []
    for path, xywh in _files(root):
        try:
            entries = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise VlagentError(f"{path}: cannot read ({e})") from None
        if isinstance(entries, dict):
            entries = entries.get("samples", [])
        platform = path.stem.removeprefix("screenspot_").removesuffix("_v2") if xywh else None
        for i, e in enumerate(entries):
            try:
                samples.append(Sample(
                    image=_image(path.parent if path.parent != root / "annotations" else root, e["img_filename"]),
                    instruction=str(e["instruction"]).strip(),
                    box=_box(e, xywh),
                    platform=str(e.get("platform") or platform or "unknown"),
                    kind=str(e.get("ui_type") or e.get("data_type") or e.get("kind") or "unknown"),
                    source=str(e.get("application") or e.get("data_source") or e.get("source") or "")))
            except (KeyError, ValueError, TypeError) as err:
                raise VlagentError(f"{path}: entry {i} is not a grounding sample ({err})") from None
            if limit is not None and len(samples) >= limit:
                return samples
    return samples
