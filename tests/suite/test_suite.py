"""`vlagent suite`: discovery, sharding, the scheduler (timeouts, retries, crashes, sweeping) and
JUnit, with a tiny stand-in child; the real `vlagent run` and sandboxes are in test_faults.py."""
from __future__ import annotations

import json
import os
import sys
import textwrap
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from agent.suite.junit import merge_junit, write_junit
from agent.errors import VlagentError
from agent.suite.runner import Item, Options, discover, parse_shard, run_suite, take_shard
from agent.trace import Result, Step, Trace
from processes import alive_with

# A stand-in for `vlagent run`: what it does is named by the task file's stem.
STANDIN = textwrap.dedent("""
    import os, signal, subprocess, sys, time
    from agent.trace import Trace, Step, Result
    task, trace_dir = sys.argv[1], sys.argv[2]
    kind = os.path.basename(task).split(".")[0].rstrip("0123456789")
    t = Trace(trace_dir)
    t.add(Step(step=1, raw="r", action={"action": "wait", "time": 0.1}))
    if kind == "pass":
        t.finish(Result(status="success", task=kind))
    elif kind == "fail":
        t.finish(Result(status="failed", reason="checks failed", task=kind)); sys.exit(1)
    elif kind == "crash":
        print("Traceback: boom", file=sys.stderr); os._exit(3)
    elif kind == "flaky":  # fails on the first attempt, passes on the second
        first = not os.path.exists(task + ".seen")
        open(task + ".seen", "w").close()
        t.finish(Result(status="failed" if first else "success", reason="flaked" if first else ""))
    elif kind == "hang":  # ignores SIGTERM, and leaves a grandchild in its own session
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
        time.sleep(600)
""")


def standin(tmp: Path):
    script = tmp / "standin.py"
    script.write_text(STANDIN)
    return lambda item, trace, opts: [sys.executable, str(script), str(item.path), str(trace)]


def make_suite(root: Path, names: list[str]) -> Path:
    for n in names:
        (root / f"{n}.yaml").write_text(f"name: {n}\ngoal: do {n}\n")
    return root


# ---------------------------------------------------------------- discovery and sharding

def test_discover_finds_tasks_and_traces_not_their_parts(tmp_path):
    make_suite(tmp_path, ["a", "b"])
    (tmp_path / "a.replies.yaml").write_text("- '{}'\n")  # a reply script: no goal, not a task
    (tmp_path / "notes.yaml").write_text("just: data\n")
    trace = tmp_path / "traces" / "t1"
    Trace(trace).add(Step(step=1))
    (trace / "task.yaml").write_text("name: x\ngoal: inside a trace\n")  # part of the trace
    old_run = tmp_path / "runs" / "suite-1"  # a previous suite's output is not part of the suite
    Trace(old_run / "traces" / "a").add(Step(step=1))
    (old_run / "suite.json").write_text("{}")
    root, items = discover([tmp_path])
    assert root == tmp_path.resolve()
    assert [(i.kind, i.rel) for i in items] == [("task", "a.yaml"), ("task", "b.yaml"), ("trace", "traces/t1")]
    assert items[2].name == "traces/t1" and items[2].slug == "traces__t1"


def test_discover_rejects_missing_path(tmp_path):
    with pytest.raises(VlagentError, match="no such file"):
        discover([tmp_path / "nope"])


def test_shards_partition_the_suite_stably(tmp_path):
    make_suite(tmp_path, [f"t{i:02d}" for i in range(23)])
    _, items = discover([tmp_path])
    shards = [take_shard(items, i, 4) for i in range(1, 5)]
    rels = [it.rel for s in shards for it in s]
    assert sorted(rels) == sorted(it.rel for it in items)  # every item exactly once
    assert len(set(rels)) == len(rels)
    assert max(map(len, shards)) - min(map(len, shards)) <= 1  # balanced
    # The same suite named another way (relative path, from another cwd) splits the same way.
    cwd = os.getcwd()
    try:
        os.chdir(tmp_path.parent)
        _, again = discover([Path(tmp_path.name)])
    finally:
        os.chdir(cwd)
    assert [it.rel for it in take_shard(again, 2, 4)] == [it.rel for it in shards[1]]
    assert take_shard(items, 1, 1) == items


