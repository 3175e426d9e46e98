"""What a suite is made of: the task files and traces under some paths, and a stable share of
them for one CI machine (`--shard I/N`)."""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from agent.errors import VlagentError
from agent.task import read_yaml


OUTPUT_MARKERS = ("suite.json", "report.json")  # files that mark a folder vlagent wrote


@dataclass(frozen=True)
class Item:
    kind: str  # "task" (run with the model) or "trace" (replayed)
    path: Path  # absolute
    rel: str  # path relative to the suite root, with "/" separators: stable across machines

    @property
    def name(self) -> str:
        return self.rel.removesuffix(".yaml").removesuffix(".yml")

    @property
    def slug(self) -> str:
        return self.name.replace("/", "__") or "item"


@dataclass
class Outcome:
    item: Item
    status: str  # one of agent.trace.STATUSES, or "skipped" when the suite stopped first
    reason: str = ""
    trace: Path | None = None
    log: Path | None = None
    duration_s: float = 0.0
    attempts: int = 0
    steps: int = 0
    swept: list[int] = field(default_factory=list)  # pids the child left behind, killed by the suite

    @property
    def passed(self) -> bool:
        return self.status == "success"


# ---------------------------------------------------------------- discovery and sharding

def _is_task_file(path: Path) -> bool:
    if path.suffix not in (".yaml", ".yml"):
        return False
    try:
        data = read_yaml(path)  # bounded: a YAML bomb is not a task
    except VlagentError:
        return False
    return isinstance(data, dict) and ("goal" in data or "steps" in data)  # a task, or a flow


def _is_trace_dir(path: Path) -> bool:
    return (path / "steps.jsonl").is_file()


def suite_root(paths: list[Path]) -> Path:
    dirs = [p.resolve() if p.is_dir() else p.resolve().parent for p in paths]
    return Path(os.path.commonpath(dirs))


def discover(paths: list[str | Path]) -> tuple[Path, list[Item]]:
    """Task files (YAML with a `goal`) and trace folders (with steps.jsonl) under the paths,
    sorted by path. Files inside a trace folder (its task.yaml) are part of the trace."""
    paths = [Path(p) for p in paths]
    for p in paths:
        if not p.exists():
            raise VlagentError(f"no such file or folder: {p}")
    root = suite_root(paths)
    found: dict[Path, str] = {}

    def visit(p: Path) -> None:
        if p.is_dir():
            if _is_trace_dir(p):
                found[p] = "trace"
                return
            if any((p / marker).is_file() for marker in OUTPUT_MARKERS):
                return  # a previous suite's output or a report: its traces are results, not tests
            for child in sorted(p.iterdir()):
                if not child.name.startswith("."):
                    visit(child)
        elif _is_task_file(p):
            found[p] = "task"

    for p in paths:
        visit(p.resolve())
    items = [Item(kind, p, p.relative_to(root).as_posix() or p.name) for p, kind in found.items()]
    return root, sorted(items, key=lambda i: i.rel)


def parse_shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise VlagentError(f"--shard {text!r} is not I/N, e.g. 1/3") from None
    if not (n >= 1 and 1 <= i <= n):
        raise VlagentError(f"--shard {text!r}: need 1 <= I <= N")
    return i, n


def _stable_hash(rel: str) -> int:
    return int.from_bytes(hashlib.sha256(rel.encode("utf-8")).digest()[:8], "big")


def take_shard(items: list[Item], index: int, total: int) -> list[Item]:
    """Shard `index` of `total` (1-based, as Playwright's --shard=I/N). Items are ordered by a
    stable hash of their suite-relative path and dealt round-robin: every item lands in exactly
    one shard, shard sizes differ by at most one, and every machine computes the same split."""
    ordered = sorted(items, key=lambda i: (_stable_hash(i.rel), i.rel))
    mine = {it.rel for k, it in enumerate(ordered) if k % total == index - 1}
    return [it for it in items if it.rel in mine]
