"""`vlagent report` treats traces and shards as someone else's input (issue 22, item 5): a merge
rebuilds pages from the shard's records (stored script in a shard's HTML never reaches the merged
report), slugs are made safe, symlinks are not followed, YAML is read bounded."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent.report.build import build_report

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from test_report import make_trace  # noqa: E402  (a trace of 8 steps, with screenshots)

ROOT = Path(__file__).resolve().parents[2]


def vlagent(*args):
    return subprocess.run([sys.executable, "-m", "agent.cli", *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_a_hostile_shard_merges_without_its_script_its_slug_or_its_links(tmp_path):
    shard = tmp_path / "shard"
    trace = make_trace(tmp_path / "traces" / "ok")
    build_report([trace], shard)
    page = shard / "tasks" / "ok.html"
    page.write_text(page.read_text().replace("</body>", "<script>steal()</script></body>"))  # stored script
    (tmp_path / "private.png").write_bytes(b"\x89PNG private")
    (shard / "tasks" / "ok" / "0001.png").unlink()
    (shard / "tasks" / "ok" / "0001.png").symlink_to(tmp_path / "private.png")
    data = json.loads((shard / "report.json").read_text())
    data["entries"].append({**data["entries"][0], "slug": "../../escape", "name": "<img src=x onerror=alert(1)>"})
    data["entries"].append({"slug": "..", "status": {"x": 1}, "junk": True})
    (shard / "report.json").write_text(json.dumps(data))
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "report.json").write_text(json.dumps({"entries": [{"slug": "linked", "name": "linked"}]}))
    (shard / "sub").symlink_to(tmp_path / "elsewhere")  # a report.json reached through a link is not read

    done = vlagent("report", "--merge", shard, "--out", tmp_path / "merged")
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    merged = tmp_path / "merged"
    every = {p.relative_to(merged): p for p in merged.rglob("*")}
    assert all(".." not in p.parts for p in every) and not (tmp_path / "escape.html").exists()
    html = "".join(p.read_text(errors="replace") for p in every.values() if p.suffix == ".html")
    assert "steal()" not in html and "<img src=x" not in html
    assert b"private" not in b"".join(p.read_bytes() for p in every.values() if p.suffix == ".png")
    slugs = [e["slug"] for e in json.loads((merged / "report.json").read_text())["entries"]]
    assert slugs == ["ok", "escape", "trace"], slugs  # "linked" (through the symlink) is not there
    assert (merged / "tasks" / "ok.html").is_file() and 'class="step' in (merged / "tasks" / "ok.html").read_text()


def test_report_reads_a_traces_task_bounded(tmp_path):
    trace = make_trace(tmp_path / "bomb")
    lines = ['a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]
    (trace / "task.yaml").write_text("name: bomb\ngoal: boom\n" + "\n".join(lines) + "\n")
    done = vlagent("report", trace, "--out", tmp_path / "rep")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "rep" / "tasks").is_dir()
