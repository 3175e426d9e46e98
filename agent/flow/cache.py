"""The verified action cache: a readable JSON file next to the task, `<task name>.cache.json`, with
its images in the folder `<task name>.cache/` (PNG files named by their content's hash, so they are
written once and the pair can be committed and used on another machine).

    {"version": 1, "task": "fill_form_flow",
     "steps": [{"key": "3f9a...", "kind": "act", "text": "Type Ada Lovelace into the Name field",
                "screen": "fill_form_flow.cache/8c1e....png",          # the screen after the step
                "actions": [{"action": {"action": "left_click", "coordinate": [352, 205]},
                             "target": {... evidence of agent.targets.locate, images as png_file ...},
                             "effect": {"changed": true, "after": {... evidence of what changed ...}}},
                            ...]}]}

A step's key hashes its kind and its text (query values filled in): a reworded step gets a new entry.
Entries are never dropped (several tests may share a task's cache): delete the file to start over. Modes: read-write (default), read-only (never write: CI), write-only (never read:
refresh), off.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from agent import trust
from agent.errors import VlagentError

CACHE_VERSION = 1
MODES = ("read-write", "read-only", "write-only", "off")
OPENED_IMAGES = 16  # decoded screenshots kept (a step's few, and the next step's, decoded ahead)
_DECODER: ThreadPoolExecutor | None = None  # one thread for the process: PNG decoding while input sleeps
Mode = Literal["read-write", "read-only", "write-only", "off"]


class CacheError(VlagentError):
    """The cache file cannot be used (one line, with what to do)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CachedAction(_Strict):
    action: dict[str, Any]  # native arguments; validated against the schema when replayed
    screen: str | None = None  # the screen the action was taken on (an image file of this cache)
    target: dict[str, Any] | None = None  # evidence of the pointer target (agent.targets.evidence)
    start: dict[str, Any] | None = None  # a drag's start
    effect: dict[str, Any] | None = None  # {"changed": bool, "after": evidence | None, "screen": file | None}


class CachedStep(_Strict):
    key: str
    kind: str
    text: str
    screen: str | None = None
    recorded: str = ""
    actions: list[CachedAction]


class CacheFile(_Strict):
    version: Literal[1] = CACHE_VERSION
    task: str
    steps: list[CachedStep] = []


def _decode_png(path: Path):
    return trust.open_image(path.parent, path.name)  # bounded bytes and pixels, no symlink (agent.trust)


def _readable(data: dict) -> str:
    """Indented JSON with short lists of numbers on one line ([352, 205], not four lines)."""
    text = json.dumps(data, indent=1, ensure_ascii=False)
    return re.sub(r"\[\s+(-?[\d.e+-]+(?:,\s+-?[\d.e+-]+)*)\s+\]",
                  lambda m: "[" + ", ".join(v.strip() for v in m.group(1).split(",")) + "]", text)


def step_key(kind: str, text: str, occurrence: int = 0) -> str:
    """The same step text twice in a flow gets two entries (occurrence 0, 1, ...)."""
    return hashlib.sha256(json.dumps([kind, text, occurrence]).encode()).hexdigest()[:16]


