"""`vlagent ui` end to end in a real headless browser (Playwright driving Debian's Chromium): a
scripted run started from the page on the Tk form in its own sandbox, watched live; one action
corrected (clicked elsewhere on the live screen), one approved, one rejected with a note that
reaches the model's next prompt, the display taken over
and typed into (human steps), handed back, the run succeeds; a second run paused and stopped
(`aborted`, its trace complete); the playground draws a proposed click; no token, no page."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from agent.trace import load_result, load_steps

CHROMIUM = "/usr/bin/chromium"
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not Path(CHROMIUM).exists() and not os.environ.get("CI"), reason="no /usr/bin/chromium")]
ROOT = Path(__file__).resolve().parents[2]
SHOTS = Path(os.environ.get("VLAGENT_UI_SHOTS", "")) if os.environ.get("VLAGENT_UI_SHOTS") else None

TASK = """\
name: attended_form
goal: Fill in the registration form for Ada Lovelace and submit it.
screen: {width: 1280, height: 800}
setup:
  - launch: ["{python}", "-m", "sandbox.apps.form", "--out", "{workdir}/form.json"]
    wait_for_window: Registration
max_steps: 12
timeout_s: 240
allow:
  actions: [left_click, type, key, terminate]
  keys: [tab, enter]
  max_text_len: 100
  confirm: {actions: [left_click], timeout_s: 120}
success:
  - file_json: {path: "{workdir}/form.json", equals: {name: Ada Lovelace, email: ada@example.com}}
