"""Traces are never mixed: a --trace folder that already holds a run is refused by run, replay and
record with one line and exit 2, and nothing of the earlier run changes (same for a suite's --out)."""
from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from agent.errors import VlagentError
from agent.trace import Step, Trace, check_new_trace

ROOT = Path(__file__).resolve().parents[2]
TASK = ROOT / "tasks" / "fill_form.yaml"
SOLUTION = ROOT / "tests" / "scripts" / "fill_form_solution.yaml"  # never runs: refused first
DEMO = ROOT / "examples" / "fill_form_demo"

pytestmark = pytest.mark.timeout(300)


def vlagent(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "agent.cli", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=240)


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_a_folder_holding_a_run_is_refused_by_run_replay_and_record(tmp_path):
    held = tmp_path / "run1"
    shutil.copytree(DEMO, held)  # a real earlier run
    before = snapshot(held)
    assert {"steps.jsonl", "result.json", "task.yaml", "screens/final.png"} <= set(before)
    for args in (["run", TASK, "--model", f"script:{SOLUTION}", "--trace", held],
                 ["replay", DEMO, "--trace", held],
                 ["replay", held, "--trace", held],
                 ["record", held, "--task", TASK]):
        r = vlagent(*args)
        assert r.returncode == 2, (args[0], r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "already holds a run" in lines[0] and str(held) in lines[0], r.stderr
        assert snapshot(held) == before  # nothing of the earlier run lost or touched


def test_the_library_refuses_too(tmp_path):
    Trace(tmp_path / "t").add(Step(step=1))
    with pytest.raises(VlagentError, match="already holds a run"):
        Trace(tmp_path / "t")
    check_new_trace(tmp_path / "empty-but-there")  # a folder without a run is fine, existing or not
    (tmp_path / "made").mkdir()
    check_new_trace(tmp_path / "made")


def test_a_suite_out_folder_holding_a_suite_run_is_refused(tmp_path):
    out = tmp_path / "out"
    (out / "traces" / "a").mkdir(parents=True)
    (out / "suite.json").write_text("{}")
    r = vlagent("suite", ROOT / "examples" / "qa_suite", "--out", out)
    assert r.returncode == 2 and "already holds a suite run" in r.stderr
    assert (out / "suite.json").read_text() == "{}"
