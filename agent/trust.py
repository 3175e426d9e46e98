"""Files from a repository are someone else's input.

A trace folder's task.yaml can run programs (`setup:`, `command:` checks) and point at files
(`taskdir:`). vlagent trusts it only when this machine wrote it, or a person said so:
- what vlagent writes (Trace.write_task) is signed: an HMAC-SHA256 of task.yaml's bytes with a key
  kept in ~/.config/vlagent/trust.key (made on first use, mode 0600), stored next to it as
  task.yaml.sig. Edit the file, or bring it from another machine, and the signature no longer holds.
- `vlagent trust PATH` signs a folder after a person read it; `--trust` (VLAGENT_TRUST=1) trusts
  every folder of that one command; files shipped inside vlagent's own source tree are as trusted as
  its code.
Anything else runs no setup and no command checks, and its `taskdir:` is the trace's own folder
(`trace_task`); one line says so and how to trust it.

Caches and traces are read through the helpers below: paths contained in their folder (no absolute
path, no `..`, no symlink followed, checked component by component), sizes bounded (bytes of JSON
and images, decoded pixels), unknown versions refused with one line.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets as _random
import stat
import sys
from pathlib import Path
from typing import Any

from agent.errors import VlagentError

SIGNATURE = "task.yaml.sig"
KEY_BYTES = 32
MAX_JSON_BYTES = 64 << 20  # a cache or a steps.jsonl: a real one is a few MiB
MAX_IMAGE_BYTES = 32 << 20  # one PNG
MAX_PIXELS = 8192 * 8192  # decoded: 256 MiB of RGBA at most, a 4K screen is 8.3 M
TRUST_VAR = "VLAGENT_TRUST"
SOURCE_TREE = Path(__file__).resolve().parent.parent  # vlagent's own files: trusted like its code


class TrustError(VlagentError):
    """A file that cannot be used as it is (one line, with the path)."""


# -- the local key and signatures --------------------------------------------------------------
def _key_path() -> Path:
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "vlagent" / "trust.key"


def _key() -> bytes:
    path = _key_path()
    try:
        key = path.read_bytes()
        if len(key) >= KEY_BYTES:
            return key
    except OSError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f"trust.key.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(_random.token_bytes(KEY_BYTES))
    try:
        os.link(tmp, path)  # first writer wins: two processes never sign with different keys
    except FileExistsError:
        pass
    finally:
        os.unlink(tmp)
    return path.read_bytes()


def _mac(data: bytes) -> str:
    return hmac.new(_key(), b"vlagent-task-v1\0" + data, hashlib.sha256).hexdigest()


def sign(folder: Path) -> None:
    """Sign folder/task.yaml with this machine's key (what vlagent wrote, or what a person trusts)."""
    folder = Path(folder)
    data = read_bytes(folder, "task.yaml", MAX_JSON_BYTES)
    (folder / SIGNATURE).write_text(_mac(data) + "\n", encoding="ascii")


def signed(folder: Path) -> bool:
    try:
        data = read_bytes(folder, "task.yaml", MAX_JSON_BYTES)
        mac = read_bytes(folder, SIGNATURE, 200).decode("ascii", "replace").strip()
    except TrustError:
        return False
    return hmac.compare_digest(mac, _mac(data))


def trust_all(on: bool = True) -> None:
    """`--trust`: every folder of this command (and its suite children) is trusted."""
    if on:
        os.environ[TRUST_VAR] = "1"


def trusted(folder: Path) -> bool:
    folder = Path(folder).resolve()
    if os.environ.get(TRUST_VAR) == "1" or folder.is_relative_to(SOURCE_TREE):
        return True
    return signed(folder)


def trace_task(task, folder: Path, say=None):
    """The task of a trace folder as it may run here: itself when trusted; else without setup
    steps and command checks, its taskdir the trace folder, and one line on stderr saying so."""
    folder = Path(folder)
    if trusted(folder):
        return task
    here = folder.resolve()
    setup, commands = len(task.setup), sum(1 for c in task.success if c.kind == "command")
    # Nor may it name what it receives: secrets it could type (on a live display, into any window:
    # the run's policy is built from this copy, which declares none) or variables its programs get.
    update = {"setup": [], "success": [c for c in task.success if c.kind != "command"], "taskdir": str(here),
              "secrets": {}, "env": []}
    for name in ("before", "after"):  # a flow's hooks may run steps too
        if getattr(task, name, None):
            update[name] = []
    safe = task.model_copy(update=update)
    safe.base_dir = here
    if setup or commands or task.secrets or task.env or task.base_dir != here:
        (say or _stderr)(f"{folder}: not trusted (not written on this machine): its task's {setup} setup step(s), "
                         f"{commands} command check(s) and {len(task.secrets)} secret(s) are not used; read it, then "
                         f"`vlagent trust {folder}` or --trust")
    return safe


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


