"""`vlagent ui` without a display: the token, Host and Origin checks on every route, past runs from
a folder of traces, a trace's files and nothing outside it, the playground's proposed click, and
the attended-mode rules. The live view, controls and take over run in a real browser in
tests/ui/test_ui_browser.py."""
from __future__ import annotations

import base64
import io
import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image, ImageDraw

from agent.trace import Result, Step, Trace

TOKEN = "test-token-0123456789abcdef"


def make_trace(folder: Path, secret: str | None = None) -> Path:
    trace = Trace(folder)
    (folder / "task.yaml").write_text("name: demo\ngoal: Click the button\n")
    img = Image.new("RGB", (640, 400), "white")
    ImageDraw.Draw(img).rectangle((300, 180, 380, 220), outline="black")
    rel = trace.save_screen(img, "0001")
    reply = '<tool_call>{"name": "computer_use", "arguments": {"action": "left_click", "coordinate": [530, 500]}}</tool_call>'
    step = Step(step=1, raw=reply + (f" typed {secret}" if secret else ""), screenshot=rel, frame=(640, 400))
    trace.add(step)
    trace.finish(Result(status="success", reason="all 1 checks passed", task="demo", checks=[]))
    return folder


@pytest.fixture
def console(tmp_path):
    from agent.ui.app import Console

    make_trace(tmp_path / "runs" / "20260101-demo")
    (tmp_path / "outside.txt").write_text("not for you")
    c = Console(tmp_path / "runs", port=0, token=TOKEN, model="script:" + str(script(tmp_path))).bind().start()
    yield c
    c.stop()


def script(tmp_path: Path) -> Path:
    path = tmp_path / "replies.yaml"
    path.write_text(json.dumps(['<tool_call>{"name": "computer_use", "arguments": '
                                '{"action": "left_click", "coordinate": [500, 500]}}</tool_call>'] * 5))
    return path


def call(c, path: str, *, data: dict | None = None, headers: dict | None = None, token: str | None = TOKEN,
         follow: bool = True) -> tuple[int, dict, bytes]:
    h = dict(headers or {})
    if token and "Authorization" not in h:
        h["Authorization"] = f"Bearer {token}"
    body = json.dumps(data).encode() if data is not None else None
    req = urllib.request.Request(f"http://127.0.0.1:{c.port}{path}", data=body, headers=h)
    opener = urllib.request.build_opener() if follow else urllib.request.build_opener(NoRedirect())
    try:
        with opener.open(req, timeout=60) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *a, **kw):
        return None


@pytest.mark.slow
@pytest.mark.parametrize("path", ["/", "/run?id=20260101-demo", "/playground", "/api/runs",
                                  "/files?id=20260101-demo&f=screens/0001.png", "/api/events?id=x", "/api/frames?id=x"])
def test_every_route_needs_the_token(console, path):
    status, _, body = call(console, path, token=None)
    assert status == 401 and b"token" in body
    assert call(console, path, token="wrong-token-0123456789abc")[0] == 401
    assert call(console, path)[0] in (200, 404)  # with it: the page, or no such live run


def test_the_token_in_the_url_becomes_a_cookie_for_this_port_only(console):
    status, headers, _ = call(console, f"/?token={TOKEN}", token=None, follow=False)
    assert status == 303 and headers["location"] == "/"
    cookie = headers["set-cookie"]
    assert cookie.startswith(f"vlagent_ui_{console.port}={TOKEN}") and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    status, _, body = call(console, "/", token=None, headers={"Cookie": cookie.split(";")[0]})
    assert status == 200 and b"demo" in body