@pytest.mark.parametrize("bad", ["0/2", "3/2", "x", "1/0", "1-2"])
def test_parse_shard_rejects(bad):
    with pytest.raises(VlagentError):
        parse_shard(bad)


def test_parse_shard_accepts():
    assert parse_shard("2/3") == (2, 3)


# ---------------------------------------------------------------- the scheduler

@pytest.mark.slow
def test_suite_runs_items_and_fails_only_the_bad_ones(tmp_path):
    suite = tmp_path / "s"
    suite.mkdir()
    make_suite(suite, ["pass1", "pass2", "fail1", "crash1", "hang1"])
    token = uuid.uuid4().hex
    _, items = discover([suite])
    outcomes, interrupted = run_suite(items, tmp_path / "out", Options(timeout_s=3, extra_env={"TEST_TOKEN": token}),
                                      workers=3, command=standin(tmp_path))
    by = {o.item.name: o for o in outcomes}
    assert not interrupted
    assert by["pass1"].status == by["pass2"].status == "success"
    assert by["fail1"].status == "failed" and by["fail1"].reason == "checks failed"
    assert by["crash1"].status == "error" and "code 3" in by["crash1"].reason and "boom" in by["crash1"].reason
    assert by["hang1"].status == "timeout" and "3 s" in by["hang1"].reason
    for o in outcomes:  # every trace is complete: steps and a result saying how it ended
        result = json.loads((o.trace / "result.json").read_text())
        assert result["status"] == o.status
        assert (o.trace / "steps.jsonl").read_text().strip()
    assert alive_with(token) == []  # the SIGTERM-proof child and its setsid grandchild are gone


@pytest.mark.slow
def test_retries_rerun_failures_and_keep_the_last_attempt(tmp_path):
    suite = tmp_path / "s"
    suite.mkdir()
    make_suite(suite, ["flaky1", "fail1"])
    _, items = discover([suite])
    outcomes, _ = run_suite(items, tmp_path / "out", Options(retries=2), workers=2, command=standin(tmp_path))
    by = {o.item.name: o for o in outcomes}
    assert by["flaky1"].status == "success" and by["flaky1"].attempts == 2
    assert by["flaky1"].trace.name == "flaky1~2"
    assert by["fail1"].status == "failed" and by["fail1"].attempts == 3


def test_progress_falls_back_to_plain_lines(tmp_path, capfd):
    suite = tmp_path / "s"
    suite.mkdir()
    make_suite(suite, ["pass1", "fail1"])
    _, items = discover([suite])
    run_suite(items, tmp_path / "out", Options(), workers=1, command=standin(tmp_path))
    err = capfd.readouterr().err
    assert "[0/2] start fail1" in err
    assert "FAIL fail1 [failed]" in err and "PASS pass1 [success]" in err


def test_progress_on_a_terminal_shows_items_and_the_overall_bar(tmp_path):
    import io

    from rich.console import Console

    from agent.suite.progress import Progress

    suite = tmp_path / "s"
    suite.mkdir()
    make_suite(suite, ["pass1", "fail1"])
    _, items = discover([suite])
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=100, color_system=None)
    run_suite(items, tmp_path / "out", Options(), workers=2, command=standin(tmp_path),
              progress=Progress(len(items), console=console))
    text = buf.getvalue()
    assert "PASS pass1 [success]" in text and "FAIL fail1 [failed]" in text and "checks failed" in text
    # A live line for a running item (which items a refresh catches depends on the machine's load).
    assert "⠋ pass1" in text or "⠋ fail1" in text
    assert "2/2" in text and "1 passed" in text and "1 failed" in text


# ---------------------------------------------------------------- JUnit

def _outcomes(tmp_path):
    from agent.suite.runner import Outcome

    log = tmp_path / "log.txt"
    log.write_text("line one\nbad \x07 char\n")
    mk = lambda name, status, reason="": Outcome(Item("task", tmp_path / f"{name}.yaml", f"{name}.yaml"), status,
                                                 reason, tmp_path / name, log, 1.5, 1, 3)
    return [mk("ok", "success"), mk("bad", "failed", "checks failed: <Saved> not on screen"),
            mk("boom", "error", "app died"), mk("later", "skipped", "interrupted")]


