"""`vlagent report`: the HTML folder from traces (every action kind drawn, rejected replies, secrets
redacted, a torn trace), `--merge` of shards, and the page rendered in a real headless Chromium."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image, ImageDraw

from actions.coords import to_pixels
from agent.cli.report import report
from agent.report.build import build_report, find_traces
from agent.trace import CheckResult, Result, Step, Trace

FRAME = (640, 400)
SECRET = "hunter2-very-secret"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def screen(n: int) -> Image.Image:
    img = Image.new("RGB", FRAME, (40, 44, 60))
    d = ImageDraw.Draw(img)
    d.rectangle([60, 40, 420, 300], fill=(215, 215, 215))
    d.text((80, 60), f"Screen {n}", fill=(0, 0, 0))
    return img


STEPS = [  # (raw reply, validated action or None, error)
    ('<tool_call>{"name": "computer_use", "arguments": {"action": "left_click", "coordinate": [250, 300]}}</tool_call>',
     {"action": "left_click", "coordinate": [250, 300]}, None),
    ('<tool_call>{"name": "computer_use", "arguments": {"action": "type", "text": "' + SECRET + '"}}</tool_call>',
     {"action": "type", "text": SECRET}, None),
    ('<tool_call>{"name": "computer_use", "arguments": {"action": "left_click_drag", "start_coordinate": [100, 100], "coordinate": [600, 500]}}</tool_call>',
     {"action": "left_click_drag", "start_coordinate": [100, 100], "coordinate": [600, 500]}, None),
    ('<tool_call>{"name": "computer_use", "arguments": {"action": "key", "keys": ["ctrl", "alt", "delete"]}}</tool_call>',
     None, "key alt+ctrl+delete is denied: it can leave the app (allow it explicitly in the task)"),
    ("I think I am done <script>alert(1)</script>", None, "no <tool_call> block and no bare JSON object in the reply"),
    ('<tool_call>{"name": "computer_use", "arguments": {"action": "scroll", "pixels": -300}}</tool_call>',
     {"action": "scroll", "pixels": -300}, None),
    ('<tool_call>{"name": "computer_use", "arguments": {"action": "double_click", "coordinate": [500, 500]}}</tool_call>',
     {"action": "double_click", "coordinate": [500, 500]}, None),
    ('<tool_call>{"name": "computer_use", "arguments": {"action": "terminate", "status": "success"}}</tool_call>',
     {"action": "terminate", "status": "success"}, None),
]


def make_trace(folder: Path, status: str = "success", steps=STEPS, torn: bool = False) -> Path:
    t = Trace(folder)
    t.write_task(f"name: {folder.name}\ngoal: Log in as ada\nsecrets: {{pw: REPORT_TEST_PW}}\n")
    for n, (raw, action, error) in enumerate(steps, 1):
        px = start = None  # what the loop records: where the pointer went, in screen pixels
        if action and "coordinate" in action:
            px = to_pixels(action["coordinate"], FRAME)
        if action and "start_coordinate" in action:
            start = to_pixels(action["start_coordinate"], FRAME)
        t.add(Step(step=n, raw=raw, action=action, error=error, screenshot=t.save_screen(screen(n), f"{n:04d}"),
                   frame=FRAME, screen=FRAME, pixel=px, start_pixel=start, timings={"capture_ms": 20.0, "model_ms": 900.0, "exec_ms": 40.0,
                                                   "settle_ms": 300.0, "step_ms": 1260.0}))
    final = t.save_screen(screen(99), "final")
    checks = [CheckResult(check="screen_text: Welcome", passed=status == "success", detail="" if status == "success" else "not on screen")]
    t.finish(Result(status=status, reason=f"{status} because of checks", task=folder.name, model="script:x.yaml",
                    checks=checks, duration_s=9.5, final_screenshot=final))
    if torn:  # a run killed mid-write
        with open(folder / "steps.jsonl", "a") as f:
            f.write('{"step": 99, "raw": "half a li')
    return folder


@pytest.fixture
def traces(tmp_path, monkeypatch):
    monkeypatch.setenv("REPORT_TEST_PW", SECRET)
    return [make_trace(tmp_path / "traces" / "login_ok"), make_trace(tmp_path / "traces" / "login_bad", "failed", torn=True)]


def test_report_has_every_step_drawn_and_no_secret(traces, tmp_path):
    out = tmp_path / "rep"
    index = build_report(traces, out)
    html = index.read_text()
    assert "login_ok" in html and "login_bad" in html and "1 of 2 passed" in html
    page = (out / "tasks" / "login_ok.html").read_text()
    assert len(re.findall(r'<section class="step', page)) == len(STEPS)
    assert page.count('<svg class="overlay') == len(STEPS) - 1  # all but the unparseable reply
    assert 'cx="160" cy="120"' in page  # the click at [250, 300] of a 640x400 frame
    assert '<line x1="64" y1="40" x2="384" y2="200"' in page  # the drag path
    assert 'class="overlay rejected"' in page  # the denied key chord, drawn as refused
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "<script>alert" not in page
    assert "screen_text: Welcome" in page and "final.png" in page
    every_file = "".join(p.read_text(errors="replace") for p in out.rglob("*") if p.suffix in (".html", ".json"))
    assert SECRET not in every_file and "{secret:pw}" in page
    assert all((out / "tasks" / "login_ok" / f"{n:04d}.png").is_file() for n in range(1, len(STEPS) + 1))
    assert (out / "assets" / "report.css").is_file() and (out / "assets" / "report.js").is_file()
    # Offline: nothing is fetched from the network.
    assert not re.search(r'(src|href)="(https?:)?//', every_file)


def test_torn_trace_still_reports(traces, tmp_path):
    build_report(traces, tmp_path / "rep")
    page = (tmp_path / "rep" / "tasks" / "login_bad.html").read_text()
    assert len(re.findall(r'<section class="step', page)) == len(STEPS)  # the torn line is skipped
    assert "failed because of checks" in page


def test_report_command_finds_traces_under_folders(traces, tmp_path):
    assert find_traces([tmp_path / "traces"]) == sorted(traces)
    res = CliRunner().invoke(report, [str(tmp_path / "traces"), "--out", str(tmp_path / "rep")])
    assert res.exit_code == 0, res.output
    assert "report of 2 trace(s)" in res.output
    res = CliRunner().invoke(report, [str(tmp_path / "rep" / "assets"), "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and "no traces" in res.output


def test_merge_joins_shard_reports_and_junit(traces, tmp_path):
    from agent.suite.junit import write_junit
    from agent.suite.runner import Item, Outcome

    for i, trace in enumerate(traces, 1):
        shard = tmp_path / f"shard{i}"
        build_report([trace], shard / "report", names={trace: "same_name"})  # slugs collide on purpose
        status = "success" if i == 1 else "failed"
        write_junit([Outcome(Item("task", trace, f"t{i}.yaml"), status, "", trace, None, 1.0, 1, 3)],
                    shard / "junit.xml", name=f"shard {i}/2")
    res = CliRunner().invoke(report, ["--merge", str(tmp_path / "shard1"), str(tmp_path / "shard2"),
                                      "--out", str(tmp_path / "merged")])
    assert res.exit_code == 0, res.output
    data = json.loads((tmp_path / "merged" / "report.json").read_text())
    assert [e["slug"] for e in data["entries"]] == ["same_name", "same_name-2"]
    second = (tmp_path / "merged" / "tasks" / "same_name-2.html").read_text()
    assert 'src="same_name-2/0001.png"' in second and (tmp_path / "merged" / "tasks" / "same_name-2" / "0001.png").is_file()
    root = ET.parse(tmp_path / "merged" / "junit.xml").getroot()
    assert (root.get("tests"), root.get("failures")) == ("2", "1")
    assert "1 of 2 passed" in (tmp_path / "merged" / "index.html").read_text()


def chromium(url: str, *args: str, profile: Path) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args, url],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_report_renders_in_headless_chromium(traces, tmp_path):
    if CHROMIUM is None:
        reason = "needs Debian's chromium (apt-get install -y chromium)"
        if os.environ.get("CI"):  # CI must test the report in a real browser, not skip it
            pytest.fail(reason)
        pytest.skip(reason)
    out = tmp_path / "rep"
    build_report(traces, out)
    page = (out / "tasks" / "login_ok.html").as_uri()
    # The DOM after the page's scripts ran: every step is there, the overlays too.
    dom = chromium(page, "--dump-dom", profile=tmp_path / "p1")
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert len(re.findall(r'<section class="step', dom.stdout)) == len(STEPS)
    assert dom.stdout.count("<svg") >= len(STEPS) - 1
    # A real rendering: not blank, the dark header and the red click marker both drawn.
    png = tmp_path / "page.png"
    shot = chromium(page, f"--screenshot={png}", "--window-size=1280,1600", "--hide-scrollbars", profile=tmp_path / "p2")
    assert shot.returncode == 0 and png.is_file(), shot.stderr[-2000:]
    img = Image.open(png).convert("RGB")
    assert img.size == (1280, 1600)
    colours = img.getcolors(1 << 20)
    assert colours is not None and len(colours) > 50  # text, screenshots, badges: far from blank
    assert img.getpixel((10, 10)) == (0x17, 0x1A, 0x26)  # the header's colour
    assert any(abs(r - 0xFF) < 8 and abs(g - 0x3B) < 24 and abs(b - 0x6B) < 24 for _, (r, g, b) in colours)  # click marker
    index = chromium((out / "index.html").as_uri(), "--dump-dom", profile=tmp_path / "p3")
    assert index.stdout.count('<tr data-status="') == 2
    # The page's script at work: "after" on step 1 shows step 2's screen, without the overlay.
    clicked = out / "tasks" / "clicked.html"
    clicked.write_text((out / "tasks" / "login_ok.html").read_text().replace(
        "</body>", "<script>document.querySelector('.ba button[data-show=after]').click()</script></body>"))
    dom = chromium(clicked.as_uri(), "--dump-dom", profile=tmp_path / "p4").stdout
    assert '<body class="js">' in dom
    first = dom[dom.index('id="step-1"'):dom.index('id="step-2"')]
    assert 'class="shot after"' in first and '<img src="login_ok/0002.png"' in first
    assert '<button data-show="after" class="on">after</button>' in first


def test_run_output_is_shown_redacted(traces, tmp_path):
    log = tmp_path / "login_ok.log"
    log.write_text(f"\x1b[31mstep 1\x1b[0m typed {SECRET}\nTraceback: boom\n")
    build_report(traces, tmp_path / "rep", logs={traces[0]: log})
    page = (tmp_path / "rep" / "tasks" / "login_ok.html").read_text()
    assert "output of the run (login_ok.log)" in page and "Traceback: boom" in page
    assert SECRET not in page and "\x1b[" not in page


def test_secrets_the_trace_declares_are_redacted_by_agent_secrets(tmp_path, monkeypatch):
    """The report redacts with agent.secrets (one redactor for everything vlagent writes): values of
    the variables a trace's task names, and VLAGENT_SECRET_*, however short (3+ characters)."""
    from agent import secrets

    monkeypatch.setenv("REPORT_TEST_PIN", "4711")
    secrets.register("TOKEN", "glcbt-0123456789")  # as VLAGENT_SECRET_TOKEN would be at import
    t = Trace(tmp_path / "pin")
    t.write_task("name: pin\ngoal: type 4711\nsecrets: {pin: REPORT_TEST_PIN}\n")
    t.add(Step(step=1, raw="typed 4711 and glcbt-0123456789", action={"action": "type", "text": "4711"}))
    build_report([tmp_path / "pin"], tmp_path / "rep")
    page = (tmp_path / "rep" / "tasks" / "pin.html").read_text()
    assert "4711" not in page and "glcbt-0123456789" not in page
    assert "{secret:pin}" in page and "{secret:TOKEN}" in page


