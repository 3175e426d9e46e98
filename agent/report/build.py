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
    return re.sub(r"[^\w.-]+", "_", text).strip("_") or "trace"


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
    """Join shards' reports (folders with report.json) and JUnit files (*.xml) into one folder."""
    from agent.suite.junit import merge_junit

    out = Path(out)
    (out / "tasks").mkdir(parents=True, exist_ok=True)
    _copy_assets(out)
    reports = [r for p in inputs for r in ([p / "report.json"] if (p / "report.json").is_file() else sorted(p.rglob("report.json")))]
    junits = [x for p in inputs for x in sorted(p.rglob("*.xml")) if _is_junit(x)]
    if not reports and not junits:
        raise VlagentError(f"no reports (report.json) or JUnit files (*.xml) under {', '.join(map(str, inputs))}")
    taken: set[str] = set()
    entries = []
    for r in reports:
        data = json.loads(r.read_text(encoding="utf-8"))
        for e in data.get("entries", []):
            entry = Entry(**e)
            old = _slugify(entry.slug)  # a shard's report.json is input too: no paths out of the folder
            slug = _unique(old, taken)
            src = r.parent / "tasks"
            if (src / old).is_dir():
                shutil.copytree(src / old, out / "tasks" / slug, dirs_exist_ok=True)
            page = (src / f"{old}.html").read_text(encoding="utf-8")
            if slug != old:  # screenshots are addressed as "<slug>/NNNN.png" (src, data-before, data-after)
                page = page.replace(f'="{old}/', f'="{slug}/')
            (out / "tasks" / f"{slug}.html").write_text(page, encoding="utf-8")
            entry.slug, entry.page = slug, f"tasks/{slug}.html"
            if entry.thumb:
                entry.thumb = f"tasks/{slug}/{Path(entry.thumb).name}"
            entries.append(entry)
    if junits:
        merge_junit(junits, out / "junit.xml")
    return _write_index(out, entries, title)


def _is_junit(path: Path) -> bool:
    try:
        head = path.read_text(encoding="utf-8", errors="replace")[:500]
    except OSError:
        return False
    return "<testsuites" in head or "<testsuite" in head