def test_junit_is_what_ci_reads(tmp_path):
    path = write_junit(_outcomes(tmp_path), tmp_path / "j" / "junit.xml", name="shard 1/2")
    root = ET.parse(path).getroot()
    suite = root.find("testsuite")
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors"), suite.get("skipped")) == ("4", "1", "1", "1")
    cases = {c.get("name"): c for c in suite.findall("testcase")}
    assert cases["ok"].find("failure") is None and cases["ok"].get("time") == "1.500"
    failure = cases["bad"].find("failure")
    assert failure.get("message") == "failed: checks failed: <Saved> not on screen" and failure.get("type") == "failed"
    assert cases["boom"].find("error").get("message") == "error: app died"
    props = {p.get("name"): p.get("value") for p in cases["bad"].iter("property")}
    assert props["trace"] == str(tmp_path / "bad") and props["status"] == "failed"
    assert "\\x07" in cases["ok"].find("system-out").text  # control characters made XML-safe


def test_junit_merge_joins_shards(tmp_path):
    outs = _outcomes(tmp_path)
    a = write_junit(outs[:2], tmp_path / "a.xml", name="shard 1/2")
    b = write_junit(outs[2:], tmp_path / "b.xml", name="shard 2/2")
    root = ET.parse(merge_junit([a, b], tmp_path / "m.xml")).getroot()
    assert [s.get("name") for s in root.findall("testsuite")] == ["shard 1/2", "shard 2/2"]
    assert (root.get("tests"), root.get("failures"), root.get("errors")) == ("4", "1", "1")


def test_result_json_is_kept_when_child_wrote_it(tmp_path):
    """The suite never rewrites a child's own verdict when it did not end the child itself."""
    suite = tmp_path / "s"
    suite.mkdir()
    make_suite(suite, ["fail1"])
    _, items = discover([suite])
    (o,), _ = run_suite(items, tmp_path / "out", Options(), command=standin(tmp_path))
    assert Result.model_validate_json((o.trace / "result.json").read_text()).reason == "checks failed"


# ---------------------------------------------------------------- the real thing, end to end

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "qa_suite"


@pytest.mark.slow
def test_example_suite_runs_green_in_two_shards_and_merges(tmp_path):
    """`vlagent suite` on examples/qa_suite (scripted tasks and replayed traces, real sandboxes),
    split in two shards as two CI machines would, then `vlagent report --merge`."""
    import subprocess

    from agent.suite.runner import VLAGENT

    _, items = discover([EXAMPLES])
    for i in (1, 2):
        shard = tmp_path / f"shard{i}"
        proc = subprocess.run([*VLAGENT, "suite", str(EXAMPLES), "--model", "script:{dir}/{name}.replies.yaml",
                               "--workers", "2", "--shard", f"{i}/2", "--out", str(shard / "runs"),
                               "--junit", str(shard / "junit.xml"), "--report", str(shard / "report")],
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
    proc = subprocess.run([*VLAGENT, "report", "--merge", str(tmp_path / "shard1"), str(tmp_path / "shard2"),
                           "--out", str(tmp_path / "merged")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    root = ET.parse(tmp_path / "merged" / "junit.xml").getroot()
    names = sorted(c.get("name") for c in root.iter("testcase"))
    assert names == sorted(it.name for it in items) and len(names) >= 8
    assert (root.get("failures"), root.get("errors")) == ("0", "0")
    report = json.loads((tmp_path / "merged" / "report.json").read_text())
    assert [e["status"] for e in report["entries"]] == ["success"] * len(items)
    assert f"{len(items)} of {len(items)} passed" in (tmp_path / "merged" / "index.html").read_text()


def test_list_shows_a_shard_without_running_it(tmp_path):
    from click.testing import CliRunner

    from agent.cli.suite import suite

    make_suite(tmp_path, [f"t{i}" for i in range(5)])
    outputs = [CliRunner().invoke(suite, [str(tmp_path), "--list", "--shard", f"{i}/2"]) for i in (1, 2)]
    assert all(r.exit_code == 0 for r in outputs)
    listed = [line.split()[1] for r in outputs for line in r.output.splitlines() if line.startswith("task")]
    assert sorted(listed) == [f"t{i}.yaml" for i in range(5)]
    assert not (tmp_path / "runs").exists()
    empty = CliRunner().invoke(suite, [str(tmp_path / "nothing_here")])
    assert empty.exit_code == 2 and "no such file" in empty.output
