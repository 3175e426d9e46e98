"""Secrets: `{secret:NAME}` typed by `vlagent run` with the value filled in at the executor, and the
value, its case-folded and OCR-style forms redacted from every file and line vlagent writes."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent import secrets

ROOT = Path(__file__).resolve().parents[2]
VALUE = "Hunter2Secret"


@pytest.fixture
def registered():
    """Only this test's secret: the registry is process-wide, and earlier tests may have declared others."""
    saved = dict(secrets._values)
    secrets._values.clear()
    secrets.register("PASSWORD", VALUE)
    yield
    secrets._values.clear()
    secrets._values.update(saved)
    secrets._rebuild()


def test_redact_catches_the_value_its_case_and_what_ocr_makes_of_it(registered):
    for leak in (VALUE, VALUE.lower(), VALUE.upper(), "hunter 2secret", "Hunter2SecreT", "HUNTERZSECRET", "hunterzsecret"):
        assert secrets.redact(f"typed [{leak}] here") == "typed [{secret:PASSWORD}] here", leak
    assert secrets.redact("Hunter3Secret and ada@example.com") == "Hunter3Secret and ada@example.com"
    data = {"k": [VALUE, {"x": VALUE.lower()}], VALUE: 1}
    assert VALUE.lower() not in json.dumps(secrets.redact_data(data)).lower()


def test_fill_is_where_the_value_appears_and_an_unknown_secret_is_an_error(registered):
    assert secrets.fill("pw: {secret:PASSWORD}!") == f"pw: {VALUE}!"
    with pytest.raises(Exception, match="NOPE.*not set"):
        secrets.fill("{secret:NOPE}")


def test_a_short_value_is_typed_but_not_redacted(registered):
    """A PIN of two digits still fills in (replay and flows used to refuse it as unset); redacting it
    would blank out ordinary text, so it is left out of redaction."""
    secrets.register("PIN", "42")
    assert secrets.fill("{secret:PIN}#") == "42#"
    assert secrets.redact("room 42, pw Hunter2Secret") == "room 42, pw {secret:PASSWORD}"


def test_the_trace_holds_no_secret(tmp_path, registered):
    from agent.trace import CheckResult, Result, Step, Trace

    trace = Trace(tmp_path / "t")
    trace.add(Step(step=1, raw=f'<tool_call>{{"text": "{VALUE.lower()}"}}</tool_call>', error=f"bad {VALUE}"))
    (tmp_path / "t" / "app.log").write_text(f"login with {VALUE}\n")
    result = trace.finish(Result(status="failed", reason=f"saw {VALUE}", answer=VALUE,
                                 checks=[CheckResult(check="file_contains: x", passed=False, detail=f"starts '{VALUE}'")]))
    assert VALUE not in result.reason + result.answer + result.checks[0].detail  # what JUnit and the terminal get
    for path in (tmp_path / "t").rglob("*"):
        if path.is_file():
            assert VALUE.lower() not in path.read_text(errors="replace").lower(), path


@pytest.mark.slow
def test_vlagent_run_types_a_secret_the_model_never_sees_and_writes_it_nowhere(tmp_path):
    """The real CLI on the real form app: the secret is typed into the Name field; a passing check
    proves it was typed, failing checks quote it (file, OCR of the screen), and nothing written
    by vlagent (trace, result, logs, terminal) holds it in any case."""
    import yaml

    call = lambda action, **a: '<tool_call>%s</tool_call>' % json.dumps(
        {"name": "computer_use", "arguments": {"action": action, **a}})
    task = {"name": "secret_form", "goal": "Log in.", "screen": {"width": 1280, "height": 800},
            "setup": [{"launch": ["{python}", "-m", "sandbox.apps.form", "--out", "{workdir}/form.json"],
                       "wait_for_window": "Registration"}],
            "secrets": {"PASSWORD": "MY_FORM_PASSWORD"},
            "success": [{"file_json": {"path": "{workdir}/form.json", "equals": {"name": VALUE}}},
                        {"file_contains": {"path": "{workdir}/form.json", "text": "not there"}},
                        {"screen_text": "not on the screen"}]}
    (tmp_path / "task.yaml").write_text(yaml.safe_dump(task, sort_keys=False))
    replies = [call("left_click", coordinate=[352, 205]), call("type", text="{secret:PASSWORD}"),
               call("left_click", coordinate=[352, 285]), call("type", text="ada@example.com"),
               call("left_click", coordinate=[152, 524]), call("terminate", status="success")]
    (tmp_path / "replies.yaml").write_text(yaml.safe_dump(replies))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MY_FORM_PASSWORD": VALUE}
    proc = subprocess.run([sys.executable, "-m", "agent.cli", "run", str(tmp_path / "task.yaml"), "--model",
                           f"script:{tmp_path / 'replies.yaml'}", "--trace", str(tmp_path / "trace")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    result = json.loads((tmp_path / "trace" / "result.json").read_text())
    assert [c["passed"] for c in result["checks"]] == [True, False, False], result
    assert "{secret:PASSWORD}" in result["checks"][1]["detail"]  # the quoted file, redacted
    assert "{secret:PASSWORD}" in result["checks"][2]["detail"]  # the OCR of the screen (lower case), redacted
    assert json.loads((tmp_path / "trace" / "workdir" / "form.json").read_text())["name"] == VALUE  # the app got it
    written = [p for p in (tmp_path / "trace").rglob("*") if p.is_file() and p.suffix != ".png" and p.name != "form.json"]
    for text in [proc.stdout, proc.stderr, *(p.read_text(errors="replace") for p in written)]:
        assert VALUE.lower() not in text.lower().replace(" ", "")


def test_masking_paints_over_a_secret_in_saved_screenshots(registered, monkeypatch):
    from PIL import Image, ImageDraw, ImageFont

    from agent.ocr import ocr_text

    img = Image.new("RGB", (700, 120), "white")
    ImageDraw.Draw(img).text((10, 30), f"Password {VALUE} ok", fill="black", font=ImageFont.load_default(size=40))
    assert VALUE.lower() in ocr_text(img).lower()
    assert secrets.mask(img) is img  # off unless a task asks (mask_screenshots: true)
    monkeypatch.setattr(secrets, "mask_screens", True)
    masked = secrets.mask(img)
    assert VALUE.lower() not in ocr_text(masked).lower() and "password" in ocr_text(masked).lower()
