"""`vlagent report`: one self-contained folder, viewable offline, for any traces. Like Playwright's
trace viewer, for desktops: a summary table; per task the step timeline with the screenshot the
model saw and its action drawn on it (an SVG overlay, in the frame's own pixels), the raw reply,
errors, timings, the final screen and the checks.

    out/index.html            the summary
    out/tasks/<slug>.html     one page per trace, its screenshots under out/tasks/<slug>/
    out/assets/               CSS and JS (agent/report/assets), no network needed
    out/report.json           the summary as data: `--merge` joins shards' reports from it

Secrets stay redacted (agent.secrets): values of the environment variables a trace's task names
under `secrets:`, and VLAGENT_SECRET_*, become {secret:NAME} and never reach the HTML.
"""
from __future__ import annotations

import json
import re
import shutil
import time
from dataclasses import asdict
from pathlib import Path

from agent import trust
from agent.errors import VlagentError
from agent.report.page import ASSETS, Entry, render, render_trace  # noqa: F401 (API)

STATUS_ORDER = ("error", "timeout", "aborted", "invalid_output", "failed", "skipped", "no result", "success")


def find_traces(paths: list[Path]) -> list[Path]:
    """Trace folders (with steps.jsonl) at or under the paths, in path order."""
    found: list[Path] = []
    for p in paths:
        if (p / "steps.jsonl").is_file():
            found.append(p)
        elif p.is_dir():
            found.extend(sorted(q.parent for q in p.rglob("steps.jsonl") if "workdir" not in q.parts[len(p.parts):]))
    return found


def _write_index(out: Path, entries: list[Entry], title: str) -> Path:
    counts = {st: sum(e.status == st for e in entries) for st in dict.fromkeys(e.status for e in entries)}
    order = sorted(counts.items(), key=lambda kv: STATUS_ORDER.index(kv[0]) if kv[0] in STATUS_ORDER else 0)
    passed = counts.get("success", 0)
    html = render("index.html.j2", title=title, root="", entries=entries, counts=order, passed=passed,
                  pct=100 * passed / len(entries) if entries else 0.0, total_s=sum(e.duration_s for e in entries),
                  built=time.strftime("%Y-%m-%d %H:%M:%S"))
    (out / "index.html").write_text(html, encoding="utf-8")
    (out / "report.json").write_text(json.dumps({"title": title, "built": time.time(),
                                                 "entries": [asdict(e) for e in entries]}, indent=2), encoding="utf-8")
    return out / "index.html"


def _copy_assets(out: Path) -> None:
    (out / "assets").mkdir(parents=True, exist_ok=True)
    for f in ASSETS.iterdir():
        if f.suffix in (".css", ".js"):
            shutil.copyfile(f, out / "assets" / f.name)


def _slugify(text: str) -> str:
    """A file name of letters, digits, _ . -, never starting with a dot (no "..", no hidden file)."""
    return re.sub(r"_+", "_", re.sub(r"[^\w.-]+|\.{2,}", "_", text)).strip("_.")[:120] or "trace"


def _unique(slug: str, taken: set[str]) -> str:
    base, n = slug, 1
    while slug in taken:
        n += 1
        slug = f"{base}-{n}"
    taken.add(slug)
    return slug


def build_report(traces: list[Path], out: str | Path, names: dict | None = None, title: str = "vlagent report",
                 logs: dict | None = None) -> Path:
    """Render the traces into `out`; return the path of index.html. `names` and `logs` map a trace
    folder to the name to show and to the output of the process that ran it (from the suite)."""
    out = Path(out)
    (out / "tasks").mkdir(parents=True, exist_ok=True)
    _copy_assets(out)
    names = names or {}
    taken: set[str] = set()
    entries = []
    for t in traces:
        t = Path(t)
        name = names.get(t) or names.get(str(t))
        log = (logs or {}).get(t)
        entries.append(render_trace(t, out, _unique(_slugify(name or t.name), taken), name, log))
    return _write_index(out, entries, title)