def test_another_host_name_and_another_sites_requests_are_refused(console):
    """DNS rebinding: a page of evil.example resolved to 127.0.0.1 sends its own Host. Cross-site:
    another page in the same browser sends its Origin; a change without any Origin needs the header token."""
    status, _, body = call(console, "/", headers={"Host": f"evil.example:{console.port}"})
    assert status == 403 and b"evil.example" in body
    assert call(console, "/", headers={"Host": f"localhost:{console.port}"})[0] == 200
    cookie = {"Cookie": f"vlagent_ui_{console.port}={TOKEN}"}
    status, _, _ = call(console, "/api/control?id=x", data={"op": "stop"}, token=None,
                        headers={**cookie, "Origin": "http://evil.example"})
    assert status == 403
    status, _, body = call(console, "/api/control?id=x", data={"op": "stop"}, token=None, headers=cookie)
    assert status == 403 and b"Origin" in body
    status, _, _ = call(console, "/api/control?id=x", data={"op": "stop"}, token=None,
                        headers={**cookie, "Origin": f"http://127.0.0.1:{console.port}"})
    assert status == 404  # allowed through: there is no live run x


def test_past_runs_are_listed_and_shown_with_the_reports_step_cards(console):
    status, _, body = call(console, "/api/runs")
    runs = json.loads(body)
    assert status == 200 and [(r["id"], r["status"], r["steps"]) for r in runs] == [("20260101-demo", "success", 1)]
    status, _, page = call(console, "/run?id=20260101-demo")
    page = page.decode()
    assert status == 200 and 'class="step' in page and "left_click at (530, 500)" in page
    assert "/files?id=20260101-demo&amp;f=screens%2F0001.png" in page
    status, headers, png = call(console, "/files?id=20260101-demo&f=screens/0001.png")
    assert status == 200 and png[:4] == b"\x89PNG"
    assert headers["x-frame-options"] == "DENY" and "script-src 'self'" in headers["content-security-policy"]
    for rel in ("../../outside.txt", "/etc/passwd", "screens/../../../outside.txt", "task.yaml", "steps.jsonl"):
        assert call(console, f"/files?id=20260101-demo&f={rel}")[0] == 404
    assert call(console, "/run?id=../outside.txt")[0] == 404


def test_secrets_are_redacted_on_every_page(tmp_path, monkeypatch):
    from agent import secrets
    from agent.ui.app import Console

    monkeypatch.setenv("VLAGENT_SECRET_PIN", "hunter2-very-secret")
    secrets.register("PIN", "hunter2-very-secret")
    make_trace(tmp_path / "runs" / "s", secret="hunter2-very-secret")
    c = Console(tmp_path / "runs", port=0, token=TOKEN).bind().start()
    try:
        page = call(c, "/run?id=s")[2].decode()
        # redacted (as {secret:PIN}, or as another test's secret of the same value: the names are global)
        assert "hunter2" not in page and "{secret:" in page
    finally:
        c.stop()


def png_data_url(size=(640, 400)) -> str:
    img = Image.new("RGB", size, "white")
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def test_the_playground_draws_the_proposed_click(console):
    origin = {"Origin": f"http://127.0.0.1:{console.port}"}
    status, _, body = call(console, "/api/playground", data={"image": png_data_url(), "instruction": "Click the middle"},
                           headers=origin)
    out = json.loads(body)
    assert status == 200, out
    assert out["action"] == {"action": "left_click", "coordinate": [500, 500]} and out["label"] == "left_click at (500, 500)"
    assert "<svg" in out["overlay"] and 'cx="320" cy="200"' in out["overlay"]  # the middle of the 640x400 image
    assert out["image"].startswith("data:image/jpeg;base64,") and out["ms"] >= 0
    status, _, body = call(console, "/api/playground", data={"instruction": "x"}, headers=origin)
    assert status == 400 and b"display" in body


def test_the_playground_answers_a_query_under_its_schema(tmp_path):
    from agent.ui.app import Console

    (tmp_path / "q.yaml").write_text(json.dumps(['{"total": 42.5, "currency": "EUR"}']))
    c = Console(tmp_path / "runs", port=0, token=TOKEN, model=f"script:{tmp_path / 'q.yaml'}").bind().start()
    try:
        schema = {"type": "object", "properties": {"total": {"type": "number"}, "currency": {"type": "string"}},
                  "required": ["total", "currency"], "additionalProperties": False}
        status, _, body = call(c, "/api/playground", data={"image": png_data_url(), "instruction": "What is the total?",
                                                            "schema": json.dumps(schema)},
                               headers={"Origin": f"http://127.0.0.1:{c.port}"})
        out = json.loads(body)
        assert status == 200 and out["value"] == {"total": 42.5, "currency": "EUR"}, out
    finally:
        c.stop()


