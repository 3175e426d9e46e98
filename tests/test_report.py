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
        px = None
        if action and "coordinate" in action:
            px = (round(action["coordinate"][0] / 1000 * FRAME[0]), round(action["coordinate"][1] / 1000 * FRAME[1]))
        t.add(Step(step=n, raw=raw, action=action, error=error, screenshot=t.save_screen(screen(n), f"{n:04d}"),
                   frame=FRAME, pixel=px, timings={"capture_ms": 20.0, "model_ms": 900.0, "exec_ms": 40.0,
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
    assert SECRET not in every_file and "••••••" in page
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


def test_redactor_hides_declared_and_likely_secrets_only(monkeypatch):
    from agent.report.build import Redactor

    monkeypatch.setenv("REPORT_TEST_PW", "abc")  # declared by the task: hidden however short
    monkeypatch.setenv("VLAGENT_SECRET_PIN", "4711")  # record/replay's secrets
    monkeypatch.setenv("CI_JOB_TOKEN", "glcbt-0123456789")  # looks secret: hidden
    monkeypatch.setenv("SKIP_TOKEN_CHECK", "true")  # looks secret but too short to guess at
    redact = Redactor("name: t\ngoal: g\nsecrets: {pw: REPORT_TEST_PW}\n")
    assert redact("abc 4711 glcbt-0123456789 true") == "•••••• •••••• •••••• true"


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
    build_report([tmp_path / "rec"], tmp_path / "rep")
    page = (tmp_path / "rep" / "tasks" / "rec.html").read_text()
    assert page.count(f"data:image/png;base64,{b64}") == 2
    assert "<figcaption>anchors[0]</figcaption>" in page and "&lt;image&gt;" in page
    assert '<span class="src">recorded</span>' in page