class ActionCache:
    def __init__(self, path: Path, task: str, mode: Mode):
        if mode not in MODES:
            raise CacheError(f"unknown cache mode {mode!r}; choose one of {', '.join(MODES)}")
        self.path, self.task, self.mode = Path(path), task, mode
        self.images = self.path.with_suffix("")  # x.cache.json -> x.cache/
        self.entries: dict[str, CachedStep] = {}
        self.staged: dict[str, CachedStep] = {}
        self.order: list[str] = []  # keys in the order the flow met them
        self._pending: dict[str, Any] = {}  # image file -> PIL image, written by save()
        self._opened: dict[str, Any] = {}  # image file -> PIL image (or its Future), read from disk
        if self.reads and self.path.exists():
            self._load()

    @classmethod
    def for_task(cls, task, mode: Mode) -> "ActionCache":
        return cls(Path(task.base_dir) / f"{task.name}.cache.json", task.name, mode)

    @property
    def reads(self) -> bool:
        return self.mode in ("read-write", "read-only")

    @property
    def writes(self) -> bool:
        return self.mode in ("read-write", "write-only")

    def _load(self) -> None:
        self.entries = self._read()

    def _read(self) -> dict[str, CachedStep]:
        """The file's entries, their images inlined; CacheError (one line) when it cannot be used."""
        fix = "delete it or refresh it with --cache write-only"
        try:
            data = CacheFile.model_validate(json.loads(trust.read_bytes(self.path.parent, self.path.name, trust.MAX_JSON_BYTES)))
        except trust.TrustError as e:  # a symlink, a file too large (agent.trust)
            raise CacheError(f"{e}; {fix}") from None
        except OSError as e:
            raise CacheError(f"{self.path}: cannot read the action cache: {e.strerror}") from None
        except json.JSONDecodeError as e:
            raise CacheError(f"{self.path}: the action cache is not valid JSON (line {e.lineno}: {e.msg}); {fix}") from None
        except ValidationError as e:
            err = e.errors(include_url=False)[0]
            where = ".".join(str(p) for p in err["loc"]) or "(top level)"
            raise CacheError(f"{self.path}: not an action cache of version {CACHE_VERSION} "
                             f"({where}: {err['msg']}); {fix}") from None
        from agent.targets.model import EvidenceError, check

        for step in data.steps:
            for i, a in enumerate(step.actions):
                for name in ("target", "start", "effect"):
                    setattr(a, name, self._inline(getattr(a, name), fix))
                try:
                    for name, ev in (("target", a.target), ("start", a.start), ("effect.after", (a.effect or {}).get("after"))):
                        check(ev, f"{step.kind} {step.text!r}, action {i + 1}, {name}")
                except EvidenceError as e:
                    raise CacheError(f"{self.path}: {e}; {fix}") from None
        return {step.key: step for step in data.steps}

    def get(self, key: str) -> CachedStep | None:
        if key not in self.order:
            self.order.append(key)
        return self.entries.get(key) if self.reads else None

    def stage(self, step: CachedStep) -> None:
        """Keep a verified step's actions; written by save() when the run succeeded."""
        step.recorded = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self.staged[step.key] = step

    def save(self) -> Path | None:
        """Write the cache: staged steps replace their entries, the file's other entries stay (other
        tests of the same task, other branches of a flow); the file is read again first, so two runs
        writing one after the other both keep their steps. Atomic; None when there is nothing to do."""
        if not self.writes or not self.staged:
            return None
        try:
            current = self._read() if self.path.exists() else {}
        except CacheError:  # a broken file is what write modes replace
            current = {}
        merged = {**current, **self.staged}
        keep = list(current) + [k for k in [*self.order, *self.staged] if k in self.staged and k not in current]
        keep = list(dict.fromkeys(keep))
        out = []
        for key in keep:
            step = merged[key].model_copy(deep=True)
            for a in step.actions:
                a.target, a.start, a.effect = (self._outline(x) for x in (a.target, a.start, a.effect))
            out.append(step)
        for rel, image in self._pending.items():
            if not (self.path.parent / rel).exists():
                self.images.mkdir(parents=True, exist_ok=True)
                image.save(self.path.parent / rel, format="PNG", compress_level=6)
        data = CacheFile(task=self.task, steps=out)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(_readable(data.model_dump(mode="json")) + "\n", encoding="utf-8")
        os.replace(tmp, self.path)
        self.entries = {s.key: s for s in (merged[k] for k in keep)}
        self.staged, self._pending = {}, {}
        return self.path

    def image_ref(self, image) -> str:
        """The cache's file name for a screenshot (by its content); written when the cache is saved."""
        rel = f"{self.images.name}/{hashlib.sha256(image.tobytes() + repr(image.size).encode()).hexdigest()[:20]}.png"
        self._pending.setdefault(rel, image)
        return rel

    def open_image(self, rel: str | None):
        """A screenshot the cache refers to, or None when it has none or the file is gone."""
        if not rel:
            return None
        if rel in self._pending:
            return self._pending[rel]
        if rel not in self._opened:
            self._open(rel, _decode_png)
        image = self._opened[rel]
        return image.result() if isinstance(image, Future) else image

    def prefetch(self, rels) -> None:
        """Decode these screenshots in the background (a replay needs them in a moment)."""
        global _DECODER
        if _DECODER is None:
            _DECODER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cache-png")
        for rel in rels:
            if rel and rel not in self._pending and rel not in self._opened:
                self._open(rel, lambda path: _DECODER.submit(_decode_png, path))

    def step_images(self, step: CachedStep) -> list[str]:
        return [rel for a in step.actions for rel in (a.screen, (a.effect or {}).get("screen")) if rel]

    def following(self, key: str) -> CachedStep | None:
        """The entry after `key` in the file (usually the flow's next step)."""
        keys = list(self.entries)
        k = keys.index(key) + 1 if key in self.entries else len(keys)
        return self.entries[keys[k]] if k < len(keys) else None

    def _open(self, rel: str, load) -> None:
        try:
            path = trust.contained(self.path.parent, rel)
        except trust.TrustError:
            path = None
        if path is None or not path.is_file():
            self._opened[rel] = None
            return
        if len(self._opened) >= OPENED_IMAGES:  # consecutive actions share screens: keep a few
            self._opened.pop(next(iter(self._opened)))
        self._opened[rel] = load(path)

    # -- images: base64 PNGs in the evidence <-> content-addressed files ---------------------------
    def _write_bytes(self, data: bytes) -> str:
        name = hashlib.sha256(data).hexdigest()[:20] + ".png"
        trust.contained(self.path.parent, self.images.name)  # never write through a symlinked folder
        self.images.mkdir(parents=True, exist_ok=True)
        if not (self.images / name).exists():
            (self.images / name).write_bytes(data)
        return f"{self.images.name}/{name}"  # relative to the cache file's folder

    def _outline(self, value):
        """Evidence with each {"png": base64} moved to a file, {"png_file": path}."""
        if isinstance(value, dict):
            out = {}
            for k, v in value.items():
                if k == "png" and isinstance(v, str):
                    out["png_file"] = self._write_bytes(base64.b64decode(v))
                else:
                    out[k] = self._outline(v)
            return out
        if isinstance(value, list):
            return [self._outline(v) for v in value]
        return value

    def _inline(self, value, fix: str):
        if isinstance(value, dict):
            out = {}
            for k, v in value.items():
                if k == "png_file" and isinstance(v, str):
                    try:  # contained in the cache's folder, no symlink, bounded (agent.trust)
                        out["png"] = base64.b64encode(trust.read_bytes(self.path.parent, v, trust.MAX_IMAGE_BYTES)).decode("ascii")
                    except trust.TrustError as e:
                        what = f"a missing image {v}" if "No such file" in str(e) else f"an image it cannot use ({e})"
                        raise CacheError(f"{self.path}: refers to {what}; {fix}") from None
                else:
                    out[k] = self._inline(v, fix)
            return out
        if isinstance(value, list):
            return [self._inline(v, fix) for v in value]
        return value