"""


def call(action: dict) -> str:
    return '<tool_call>{"name": "computer_use", "arguments": %s}</tool_call>' % json.dumps(action)


NAME, EMAIL, SUBMIT = [352, 205], [352, 285], [152, 524]  # the form's fixed layout at 1280x800
# Keyed replies (agent/backends/script.py): the longest key found in the prompt answers. The note
# "email first" is in the prompt only after the person's rejection; the typed address only after
# the person typed it while holding the display.
SCRIPT = {
    "submit it": [call({"action": "left_click", "coordinate": NAME}), call({"action": "type", "text": "Ada Lovelace"}),
                  call({"action": "left_click", "coordinate": SUBMIT})],
    "email first": [call({"action": "left_click", "coordinate": EMAIL})],
    "ada@example.com": [call({"action": "left_click", "coordinate": SUBMIT}), call({"action": "terminate", "status": "success"})],
}


@pytest.fixture
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def console(tmp_path):
    from agent.ui.app import Console

    (tmp_path / "task.yaml").write_text(TASK)
    (tmp_path / "script.yaml").write_text(json.dumps(SCRIPT))
    c = Console(tmp_path / "runs", port=0, model=f"script:{tmp_path / 'script.yaml'}").bind().start()
    yield c
    for live in list(c.live.values()):
        live.control.stop()
    for t in (c.launcher.threads if c.launcher else []):
        t.join(timeout=60)
    c.stop()


def wait_for(predicate, timeout_s: float = 60.0, what: str = ""):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def start_run(page, console, task: Path, attended: bool = False) -> str:
    page.goto(console.url("/"))
    page.fill("input[name=task]", str(task))
    if attended:
        page.check("input[name=attended]")
    page.click("#start button[type=submit]")
    page.wait_for_url("**/run?id=*")
    return page.url.split("id=", 1)[1]


def proposal_of(page, step_hint: str | None = None) -> int:
    page.wait_for_selector("#proposal:not([hidden])", timeout=60_000)
    return int(page.inner_text("#p-step"))


def test_watch_approve_reject_take_over_and_hand_back(console, browser, tmp_path):
    page = browser.new_page(viewport={"width": 1500, "height": 1000})
    run_id = start_run(page, console, tmp_path / "task.yaml")
    live = wait_for(lambda: console.live.get(run_id.replace("%2F", "/")), what="the live run")

    # frames of the live display arrive
    page.wait_for_function("document.getElementById('frames').naturalWidth === 1280", timeout=60_000)
    assert live.frames is not None and live.frames.stats["encoded"] >= 1

    # step 1: the click on Name waits for a person (allow.confirm); correct it: click a bit to the right
    assert proposal_of(page) == 1
    assert "left_click" in page.inner_text("#p-label")
    assert page.locator("#proposal-overlay svg.overlay").count() == 1  # the proposed click drawn on the live screen
    if SHOTS:
        page.screenshot(path=str(SHOTS / "console-approval.png"))
    box = page.locator("#frames").bounding_box()
    page.mouse.click(box["x"] + box["width"] * (NAME[0] + 20) / 1000, box["y"] + box["height"] * NAME[1] / 1000)
    assert "correction: left_click" in page.inner_text("#p-label")
    page.click("#correct")
    # step 2 (type) runs on its own; step 3 clicks Submit too early: reject with a note
    wait_for(lambda: page.is_visible("#proposal") and page.inner_text("#p-step") == "3", what="step 3's proposal")
    page.fill("#p-note", "email first")
    page.click("#reject")
    # the note reached the model's next prompt: the script answers "email first"'s reply (a click on Email)
    wait_for(lambda: page.is_visible("#proposal") and page.inner_text("#p-step") == "4", what="step 4's proposal")
    assert "(352, 285)" in page.inner_text("#p-label")
    # take over instead: the pending click is not run; the person clicks Email and types the address
    page.click("#take")
    page.wait_for_selector("body.taken")
    wait_for(lambda: live.state() == "taken over" and live.attendant.pending is None, what="the lease")
    box = page.locator("#frames").bounding_box()
    page.mouse.click(box["x"] + box["width"] * EMAIL[0] / 1000, box["y"] + box["height"] * EMAIL[1] / 1000)
    wait_for(lambda: any(s.source == "human" for s in live.session.trace.steps), what="the human click")
    page.fill("#human-text", "ada@example.com")
    page.press("#human-text", "Enter")
    wait_for(lambda: sum(s.source == "human" for s in live.session.trace.steps) == 2, what="the human typing")
    page.click("#give")
    # the model goes on from the new screen: Submit (approve), then terminate
    wait_for(lambda: page.is_visible("#proposal") and "(152, 524)" in page.inner_text("#p-label"), what="the submit proposal")
    page.click("#approve")
    page.wait_for_selector("#status .s-success", timeout=60_000)
    if SHOTS:
        page.screenshot(path=str(SHOTS / "console-run.png"), full_page=False)

    folder = Path(live.session.folder)
    result = load_result(folder)
    assert result.status == "success", result.reason
    steps = load_steps(folder)
    by_no = {s.step: s for s in steps}
    assert by_no[1].decision["verdict"] == "correct" and by_no[1].decision["by"] == "page"
    assert abs(by_no[1].action.coordinate[0] - (NAME[0] + 20)) <= 2 and abs(by_no[1].action.coordinate[1] - NAME[1]) <= 2
    assert by_no[1].decision["proposed"]["coordinate"] == NAME
    assert by_no[7].decision["verdict"] == "approve"
    assert by_no[3].action is None and by_no[3].decision["verdict"] == "reject" and "email first" in by_no[3].error
    assert by_no[4].decision["by"] == "lease" and by_no[4].action is None  # proposed, not run: the person held the display
    human = [s for s in steps if s.source == "human"]
    assert [s.kind for s in human] == ["left_click", "type"] and human[1].action.text == "ada@example.com"
    assert json.loads((folder / "workdir" / "form.json").read_text())["email"] == "ada@example.com"
    assert steps[-1].kind == "terminate"
    cards = page.locator("#timeline section.step").count()
    assert cards == len(steps)


def test_pause_one_step_and_stop(console, browser, tmp_path):
    forever = [call({"action": "key", "keys": ["tab"]})] * 50
    (tmp_path / "script.yaml").write_text(json.dumps(forever))
    (tmp_path / "task.yaml").write_text(TASK.replace("max_steps: 12", "max_steps: 50"))
    page = browser.new_page()
    run_id = start_run(page, console, tmp_path / "task.yaml")
    live = wait_for(lambda: console.live.get(run_id.replace("%2F", "/")), what="the live run")
    wait_for(lambda: live.steps >= 1, what="a first step")
    page.click("[data-op=pause]")
    wait_for(lambda: page.inner_text("#state") == "paused", what="paused")
    time.sleep(0.5)
    n = live.steps
    time.sleep(1.0)
    assert live.steps <= n + 1  # (a step already under way finishes)
    n = live.steps
    page.click("[data-op=step]")
    wait_for(lambda: live.steps == n + 1, what="one step")
    time.sleep(1.0)
    assert live.steps == n + 1
    page.click("[data-op=stop]")
    page.wait_for_selector("#status .s-aborted", timeout=60_000)
    result = load_result(Path(live.session.folder))
    assert result.status == "aborted" and "console" in result.reason
    assert result.steps == len(load_steps(Path(live.session.folder))) >= 2


def test_without_the_token_no_page(console, browser):
    page = browser.new_context().new_page()
    response = page.goto(f"http://127.0.0.1:{console.port}/")
    assert response.status == 401 and "token" in page.content()


def test_the_playground_draws_a_proposed_click(console, browser, tmp_path):
    from PIL import Image

    (tmp_path / "script.yaml").write_text(json.dumps([call({"action": "left_click", "coordinate": [250, 750]})]))
    Image.new("RGB", (800, 500), "#dde").save(tmp_path / "shot.png")
    page = browser.new_page()
    page.goto(console.url("/playground"))
    page.set_input_files("input[name=file]", str(tmp_path / "shot.png"))
    page.fill("input[name=instruction]", "Click the lower left")
    page.click("#play button[type=submit]")
    page.wait_for_selector("#answer:not([hidden])")
    assert page.inner_text("#a-label") == "left_click at (250, 750)"
    circle = page.locator("#a-overlay svg.overlay circle").first
    assert circle.get_attribute("cx") == "200" and circle.get_attribute("cy") == "375"  # 25 % and 75 % of 800x500
    if SHOTS:
        page.screenshot(path=str(SHOTS / "console-playground.png"))


def test_vlagent_run_and_replay_watch_print_the_url_of_their_own_console(tmp_path):
    """`vlagent run --watch` and `vlagent replay --watch`: the URL is printed, it opens the live
    run (with the token), and the run ends as it would unwatched."""
    watched(["run", str(ROOT / "tasks" / "fill_form.yaml"), "--model",
             f"script:{ROOT / 'tests' / 'scripts' / 'fill_form_solution.yaml'}", "--trace", str(tmp_path / "run")],
            "fill_form")
    assert load_result(tmp_path / "run").status == "success"
    page = watched(["replay", str(tmp_path / "run"), "--trace", str(tmp_path / "replay")], "fill_form")
    assert 'id="take"' not in page  # a replay is paused or stopped, not taken over
    assert load_result(tmp_path / "replay").status == "success"


def watched(args: list[str], name: str) -> str:
    import subprocess
    import urllib.request

    from agent.suite.runner import VLAGENT

    proc = subprocess.Popen([*VLAGENT, *args, "--watch"], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            text=True, cwd=ROOT)
    url, lines, page = None, [], ""
    for line in proc.stderr:
        lines.append(line)
        if line.startswith("watch this run: "):
            url = line.split(": ", 1)[1].strip()
            browserish = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())
            with browserish.open(url, timeout=30) as r:  # the token in the URL: a cookie, then the page
                page = r.read().decode()
            assert r.status == 200 and name in page
            break
    rest = proc.communicate(timeout=180)[1]
    assert url and proc.returncode == 0, "".join(lines) + rest
    return page


@pytest.mark.parametrize("masked", [False, True])
def test_frames_of_a_display_only_while_watched(xvfb, masked):
    """The frame source grabs only while someone watches (a process of its own; in this process when
    the task masks secrets), skips unchanged screens, and stops after the last viewer left."""
    from agent.ui import frames as fr

    source = fr.FrameSource(xvfb, fps=10, mask=(lambda im: im) if masked else None)
    source.watch()
    try:
        first = source.next(0, timeout=20)
        assert first is not None and first.size == (1280, 800) and first.jpeg[:2] == b"\xff\xd8"
        time_ = time.monotonic()
        assert source.next(first.seq, timeout=1.0) is None  # a still screen: nothing new to send
        assert time.monotonic() - time_ >= 0.9
    finally:
        source.leave()
    deadline = time.monotonic() + fr.IDLE_STOP_S + 5
    while source._thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not source._thread.is_alive()
    if not masked:
        assert source.stats["grabber_cpu_s"] >= 0
    source.close()


def test_a_flow_started_from_the_page_is_watched_to_its_end(tmp_path, browser):
    """A flow (steps:) from the page: its steps and flow verdicts arrive live, no take over is offered."""
    from agent.ui.app import Console

    c = Console(tmp_path / "runs", port=0,
                model=f"script:{ROOT / 'tests' / 'scripts' / 'fill_form_flow.replies.yaml'}").bind().start()
    try:
        page = browser.new_page()
        run_id = start_run(page, c, ROOT / "tasks" / "fill_form_flow.yaml")
        live = wait_for(lambda: c.live.get(run_id), what="the live run")
        assert page.locator("#take").count() == 0
        page.wait_for_selector("#status .s-success", timeout=120_000)
        assert live.mode == "flow" and any("flow step" in e.get("text", "") for e in live.log)
        assert page.locator("#timeline section.step").count() == live.steps >= 1
    finally:
        for t in (c.launcher.threads if c.launcher else []):
            t.join(timeout=60)
        c.stop()


ASK_TASK = """\
name: ask_form
goal: Fill in the registration form for Ada Lovelace and submit it.
screen: {width: 1280, height: 800}
setup:
  - launch: ["{python}", "-m", "sandbox.apps.form", "--out", "{workdir}/form.json"]
    wait_for_window: Registration