def merge_reports(inputs: list[Path], out: str | Path, title: str = "vlagent report (merged)") -> Path:
    """Join shards' reports (folders with report.json) and JUnit files (*.xml) into one folder.

    A shard is someone else's input: its pages are rebuilt here from the records each page keeps
    (tasks/<slug>/data/: steps, result, task; and its screenshots), never copied, so no markup or
    script a shard holds reaches the merged report; its slugs are made safe again; no symlink is
    followed; report.json is read bounded. An entry without records keeps its row, not a page."""
    from agent.suite.junit import merge_junit

    out = Path(out)
    (out / "tasks").mkdir(parents=True, exist_ok=True)
    _copy_assets(out)
    reports = [r for p in inputs for r in ([p / "report.json"] if (p / "report.json").is_file() else _files(p, "report.json"))]
    junits = [x for p in inputs for x in _files(p, "*.xml") if _is_junit(x)]
    if not reports and not junits:
        raise VlagentError(f"no reports (report.json) or JUnit files (*.xml) under {', '.join(map(str, inputs))}")
    taken: set[str] = set()
    entries = []
    for r in reports:
        try:
            data = trust.read_json(r.parent, r.name)
        except trust.TrustError as e:
            raise VlagentError(f"{e}") from None
        for e in (data.get("entries") or [] if isinstance(data, dict) else [])[:100_000]:
            if isinstance(e, dict):
                entries.append(_rebuild(e, r.parent / "tasks", out, taken))
    if junits:
        merge_junit(junits, out / "junit.xml")
    return _write_index(out, entries, title)


def _files(folder: Path, pattern: str) -> list[Path]:
    """Files matching `pattern` under `folder`, none reached through a symlink."""
    found = []
    for path in sorted(Path(folder).rglob(pattern)):
        parts = path.relative_to(folder).parts
        if not any((Path(folder).joinpath(*parts[:i + 1])).is_symlink() for i in range(len(parts))):
            found.append(path)
    return found


def _rebuild(e: dict, src: Path, out: Path, taken: set[str]) -> Entry:
    """One shard entry: its page rendered again from its kept records, under a fresh safe slug."""
    import tempfile

    text = lambda k, n=2000: str(e.get(k) if e.get(k) is not None else "")[:n]  # noqa: E731
    old = _slugify(text("slug", 200))
    slug = _unique(old, taken)
    name = text("name", 300) or slug
    try:
        kept = trust.contained(src, f"{old}/data")
    except trust.TrustError:
        kept = None
    if kept is not None and kept.is_dir():
        with tempfile.TemporaryDirectory(prefix="vlagent-merge-") as tmp:
            trace = Path(tmp)
            for f in ("steps.jsonl", "result.json", "task.yaml"):
                try:
                    (trace / f).write_bytes(trust.read_bytes(kept, f, 64 << 20))
                except trust.TrustError:
                    pass
            _screens(trace, src / old)
            entry = render_trace(trace, out, slug, name)
        entry.trace = text("trace", 500)
        return entry
    try:
        duration = float(e.get("duration_s") or 0.0)
        steps = int(e.get("steps") or 0)
    except (TypeError, ValueError, OverflowError):
        duration, steps = 0.0, 0
    return Entry(name, slug, text("status", 40) or "no result", text("reason"), steps, duration, text("model", 200),
                 "", None, text("trace", 500))


def _screens(trace: Path, shard_dir: Path) -> None:
    """The screenshots the kept records name, from the shard's copies (by file name), into `trace`."""
    from agent.trace import load_steps

    names = [n for s in load_steps(trace, lenient=True) for n in (s.screenshot, s.marks) if n]
    try:
        result = json.loads((trace / "result.json").read_text(encoding="utf-8"))
        names += [result.get("final_screenshot") or "screens/final.png"]
        names += [f.get("screenshot") for f in result.get("flow") or [] if isinstance(f, dict) and f.get("screenshot")]
    except (OSError, ValueError, AttributeError):
        names.append("screens/final.png")
    for s in load_steps(trace, lenient=True):
        if isinstance(s.target, dict) and s.target.get("recorded_screenshot"):
            names.append(s.target["recorded_screenshot"])
    for rel in dict.fromkeys(n for n in names if isinstance(n, str)):
        try:
            data = trust.read_bytes(shard_dir, Path(rel).name, trust.MAX_IMAGE_BYTES)
            dest = trust.contained(trace, rel)
        except trust.TrustError:
            continue
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(data)
        except OSError:  # a name that clashes with another (a file where a folder is wanted)
            continue


def _is_junit(path: Path) -> bool:
    try:
        head = path.read_text(encoding="utf-8", errors="replace")[:500]
    except OSError:
        return False
    return "<testsuites" in head or "<testsuite" in head
