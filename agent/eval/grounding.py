"""`vlagent eval grounding DATASET`: click accuracy through the path `vlagent run` takes.

Each sample is asked the way the agent loop asks: the prompt rendered by agent/run/history.py
(system prompt with the tools, the task "Click <instruction>", the screenshot), the screenshot
downscaled by the same --max-pixels, one reply decoded under the grammar of a policy that allows
only `left_click` (in the model family's own format where it has one), parsed and checked like any
reply, and the point mapped to pixels by actions.coords.to_pixels. A hit is a point inside the
target box (ScreenSpot's rule). The report gives accuracy by platform and element type, the
failures drawn on their screenshots, and the time per sample.
"""
from __future__ import annotations

import json
import statistics
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from PIL import Image, ImageDraw

from actions import ParseError, Policy, PolicyError, check_reply
from actions.coords import to_pixels
from actions.policy import Allow
from agent.eval.dataset import Sample
from agent.run.history import HistoryConfig, build_messages, prompt

POLICY = Policy(allow=Allow(actions=["left_click"]))
MARKS_POLICY = Policy(allow=Allow(actions=["left_click"]), marks=True)
MARK_RADIUS_PX = 9


@dataclass
class Result:
    index: int
    instruction: str
    platform: str
    kind: str
    source: str
    box: tuple[float, float, float, float]
    hit: bool
    point: tuple[int, int] | None  # pixels of the screenshot
    ms: float
    raw: str
    error: str = ""
    mark: int | None = None  # --marks: the mark the reply named (the point is its element's centre)


@dataclass
class Report:
    model: str
    dataset: str
    results: list[Result] = field(default_factory=list)

    @property
    def accuracy(self) -> float:
        return sum(r.hit for r in self.results) / len(self.results) if self.results else 0.0

    def by(self, key: Callable[[Result], str]) -> dict[str, tuple[int, int]]:
        """group -> (hits, samples)."""
        out: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        for r in self.results:
            out[key(r)][0] += r.hit
            out[key(r)][1] += 1
        return {k: (v[0], v[1]) for k, v in sorted(out.items())}

    def speed(self) -> dict[str, float]:
        ms = sorted(r.ms for r in self.results)
        if not ms:
            return {}
        return {"p50_ms": statistics.median(ms), "p95_ms": ms[min(len(ms) - 1, int(0.95 * len(ms)))],
                "mean_ms": statistics.fmean(ms)}

    def summary(self) -> dict:
        pct = lambda hv: round(100 * hv[0] / hv[1], 1)  # noqa: E731
        return {"model": self.model, "dataset": self.dataset, "samples": len(self.results),
                "accuracy": round(100 * self.accuracy, 1),
                "by_platform": {k: pct(v) for k, v in self.by(lambda r: r.platform).items()},
                "by_type": {k: pct(v) for k, v in self.by(lambda r: r.kind).items()},
                "unparsed": sum(1 for r in self.results if r.point is None), **self.speed()}

    def table(self) -> str:
        """The accuracy table, platform x element type, as text."""
        kinds = sorted({r.kind for r in self.results})
        cells = {k: v for k, v in self.by(lambda r: f"{r.platform}\t{r.kind}").items()}
        rows = [["platform", *kinds, "all"]]
        for plat, (h, n) in self.by(lambda r: r.platform).items():
            row = [plat]
            for kind in kinds:
                hv = cells.get(f"{plat}\t{kind}")
                row.append(f"{100 * hv[0] / hv[1]:.1f} ({hv[1]})" if hv else "-")
            rows.append([*row, f"{100 * h / n:.1f} ({n})"])
        total = [f"{100 * h / n:.1f} ({n})" for h, n in self.by(lambda r: r.kind).values()]
        rows.append(["all", *total, f"{100 * self.accuracy:.1f} ({len(self.results)})"])
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        s = self.speed()
        if s:
            lines.append(f"time per sample: p50 {s['p50_ms']:.0f} ms, p95 {s['p95_ms']:.0f} ms")
        return "\n".join(lines)