def test_another_host_needs_a_token():
    from agent.cli.console import ui

    out = CliRunner().invoke(ui, ["--host", "0.0.0.0", "--port", "0"])
    assert out.exit_code == 2 and "--token" in out.output


def test_confirm_rules_pick_the_actions_that_wait_for_a_person():
    from actions.schema import ACTION_ADAPTER
    from agent.ui.attend import ConfirmRules

    why = ConfirmRules(actions=["double_click"], keys=["ctrl+s", "enter"], text=["(?i)delete"], targets=["Place order"]).matcher()
    a = ACTION_ADAPTER.validate_python
    assert why(a({"action": "double_click", "coordinate": [1, 2]}))
    assert why(a({"action": "key", "keys": ["ctrl", "s"]})) and why(a({"action": "key", "keys": ["enter"]}))
    assert why(a({"action": "key", "keys": ["ctrl", "a"]})) is None
    assert why(a({"action": "type", "text": "please DELETE all"})) and why(a({"action": "type", "text": "hello"})) is None
    click = a({"action": "left_click", "coordinate": [10, 10]})
    assert why(click, lambda: "Place order now") and why(click, lambda: "Cancel") is None and why(click) is None


def attended_step(action: dict):
    from actions.schema import ACTION_ADAPTER

    return Step(step=3, frame=(640, 400)), ACTION_ADAPTER.validate_python(action), Image.new("RGB", (640, 400))


def gate(raw: str):
    from actions import Policy, check_reply

    return check_reply(raw, Policy())


@pytest.mark.parametrize("on_timeout, runs", [("reject", False), ("approve", True)])
def test_an_unanswered_approval_times_out_as_the_task_says(on_timeout, runs):
    from agent.ui.attend import Attendant, ConfirmRules

    att = Attendant(ConfirmRules(actions=["left_click"], timeout_s=0.3, on_timeout=on_timeout))
    step, action, frame = attended_step({"action": "left_click", "coordinate": [10, 20]})
    out = att.review(step, action, frame, gate)
    assert (out is not None) == runs
    assert step.decision["by"] == "timeout" and step.decision["verdict"] == on_timeout
    assert step.decision["proposed"] == {"action": "left_click", "coordinate": [10, 20]}
    if not runs:
        assert "no answer within 0.3 s" in step.error


def test_a_correction_passes_the_gate_and_a_rejection_carries_its_note():
    import threading

    from agent.ui.attend import Attendant, Decision

    att = Attendant(every=True)

    def answer(decision):
        threading.Thread(target=lambda: (time_wait(att), att.answer(decision)), daemon=True).start()

    step, action, frame = attended_step({"action": "type", "text": "helo"})
    answer(Decision("correct", "page", action={"action": "type", "text": "hello"}))
    out = att.review(step, action, frame, gate)
    assert out.text == "hello" and step.decision["action"] == {"action": "type", "text": "hello"}
    step, action, frame = attended_step({"action": "type", "text": "x"})
    answer(Decision("correct", "page", action={"action": "key", "keys": ["ctrl", "alt", "delete"]}))
    assert att.review(step, action, frame, gate) is None and "the correction was refused" in step.error
    step, action, frame = attended_step({"action": "left_click", "coordinate": [1, 2]})
    answer(Decision("reject", "page", note="the other button"))
    assert att.review(step, action, frame, gate) is None
    assert step.error == "rejected by a person (page): the other button"


def time_wait(att, timeout_s: float = 5.0):
    import time

    deadline = time.monotonic() + timeout_s
    while att.pending is None and time.monotonic() < deadline:
        time.sleep(0.01)
