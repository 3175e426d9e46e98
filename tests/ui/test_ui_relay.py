"""Runs and suites of other processes watched from a console (agent/ui/relay.py), and several live
runs in one console's registry; no display (the browser test watches real runs in other processes)."""
from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from agent.run import events as ev
from agent.run.session import RunSession
from agent.task import Task

TOKEN = "t" * 32


@pytest.fixture
def console(tmp_path):
    from agent.ui.app import Console

    c = Console(tmp_path / "runs", port=0, token=TOKEN).bind().start()
    yield c
    c.stop()


def wait_for(predicate, timeout_s: float = 10.0, what: str = ""):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def get(c, path: str) -> bytes:
    req = urllib.request.Request(f"http://127.0.0.1:{c.port}{path}", headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.read()


def relayed_session(console, folder: Path, name: str, monkeypatch):
    """A RunSession whose SessionHook finds the console in its environment (as a suite item's would)."""
    from agent.ui.relay import CONSOLE_ENV
    from agent.ui.watch import SessionHook

    monkeypatch.setenv(CONSOLE_ENV, console.relay.path)
    session = RunSession(Task(name=name, goal=f"the goal of {name}"), mode="loop", trace_dir=folder)
    hook = SessionHook()
    hook(session)
    return session, hook


def test_several_runs_attach_each_with_its_own_page_events_and_controls(console, tmp_path, monkeypatch):
    runs = console.runs_dir
    a, hook_a = relayed_session(console, runs / "a", "alpha", monkeypatch)
    b, hook_b = relayed_session(console, runs / "b", "beta", monkeypatch)
    with a, b:
        la = wait_for(lambda: console.find_live("a"), what="run a attached")
        lb = wait_for(lambda: console.find_live("b"), what="run b attached")
        assert la.remote and lb.remote and la.task == "alpha" and lb.goal == "the goal of beta"
        a.publish(ev.ModelAnswered, step=1, raw="<tool_call>a</tool_call>", ms=12.0)
        b.publish(ev.ModelAsked, step=1)
        wait_for(lambda: any(e.get("raw") == "<tool_call>a</tool_call>" for e in la.log), what="a's reply")
        wait_for(lambda: any(e.get("text", "").endswith("thinking") for e in lb.log), what="b's question")
        assert not any(e.get("raw") for e in lb.log)  # each run its own log
        # the runs page lists both live; each has its own page
        listed = {r["id"]: r for r in json.loads(get(console, "/api/runs"))}
        assert listed["a"]["live"] and listed["b"]["live"] and listed["a"]["task"] == "alpha"
        assert b"alpha" in get(console, "/run?id=a") and b"beta" in get(console, "/run?id=b")
        assert b'id="take"' not in get(console, "/run?id=a")  # another process: paused, stopped, not taken over
        # controls reach the run they are for, in its own process
        la.control_op("pause")
        wait_for(lambda: a.control.paused, what="a paused")
        assert not b.control.paused
        la.control_op("resume")
        wait_for(lambda: not a.control.paused, what="a resumed")
        lb.control_op("stop")
        wait_for(lambda: b.control.stopped, what="b stopped")
        assert "console" in b.control.stopped and a.control.stopped is None
        with pytest.raises(PermissionError):
            la.take_over()
    hook_a.close()
    hook_b.close()
    wait_for(lambda: la.ended and lb.ended, what="both ended")
    assert la.status == a.result.status and any(e["type"] == "ended" for e in la.log)
    assert not console.runs.running()


def test_a_secret_is_redacted_in_the_runs_own_process_before_it_is_relayed(console, tmp_path, monkeypatch):
    from agent import secrets

    session, hook = relayed_session(console, console.runs_dir / "s", "secretive", monkeypatch)
    with session:
        live = wait_for(lambda: console.find_live("s"), what="attached")
        arrived = []  # the events as they came over the socket (before the console's own redaction)
        live.session.bus.subscribe(arrived.append)
        state = secrets.snapshot()
        secrets.register("password", "hunter2-correct-horse")
        try:
            session.publish(ev.ModelAnswered, step=1, raw='type "hunter2-correct-horse"', ms=1.0)
            got = wait_for(lambda: next((e for e in arrived if isinstance(e, ev.ModelAnswered)), None), what="the reply")
        finally:
            secrets.restore(state)
    hook.close()
    assert got.raw.startswith("type ") and "hunter2" not in got.raw


def test_a_run_whose_process_dies_ends_with_the_reason(console, tmp_path):
    from agent.ui.relay import connect

    line = connect(console.relay.path)
    folder = console.runs_dir / "dead"
    folder.mkdir(parents=True)
    line.send({"hello": {"kind": "run", "id": "r1", "task": "doomed", "mode": "loop", "folder": str(folder), "pid": 1}})
    line.send({"event": "RunStarted", "t": time.time(), "fields": {"task": "doomed", "mode": "loop", "trace_dir": str(folder)}})
    line.send({"event": "NotAnEvent", "fields": {"x": 1}})  # skipped, not fatal
    live = wait_for(lambda: console.find_live("dead"), what="attached")
    wait_for(lambda: live.status == "running", what="started")
    line.close()  # killed without a word
    wait_for(lambda: live.ended, what="ended")
    assert live.status == "error" and "without a result" in live.reason


def test_a_suite_reports_its_progress_and_its_running_items_link_to_their_runs(console, tmp_path, monkeypatch):
    from agent.suite.items import Item, Outcome
    from agent.suite.progress import Progress
    from agent.ui.relay import SuiteRelay

    class Child:  # what Progress reads of a running item (agent.suite.child.Child)
        def __init__(self, name, trace):
            self.item, self.trace, self.attempt = Item("task", Path(f"{name}.yaml"), f"{name}.yaml"), trace, 1

        def steps(self):
            return 0

    out = console.runs_dir / "suite1"
    one, two = Child("one", out / "traces" / "one"), Child("two", out / "traces" / "two")
    session, hook = relayed_session(console, one.trace, "one", monkeypatch)
    with SuiteRelay(Progress(2), console.relay.path, name="suite1", out=out) as progress:
        with session:
            progress.started(one)
            progress.started(two)
            view = wait_for(lambda: console.runs.suite_summaries(), what="the suite")[0]
            wait_for(lambda: len(console.runs.suite_summaries()[0]["running"]) == 2, what="two running")
            running = {r["name"]: r["id"] for r in console.runs.suite_summaries()[0]["running"]}
            assert running == {"one": "suite1/traces/one", "two": None}  # two has not attached (yet)
            page = get(console, "/").decode()
            assert "suite1" in page and "/run?id=suite1%2Ftraces%2Fone" in page
        hook.close()
        progress.finished(one, Outcome(one.item, "success", "", one.trace, None, 1.0, 1, 0))
        progress.finished(two, Outcome(two.item, "failed", "a check failed", two.trace, None, 1.0, 1, 0))
        s = wait_for(lambda: (x := console.runs.suite_summaries()[0])["done"] == 2 and x, what="both done")
        assert (s["passed"], s["failed"], s["total"], s["running"]) == (1, 1, 2, [])
    wait_for(lambda: console.runs.suite_summaries()[0]["status"] == "done", what="the suite's end")
    assert view["name"] == "suite1"


def test_a_console_in_the_environment_that_is_gone_leaves_the_run_unwatched(tmp_path, monkeypatch):
    from agent.ui.relay import CONSOLE_ENV
    from agent.ui.watch import SessionHook

    monkeypatch.setenv(CONSOLE_ENV, str(tmp_path / "no-such.sock"))
    session = RunSession(Task(name="alone", goal="g"), mode="loop", trace_dir=tmp_path / "alone")
    hook = SessionHook()
    hook(session)
    with session:
        session.publish(ev.ModelAsked, step=1)
    hook.close()
    assert session.result is not None and (tmp_path / "alone" / "result.json").exists()
    assert os.environ[CONSOLE_ENV].endswith("no-such.sock")


def test_while_one_runs_in_the_console_a_run_with_approvals_is_refused(console, tmp_path):
    """A second run goes to a process of its own, where no page can approve its actions: a run
    that would ask (attended, or its task's allow.confirm) waits for the console's own process."""
    class Busy:  # the console's own live run (what the registry reads of it)
        remote, ended, task, url_id, folder, started = False, False, "first", "first", tmp_path, 0.0

    console.runs.live["first"] = Busy()
    (tmp_path / "ask.yaml").write_text("name: ask\ngoal: g\nallow:\n  actions: [left_click]\n  confirm: {actions: [left_click]}\n")
    for body in ({"task": str(tmp_path / "ask.yaml")},
                 {"task": str(tmp_path / "ask.yaml").replace("ask.yaml", "plain.yaml"), "attended": True}):
        (tmp_path / "plain.yaml").write_text("name: plain\ngoal: g\n")
        req = urllib.request.Request(f"http://127.0.0.1:{console.port}/api/runs", data=json.dumps(body).encode(),
                                     headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=10)
        assert e.value.code == 400 and "approvals" in json.load(e.value)["error"]
    del console.runs.live["first"]


def test_the_registry_keeps_the_newest_ended_runs(tmp_path, monkeypatch):
    from agent.ui import runs as r

    class Run:
        remote, started, closed = True, 0.0, False

        def __init__(self, i, ended):
            self.url_id, self.ended, self.folder = f"run{i}", ended, tmp_path

        def close(self):
            self.closed = True

    monkeypatch.setattr(r, "MAX_ENDED_LIVE", 2)
    reg = r.Registry(r.TraceIndex(tmp_path))
    made = [Run(0, False)] + [Run(i, True) for i in range(1, 5)]
    for run in made:
        reg.add(run)
    assert list(reg.live) == ["run0", "run3", "run4"]  # the live one and the two newest ended
    assert made[1].closed and made[2].closed and not made[3].closed
