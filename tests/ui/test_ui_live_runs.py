"""Several live runs in one console, and a suite watched item by item, in a real headless browser
(Playwright driving Debian's Chromium): runs in other processes (a second run started from the page,
`vlagent suite --watch`'s items) stream their display and timeline, obey pause and stop, and the
runs page keeps its lists current."""
from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from urllib.parse import urljoin

import pytest

from agent.trace import load_result, load_steps
from test_ui_browser import CHROMIUM, ROOT, browser, call, start_run, wait_for  # noqa: F401 (fixture)

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="no /usr/bin/chromium")]

LONG = """\
name: {name}
goal: Press tab for a long time.
screen: {{width: 1280, height: 800}}
setup:
  - launch: ["{{python}}", "-m", "sandbox.apps.form", "--out", "{{workdir}}/form.json"]
    wait_for_window: Registration
max_steps: 50
timeout_s: 240
allow:
  actions: [key, terminate]
  keys: [tab]
"""
TABS = json.dumps([call({"action": "key", "keys": ["tab"]})] * 50)


def frames_arrive(page) -> None:
    page.wait_for_function("document.getElementById('frames').naturalWidth === 1280", timeout=60_000)


def pause_then_stop(page, live) -> None:
    """From the run's page: pause (no step more than the one under way), then stop (`aborted`)."""
    wait_for(lambda: live.steps >= 1, what="a first step")
    page.click("[data-op=pause]")
    wait_for(lambda: page.inner_text("#state") == "paused", what="paused")
    time.sleep(1.5)
    n = live.steps
    time.sleep(1.5)
    assert live.steps <= n + 1
    page.click("[data-op=stop]")
    page.wait_for_selector("#status .s-aborted", timeout=60_000)


def test_two_live_runs_from_the_page_each_watched_and_stopped(browser, tmp_path):
    from agent.ui.app import Console

    (tmp_path / "long.yaml").write_text(LONG.format(name="tabs"))
    (tmp_path / "tabs.json").write_text(TABS)
    c = Console(tmp_path / "runs", port=0, model=f"script:{tmp_path / 'tabs.json'}").bind().start()
    try:
        runs_page = browser.new_page()
        first = browser.new_page()
        id1 = start_run(first, c, tmp_path / "long.yaml").replace("%2F", "/")
        second = browser.new_page()
        id2 = start_run(second, c, tmp_path / "long.yaml").replace("%2F", "/")
        one, two = c.find_live(id1), c.find_live(id2)
        assert id1 != id2 and not one.remote and two.remote  # the second: a process of its own, attached
        runs_page.goto(c.url("/"))
        rows = runs_page.locator("#live-lists tr:has(span.live)")
        assert rows.count() == 2
        # each run page has its own display and timeline; the first, paused, waits while the second runs
        frames_arrive(first)
        wait_for(lambda: one.steps >= 1, what="the first's first step")
        first.click("[data-op=pause]")
        frames_arrive(second)
        second.wait_for_selector("#timeline section.step", timeout=60_000)
        assert two.display != one.display and two.frames.xauthority
        assert second.locator("#take").count() == 0  # another process: not taken over
        # pause and stop the second from its page: the first goes on
        pause_then_stop(second, two)
        result = load_result(two.folder)
        assert result.status == "aborted" and "console" in result.reason
        assert result.steps == len(load_steps(two.folder)) >= 1
        assert not one.ended and one.control.paused and one.control.stopped is None
        # the runs page, never reloaded, shows the second's end and then the first's
        runs_page.wait_for_selector(f"#live-lists tr:has(a[href*='{id2.split('/')[-1]}']) .s-aborted", timeout=10_000)
        first.click("[data-op=stop]")
        runs_page.wait_for_selector("#live-lists tr .s-aborted >> nth=1", timeout=60_000)
        assert runs_page.locator("#live-lists tr:has(span.live)").count() == 0
    finally:
        c.stop()
    assert all(p.poll() is not None for p in c.launcher.children.values())