def test_target_evidence_shows_its_images(tmp_path):
    import base64
    import io

    buf = io.BytesIO()
    screen(1).crop((60, 40, 160, 80)).save(buf, "PNG")
    b64 = base64.b64encode(buf.getvalue()).decode()
    t = Trace(tmp_path / "rec")
    t.add(Step(step=1, action={"action": "left_click", "coordinate": [100, 100]}, source="human", frame=FRAME,
               screenshot=t.save_screen(screen(1), "0001"),
               target={"patch": {"png": b64, "at": [10, 5]}, "anchors": [{"png": b64, "text": "Name"}]}))
    t.flush()  # screenshots are written off the loop's thread: on disk before the report reads them
    build_report([tmp_path / "rec"], tmp_path / "rep")
    page = (tmp_path / "rep" / "tasks" / "rec.html").read_text()
    assert page.count(f"data:image/png;base64,{b64}") == 2
    assert "<figcaption>anchors[0]</figcaption>" in page and "&lt;image&gt;" in page
    assert '<span class="src">recorded</span>' in page


# ---------------------------------------------------------------- hostile traces

PAYLOADS = {  # where -> markup and script that must stay text
    "raw": "<script>document.title='pwned-raw'</script><img src=x onerror=\"document.title='pwned-img'\">",
    "typed": "</textarea></pre><script>document.title='pwned-typed'</script>\" onmouseover=\"document.title='pwned-attr'",
    "name": "<img src=x onerror=document.title='pwned-name'>",
    "detail": "<svg onload=\"document.title='pwned-check'\"></svg>",
    "goal": "javascript:document.title='pwned-js'",
    "answer": "<a href=\"javascript:document.title='pwned-href'\">click</a>",
}


