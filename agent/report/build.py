"""`vlagent report`: one self-contained folder, viewable offline, for any traces. Like Playwright's
trace viewer, for desktops: a summary table; per task the step timeline with the screenshot the
model saw and its action drawn on it (an SVG overlay, in the frame's own pixels), the raw reply,
errors, timings, the final screen and the checks.

    out/index.html            the summary
    out/tasks/<slug>.html     one page per trace, its screenshots under out/tasks/<slug>/
    out/assets/               CSS and JS (agent/report/assets), no network needed
    out/report.json           the summary as data: `--merge` joins shards' reports from it

Secrets stay redacted: values of the environment variables a task names under `secrets:` and of
any variable that looks secret (PASSWORD, TOKEN, ...) never reach the HTML.
"""
from __future__ import annotations

import json
import re
import shutil
import time
from dataclasses import asdict
from html import escape
from pathlib import Path


from agent.errors import VlagentError
from agent.report.page import (ASSETS, Entry, Redactor, _badge, _page, render_trace,  # noqa: F401 (API)
                               read_steps)

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


def _index(entries: list[Entry], title: str) -> str:
    counts = {s: sum(e.status == s for e in entries) for s in dict.fromkeys(e.status for e in entries)}
    passed = counts.get("success", 0)
    pct = 100 * passed / len(entries) if entries else 0
    pills = " ".join(f'<button class="filter" data-status="{escape(s)}">{_badge(s)} {n}</button>'
                     for s, n in sorted(counts.items(), key=lambda kv: STATUS_ORDER.index(kv[0]) if kv[0] in STATUS_ORDER else 0))
    rows = "".join(f"""<tr data-status="{escape(e.status)}"><td>{_badge(e.status)}</td>
<td><a href="{escape(e.page)}">{escape(e.name)}</a></td><td class="num">{e.steps}</td>
<td class="num">{e.duration_s:.1f} s</td><td class="reason">{escape(e.reason)}</td>
<td>{f'<a href="{escape(e.page)}#final"><img class="thumb" src="{escape(e.thumb)}" loading="lazy" alt=""></a>' if e.thumb else ""}</td></tr>"""
                   for e in entries)
    total_s = sum(e.duration_s for e in entries)
    return f"""<header class="top"><h1>{escape(title)}</h1>
<p class="meta">{passed} of {len(entries)} passed · {total_s:.1f} s of runs · built {time.strftime("%Y-%m-%d %H:%M:%S")}</p>
<div class="passbar"><span style="width:{pct:.1f}%"></span></div>
<div class="pills"><button class="filter active" data-status="">all {len(entries)}</button> {pills}</div></header>
<main><table class="summary"><thead><tr><th>status</th><th>task</th><th>steps</th><th>time</th><th>reason</th><th>final screen</th></tr></thead>
<tbody>{rows}</tbody></table></main>"""


def _write_index(out: Path, entries: list[Entry], title: str) -> Path:
    (out / "index.html").write_text(_page(title, _index(entries, title), ""), encoding="utf-8")
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
            slug = _unique(entry.slug, taken)
            src = r.parent / "tasks"
            if (src / entry.slug).is_dir():
                shutil.copytree(src / entry.slug, out / "tasks" / slug, dirs_exist_ok=True)
            page = (src / f"{entry.slug}.html").read_text(encoding="utf-8")
            if slug != entry.slug:  # screenshots are addressed as "<slug>/NNNN.png"
                page = page.replace(f'src="{entry.slug}/', f'src="{slug}/')
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