def messages_for(sample_image: Image.Image, instruction: str, backend, cfg: HistoryConfig,
                 policy: Policy = POLICY, note: str = "") -> list[dict]:
    """The prompt `vlagent run` would send for the task "Click <instruction>" on this screenshot
    (with `note`, the list of its element marks, under --marks)."""
    goal = prompt("grounding_goal.md").strip().replace("{instruction}", instruction)
    fits = lambda m: backend.fits(m, policy)  # noqa: E731
    return build_messages(goal, [], sample_image, policy, lambda step: None, cfg, fits, note=note)


def evaluate(samples: list[Sample], backend, *, dataset: str = "", out: Path | None = None,
             max_pixels: int | None = None, on_result: Callable[[Result], None] | None = None,
             marks: bool = False) -> Report:
    """marks: each screenshot carries the element marks of its stored tree (as `vlagent run --marks`
    draws them) and a mark answer clicks its element's centre in that tree."""
    from agent.targets import marks as mk

    report = Report(model=getattr(backend, "name", "model") + (" --marks" if marks else ""), dataset=dataset)
    cfg = HistoryConfig(max_images=1, max_pixels=max_pixels)
    policy = MARKS_POLICY if marks else POLICY
    for i, s in enumerate(samples):
        image = Image.open(s.image).convert("RGB")
        marked = mk.look(s.nodes(), image, image.size) if marks else None
        messages = messages_for(marked.image if marked else image, s.instruction, backend, cfg, policy,
                                marked.note if marked else "")
        t0 = time.perf_counter()
        raw = backend.generate(messages, policy)
        ms = (time.perf_counter() - t0) * 1e3
        point, error, named = None, "", None

        def resolve(action):
            nonlocal named
            named = action.mark
            mark = marked.get(action.mark) if action.mark is not None else None
            if action.mark is None:
                return action
            if mark is None:
                raise PolicyError(f"mark {action.mark} is not on this screenshot")
            return mk.at_node(action, mk.resolve(mark, marked.nodes, image.size), image.size)

        try:
            action = check_reply(raw, policy, resolve=resolve if marked else None)
            if action.coordinate is None:
                error = "left_click without a point"
            else:
                point = to_pixels(action.coordinate, image.size)
        except (ParseError, PolicyError) as e:
            error = str(e)
        r = Result(i, s.instruction, s.platform, s.kind, s.source, s.box, bool(point and s.hit(point)), point, ms,
                   getattr(backend, "last_reply", raw), error, named)
        report.results.append(r)
        if out is not None and not r.hit:
            draw_failure(image, r, out / "failures" / f"{i:04d}.png")
        if on_result is not None:
            on_result(r)
    if out is not None:
        write(report, out)
    return report


def draw_failure(image: Image.Image, r: Result, path: Path) -> None:
    """The screenshot with the target box (green) and the model's point (red cross), and the instruction."""
    img = image.copy()
    d = ImageDraw.Draw(img)
    d.rectangle(r.box, outline=(0, 200, 0), width=3)
    if r.point is not None:
        x, y = r.point
        k = MARK_RADIUS_PX
        d.line((x - k, y - k, x + k, y + k), fill=(230, 0, 0), width=3)
        d.line((x - k, y + k, x + k, y - k), fill=(230, 0, 0), width=3)
    text = r.instruction + (f"  [{r.error}]" if r.error else "")
    d.rectangle((0, 0, min(img.width, 8 + 7 * len(text)), 18), fill=(255, 255, 255))
    d.text((4, 3), text, fill=(0, 0, 0))
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def write(report: Report, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    data = {"summary": report.summary(), "results": [asdict(r) for r in report.results]}
    (out / "report.json").write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    (out / "table.txt").write_text(report.table() + "\n", encoding="utf-8")