# -- containment and sizes ---------------------------------------------------------------------
def contained(base: Path, rel: str) -> Path:
    """base/rel, when rel is a relative path inside base that crosses no symlink; else TrustError."""
    if not isinstance(rel, str) or not rel or "\0" in rel:
        raise TrustError(f"{base}: an empty or invalid file name {rel!r}")
    p = Path(rel)
    if p.is_absolute() or ".." in p.parts or rel.startswith("~"):
        raise TrustError(f"{base}: refers to {rel[:120]!r}, outside its folder")
    here = Path(base)
    for part in p.parts:
        here = here / part
        try:
            if stat.S_ISLNK(os.lstat(here).st_mode):
                raise TrustError(f"{base}: {rel[:120]!r} goes through a symbolic link; not followed")
        except (FileNotFoundError, NotADirectoryError):
            break  # what does not exist is no link (the caller finds it missing)
    return Path(base) / p


def read_bytes(base: Path, rel: str, limit: int) -> bytes:
    """The bytes of base/rel (contained, no symlink), at most `limit` of them; else TrustError."""
    path = contained(base, rel)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_NONBLOCK", 0))
    except OSError as e:
        raise TrustError(f"{path}: cannot read: {e.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise TrustError(f"{path}: not a regular file")
        if info.st_size > limit:
            raise TrustError(f"{path}: {info.st_size:,} bytes, over the {limit:,} byte limit")
        data = f.read(limit + 1)
    if len(data) > limit:
        raise TrustError(f"{path}: over the {limit:,} byte limit")
    return data


def read_json(base: Path, rel: str, limit: int = MAX_JSON_BYTES) -> Any:
    data = read_bytes(base, rel, limit)
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise TrustError(f"{Path(base) / rel}: not valid JSON ({type(e).__name__})") from None


def check_version(path: Path, found: Any, known: tuple) -> None:
    if found not in known:
        raise TrustError(f"{path}: version {str(found)[:20]!r} is not one this vlagent reads "
                         f"({', '.join(map(str, known))}); refused")


EVIDENCE_VERSIONS = (1,)  # agent.targets.locate.EVIDENCE_VERSION: what a step's target evidence may say


def known_versions(steps: list, folder: Path) -> list:
    """The steps of a trace, when the evidence of each names a version this vlagent reads."""
    for step in steps:
        for ev in (step.target, (step.target or {}).get("start")):
            if isinstance(ev, dict) and "version" in ev:
                check_version(Path(folder) / "steps.jsonl", ev["version"], EVIDENCE_VERSIONS)
    return steps


def open_image(base: Path, rel: str, max_bytes: int = MAX_IMAGE_BYTES, max_pixels: int = MAX_PIXELS):
    """A PNG/JPEG of a cache or trace as an RGB PIL image, bounded in bytes and decoded pixels."""
    return decode_image(read_bytes(base, rel, max_bytes), max_pixels, str(Path(base) / rel)).convert("RGB")


def decode_image(data: bytes, max_pixels: int = MAX_PIXELS, what: str = "an embedded image"):
    """A PIL image from bytes (a trace's or a cache's evidence), its size checked before decoding."""
    import io

    from PIL import Image

    if len(data) > MAX_IMAGE_BYTES:
        raise TrustError(f"{what}: {len(data):,} bytes, over the {MAX_IMAGE_BYTES:,} byte limit")
    try:
        image = Image.open(io.BytesIO(data))
        w, h = image.size
        if w * h > max_pixels or w <= 0 or h <= 0:
            raise TrustError(f"{what}: {w}x{h} pixels, over the {max_pixels:,} pixel limit")
        image.load()
        return image
    except TrustError:
        raise
    except Exception as e:  # a truncated or hostile file: PIL raises many kinds
        raise TrustError(f"{what}: not a usable image ({type(e).__name__})") from None


def inside(path: Path, folder: Path) -> bool:
    """Whether `path` (symlinks resolved) lies inside `folder`: what a check may quote."""
    try:
        return Path(path).resolve().is_relative_to(Path(folder).resolve())
    except (OSError, RuntimeError):
        return False


__all__ = ["TrustError", "check_version", "contained", "decode_image", "inside", "open_image", "read_bytes", "read_json",
           "sign", "signed", "trace_task", "trust_all", "trusted"]