max_steps: 8
timeout_s: 240
allow:
  actions: [left_click, type, terminate, ask_user]
  max_text_len: 100
success:
  - file_json: {path: "{workdir}/form.json", equals: {name: Ada Lovelace, email: ada@example.com}}
"""
# Keyed replies: the form is filled only once the person's answer is in the model's prompt.
ASK_SCRIPT = {
    "Ada Lovelace": [call({"action": "ask_user", "text": "Which email address should I use?"})],
    # (in the prompt once the person answered: as the next step's feedback, then in the history)
    "ada@example.com": [call({"action": "left_click", "coordinate": NAME}), call({"action": "type", "text": "Ada Lovelace"}),
                        call({"action": "left_click", "coordinate": EMAIL}), call({"action": "type", "text": "ada@example.com"}),
                        call({"action": "left_click", "coordinate": SUBMIT}), call({"action": "terminate", "status": "success"})],
}


def test_the_model_asks_the_page_shows_the_question_and_the_answer_reaches_its_next_prompt(console, browser, tmp_path):
    (tmp_path / "ask.yaml").write_text(ASK_TASK)
    (tmp_path / "script.yaml").write_text(json.dumps(ASK_SCRIPT))
    page = browser.new_page(viewport={"width": 1500, "height": 1000})
    run_id = start_run(page, console, tmp_path / "ask.yaml")
    live = wait_for(lambda: console.live.get(run_id.replace("%2F", "/")), what="the live run")
    page.wait_for_selector("#p-question:not([hidden])", timeout=60_000)
    assert page.inner_text("#p-qtext") == "Which email address should I use?"
    assert page.is_hidden("#p-action") and page.inner_text("#state") == "waiting for you"
    if SHOTS:
        page.screenshot(path=str(SHOTS / "console-question.png"))
    page.fill("#p-answer", "ada@example.com")
    page.click("#answer")
    page.wait_for_selector("#status .s-success", timeout=60_000)
    folder = Path(live.session.folder)
    steps = load_steps(folder)
    assert [s.kind for s in steps] == ["ask_user", "left_click", "type", "left_click", "type", "left_click", "terminate"]
    d = steps[0].decision
    assert (d["verdict"], d["by"], d["note"]) == ("answer", "page", "ada@example.com")
    assert d["proposed"]["text"] == "Which email address should I use?" and d["asked"] <= d["decided"]
    assert json.loads((folder / "workdir" / "form.json").read_text())["email"] == "ada@example.com"
    assert "answer" in page.inner_text("#decision-1") and "ada@example.com" in page.inner_text("#decision-1")


def test_an_attended_flow_asks_about_its_cached_steps_and_its_models_too(tmp_path, browser):
    """A flow started attended from the page: every action that reaches the desktop (cached steps,
    the model's fall-back, act loops) waits for the person; a rejected cached click goes to the model
    with the person's note, whose own click is approved."""
    import shutil

    from agent.ui.app import Console

    for name in ("fill_form_flow.yaml", "fill_form_flow.cache.json", "fill_form_flow.cache"):  # (a healed run writes its cache)
        (shutil.copytree if (ROOT / "tasks" / name).is_dir() else shutil.copy)(ROOT / "tasks" / name, tmp_path / name)
    c = Console(tmp_path / "runs", port=0,
                model=f"script:{ROOT / 'tests' / 'scripts' / 'fill_form_flow.replies.yaml'}").bind().start()
    try:
        page = browser.new_page(viewport={"width": 1500, "height": 1000})
        run_id = start_run(page, c, tmp_path / "fill_form_flow.yaml", attended=True)
        live = wait_for(lambda: c.live.get(run_id), what="the live run")
        asked = []
        while not live.ended:
            pending = live.attendant.pending
            if pending is None or page.is_hidden("#proposal") or int(page.inner_text("#p-step")) != pending.step:
                time.sleep(0.1)
                continue
            asked.append(pending.action)
            rejecting = len(asked) == 5  # the cached click on the Pro plan (after Name's and Email's click and type)
            if rejecting:
                page.fill("#p-note", "not yet, check the plan")
            page.click("#reject" if rejecting else "#approve")
            wait_for(lambda: live.attendant.pending is not pending, what="the decision")
        page.wait_for_selector("#status .s-success", timeout=60_000)
        steps = load_steps(Path(live.session.folder))
        assert all(s.decision and s.decision["by"] == "page" for s in steps)  # every action was asked
        rejected = [s for s in steps if s.decision["verdict"] == "reject"]
        assert len(rejected) == 1 and rejected[0].action is None and "check the plan" in rejected[0].error
        assert rejected[0].source == "replay"  # a cached action
        pro = [f for f in load_result(Path(live.session.folder)).flow if f.text == "the Pro plan option"][0]
        assert pro.cache == "healed" and pro.model_calls == 1  # the model did the step the person refused
        assert {s.source for s in steps} == {"replay", "model"} and len(asked) == len(steps)
    finally:
        for t in (c.launcher.threads if c.launcher else []):
            t.join(timeout=60)
        c.stop()