def hostile_trace(folder: Path) -> Path:
    t = Trace(folder)
    t.write_task(f"name: x\ngoal: {json.dumps(PAYLOADS['goal'])}\n")
    typed = {"action": "type", "text": PAYLOADS["typed"]}
    t.add(Step(step=1, raw=PAYLOADS["raw"], error=f"rejected: {PAYLOADS['raw']}", frame=FRAME,
               screenshot=t.save_screen(screen(1), "0001")))
    t.add(Step(step=2, raw=json.dumps(typed), action=typed, frame=FRAME, screen=FRAME,
               screenshot=t.save_screen(screen(2), "0002"),
               target={"patch": {"png": "x\" onerror=\"document.title='pwned-b64'", "text": PAYLOADS["name"]}}))
    t.add(Step(step=3, action={"action": "answer", "text": PAYLOADS["answer"]}, frame=FRAME,
               screenshot=t.save_screen(screen(3), "0003")))
    t.add(Step(step=4, action={"action": "wait", "time": 1}, screenshot="../../../../../../etc/hostname"))
    t.finish(Result(status="failed", reason=PAYLOADS["detail"], task=PAYLOADS["name"], model=PAYLOADS["raw"],
                    answer=PAYLOADS["answer"],
                    checks=[CheckResult(check=PAYLOADS["name"], passed=False, detail=PAYLOADS["detail"])]))
    return folder