def test_a_suite_watched_item_by_item(browser, tmp_path):
    """`vlagent suite --watch`: the URL it prints shows the suite's progress; the running item's run
    streams its display; pause and stop reach that item (it ends `aborted`), the next one passes."""
    items = tmp_path / "items"
    items.mkdir()
    (items / "long.yaml").write_text(LONG.format(name="long"))
    (items / "long.replies.json").write_text(TABS)
    form = (ROOT / "tasks" / "fill_form.yaml").read_text()
    (items / "form.yaml").write_text(form.replace("{taskdir}", str(ROOT / "tasks")))
    (items / "form.replies.json").write_text(json.dumps(__import__("yaml").safe_load(
        (ROOT / "tests" / "scripts" / "fill_form_solution.yaml").read_text())))
    from agent.suite.runner import VLAGENT

    proc = subprocess.Popen([*VLAGENT, "suite", str(items), "--model", "script:{dir}/{name}.replies.json",
                             "--out", str(tmp_path / "out"), "--watch"], stderr=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        url = None
        for line in proc.stderr:
            if line.startswith("watch this suite: "):
                url = line.split(": ", 1)[1].strip()
                break
        assert url, "no URL printed"
        context = browser.new_context()  # (one cookie jar: the URL's token serves both pages)
        page = context.new_page()
        page.goto(url)
        # the suite's row: the long item runs first (longest first), its name links to its live run
        page.wait_for_selector("#live-lists tr[data-suite] td.running a", timeout=60_000)
        assert page.inner_text("#live-lists tr[data-suite] td.done") == "0/2"
        item = context.new_page()
        item.goto(urljoin(page.url, page.get_attribute("#live-lists tr[data-suite] td.running a", "href")))
        assert "Press tab for a long time." in item.content()
        frames_arrive(item)

        class Steps:  # the item's steps, as its trace on disk says
            @property
            def steps(self):
                f = tmp_path / "out" / "traces" / "long" / "steps.jsonl"
                return len(f.read_text().splitlines()) if f.exists() else 0

        pause_then_stop(item, Steps())
        # the runs page (never reloaded) follows the suite to its end: 2 done, 1 passed, 1 failed
        wait_for(lambda: page.inner_text("#live-lists tr[data-suite] td.done") == "2/2", 120, "the suite's end")
        assert page.inner_text("#live-lists tr[data-suite] td.passed") == "1"
        assert page.inner_text("#live-lists tr[data-suite] td.failed") == "1"
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 1 and "1/2 passed" in out
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=60)
    summary = {r["name"]: r for r in json.loads((tmp_path / "out" / "suite.json").read_text())["items"]}
    assert summary["long"]["status"] == "aborted" and "console" in summary["long"]["reason"]
    assert summary["form"]["status"] == "success"



def test_a_suite_started_from_the_page_reports_there(browser, tmp_path):
    from agent.ui.app import Console

    items = tmp_path / "items"
    items.mkdir()
    (items / "form.yaml").write_text((ROOT / "tasks" / "fill_form.yaml").read_text())
    (items / "form.replies.json").write_text(json.dumps(__import__("yaml").safe_load(
        (ROOT / "tests" / "scripts" / "fill_form_solution.yaml").read_text())))
    c = Console(tmp_path / "runs", port=0).bind().start()
    try:
        page = browser.new_page()
        page.goto(c.url("/"))
        page.fill("#start-suite input[name=paths]", str(items))
        page.fill("#start-suite input[name=model]", "script:{dir}/{name}.replies.json")
        page.click("#start-suite button[type=submit]")
        wait_for(lambda: page.inner_text("#suite-msg").startswith("started: "), 30, "the suite's start")
        page.wait_for_selector("#live-lists tr[data-suite]", timeout=60_000)
        wait_for(lambda: page.inner_text("#live-lists tr[data-suite] td.done") == "1/1", 120, "the suite's end")
        assert page.inner_text("#live-lists tr[data-suite] td.passed") == "1"
        out = Path(page.inner_text("#suite-msg").split(": ", 1)[1])
        wait_for(lambda: (out / "suite.json").exists(), 30, "the suite's summary")
        assert json.loads((out / "suite.json").read_text())["items"][0]["status"] == "success"
        assert load_result(out / "traces" / "form").status == "success"
    finally:
        c.stop()