class _Dom:
    """What a page's DOM holds: its scripts, event-handler attributes, links and text."""

    def __init__(self, html: str):
        from html.parser import HTMLParser

        self.scripts, self.handlers, self.links, self.text, self.title = [], [], [], [], ""
        dom = self

        class Parser(HTMLParser):
            in_title = False

            def handle_starttag(self, tag, attrs):
                attrs = dict(attrs)
                if tag == "script":
                    dom.scripts.append(attrs.get("src"))
                dom.handlers += [k for k in attrs if k.startswith("on")]
                dom.links += [v for k, v in attrs.items() if k in ("href", "src") and v]
                self.in_title = tag == "title"

            def handle_endtag(self, tag):
                self.in_title = False

            def handle_data(self, data):
                dom.text.append(data)
                if self.in_title:
                    dom.title += data

        Parser(convert_charrefs=True).feed(html)
        self.text = "".join(self.text)


@pytest.mark.slow
def test_markup_and_script_in_a_trace_stay_text_in_headless_chromium(tmp_path):
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("needs Debian's chromium (apt-get install -y chromium)")
        pytest.skip("needs Debian's chromium (apt-get install -y chromium)")
    trace = hostile_trace(tmp_path / "hostile")
    out = tmp_path / "rep"
    log = tmp_path / "run.log"
    log.write_text(PAYLOADS["raw"])
    build_report([trace], out, logs={trace: log})
    for page, profile in ((out / "tasks" / "hostile.html", "p1"), (out / "index.html", "p2")):
        run = chromium(page.as_uri(), "--dump-dom", "--virtual-time-budget=2000", profile=tmp_path / profile)
        assert run.returncode == 0, run.stderr[-2000:]
        dom = _Dom(run.stdout)  # the DOM after every script on the page ran
        # No injected script ran: each one would have set the title to its own "pwned-..." mark.
        assert dom.title == (f"{PAYLOADS['name']} · vlagent" if page.name == "hostile.html" else "vlagent report")
        assert dom.scripts == ["../assets/report.js" if page.name != "index.html" else "assets/report.js"]
        assert dom.handlers == [], dom.handlers  # no onerror / onload / onmouseover made it in as attributes
        assert not [u for u in dom.links if u.strip().lower().startswith("javascript:")]
        assert not [u for u in dom.links if u == "x"]  # no injected <img src=x>
        assert PAYLOADS["name"] in dom.text and PAYLOADS["detail"] in dom.text  # shown, as text
        if page.name == "hostile.html":
            for where in ("raw", "goal", "answer"):
                assert PAYLOADS[where] in dom.text, where
            assert f'type {json.dumps(PAYLOADS["typed"])}' in dom.text  # the step's label, quoted as JSON
            assert "data:image/png;base64,x" not in run.stdout  # evidence that is not base64 is not an image
    assert not (out / "tasks" / "hostile" / "hostname").exists()  # no file from outside the trace copied in


def test_the_overlay_is_drawn_from_the_recorded_pixels(tmp_path):
    """The frame is half the screen (HiDPI or --max-pixels): the click recorded at screen pixel
    (640, 400) is drawn at frame pixel (320, 200), whatever the raw reply says."""
    t = Trace(tmp_path / "hidpi")
    t.add(Step(step=1, raw=STEPS[0][0].replace("250, 300", "900, 900"), action={"action": "left_click", "coordinate": [500, 500]},
               frame=FRAME, screen=(1280, 800), pixel=(640, 400), screenshot=t.save_screen(screen(1), "0001")))
    t.flush()
    build_report([tmp_path / "hidpi"], tmp_path / "rep")
    page = (tmp_path / "rep" / "tasks" / "hidpi.html").read_text()
    assert 'cx="320" cy="200"' in page and "pointer at px 640, 400" in page
    assert 'cx="576"' not in page  # 900/1000 of the frame: the raw reply is not where the pixels come from
