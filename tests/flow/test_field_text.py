"""Caches and traces hold no editable field's content unless the task allows it (issue 22, item 3),
red-teamed on a real GTK entry: zenity's entry dialog opens with a reference number in its field
(from the environment: no task file holds it); a flow clicks into the field (the model's act step)
and then OK (a grounded step). Every text file of the flow cache and of the trace is searched for
the number, in whole and in parts (OCR may read part of it): absent; with
`allow.store_field_text: true` the cache has it. What the evidence keeps instead: that it was a
field, and its label."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]
SCREEN = (1280, 800)
VALUE = "ZX-4417-QUARTZ"
PARTS = ("4417", "QUARTZ")
DIALOG = ["sh", "-c", 'exec zenity --entry --title=Reference --text="Order reference" --entry-text="$REFVAL" >/dev/null']


def _layout(tmp_path) -> tuple[list[int], list[int]]:
    """Where the dialog's field and OK button are, in 0..1000 (the flow's script answers with them)."""
    from sandbox import atspi
    from sandbox.session import Sandbox

    with Sandbox(screen=SCREEN, workdir=tmp_path, progress=None, pass_env=["REFVAL"]) as sb, atspi.Tree(sb.display) as tree:
        sb.launch(DIALOG)
        sb.wait_for_window("^Reference$")
        deadline, nodes = time.monotonic() + 20, []
        while not any(n.role == "push button" and n.name == "OK" for n in nodes):
            assert time.monotonic() < deadline, "the dialog never reached the tree"
            time.sleep(0.3)
            nodes = tree.nodes()
        field = next(n for n in nodes if "editable" in n.states)
        ok = next(n for n in nodes if n.role == "push button" and n.name == "OK")
        assert VALUE in field.text  # the field holds the number: the tree would give it to anyone asking
    rel = lambda n: [round((n.box[0] + n.box[2] // 2) / SCREEN[0] * 1000), round(n.centre[1] / SCREEN[1] * 1000)]  # noqa: E731
    return rel(field), rel(ok)


def _flow(folder: Path, field, ok, allow: dict) -> Path:
    call = lambda args: '<tool_call>' + json.dumps({"name": "computer_use", "arguments": args}) + '</tool_call>'  # noqa: E731
    (folder / "replies.yaml").write_text(yaml.safe_dump({
        "Click into the reference field": [call({"action": "left_click", "coordinate": field}),
                                           call({"action": "terminate", "status": "success"})],
        "the OK button": [call({"action": "left_click", "coordinate": ok})]}))
    task = {"name": "field_text", "screen": {"width": SCREEN[0], "height": SCREEN[1]}, "env": ["REFVAL"],
            "setup": [{"launch": DIALOG, "wait_for_window": "^Reference$"}, {"sleep": 1}],
            "allow": {"actions": ["left_click", "terminate"], **allow},
            "steps": [{"act": "Click into the reference field", "max_steps": 3}, {"left_click": {"target": "the OK button"}}]}
    (folder / "field_text.yaml").write_text(yaml.safe_dump(task))
    return folder / "field_text.yaml"


def _found(folder: Path) -> list[str]:
    """Text files under `folder` that hold the number or a part of it (PNG files are pixels)."""
    hits = []
    for path in folder.rglob("*"):
        if path.is_file() and path.suffix != ".png":
            text = path.read_text(errors="replace").upper()
            hits += [f"{path.relative_to(folder)}: {p}" for p in (VALUE, *PARTS) if p in text]
    return hits


def test_a_gtk_fields_content_stays_out_of_the_flow_cache_and_the_trace_unless_allowed(tmp_path, monkeypatch):
    from agent.backends.script import ScriptBackend
    from agent.flow.runner import run_flow
    from agent.task import load_task

    monkeypatch.setenv("REFVAL", VALUE)
    field, ok = _layout(tmp_path / "layout")
    for name, allow in (("kept_out", {}), ("allowed", {"store_field_text": True})):
        folder = tmp_path / name
        folder.mkdir()
        result, trace = run_flow(load_task(_flow(folder, field, ok, allow)), ScriptBackend.from_file(folder / "replies.yaml"),
                                 trace_dir=folder / "trace", cache="read-write")
        assert result.status == "success", (result.reason, [(f.text, f.reason) for f in result.flow])
        cache = json.loads((folder / "field_text.cache.json").read_text())
        clicked = cache["steps"][0]["actions"][0]["target"]
        if name == "kept_out":
            assert _found(folder) == []  # the cache (JSON and its folder), the trace (steps, result, logs)
            assert clicked["a11y"]["role"] == "text" and clicked["a11y"]["text"] == "" and clicked["own_text"] == ""
            assert "Order reference" in [label["text"] for label in clicked["a11y"]["labels"]]  # what the field is
        else:
            assert clicked["a11y"]["text"] == VALUE
            found = _found(folder)
            assert any(h.startswith("field_text.cache.json") for h in found) and any(h.startswith("trace/steps.jsonl") for h in found)


def _record(folder: Path, task: dict, monkeypatch, pick) -> tuple[Path, list]:
    """`vlagent record` of a person clicking where `pick(nodes)` says (nodes: the dialog's tree, once
    `pick` finds its element): the recording's folder and those nodes."""
    import os
    import re
    import signal
    import subprocess
    import sys

    from sandbox import atspi

    root = Path(__file__).resolve().parents[2]
    task = {"name": "field_text", "goal": "Confirm the reference.", "screen": {"width": SCREEN[0], "height": SCREEN[1]},
            **task}
    (folder / "task.yaml").write_text(yaml.safe_dump(task))
    proc = subprocess.Popen([sys.executable, "-m", "agent.cli", "record", str(folder / "rec"), "--task", str(folder / "task.yaml"),
                             "--max-seconds", "90"], cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(root)})
    display, deadline = None, time.monotonic() + 60
    while display is None and time.monotonic() < deadline:
        line = proc.stdout.readline()
        m = re.search(r"recording on display (:\d+)", line)
        if m:
            display = m.group(1)
            monkeypatch.setenv("XAUTHORITY", re.search(r"XAUTHORITY=(\S*?)\)", line).group(1))
    assert display, proc.communicate()
    try:
        with atspi.Tree(display) as tree:
            deadline, point = time.monotonic() + 20, None
            while point is None:
                assert time.monotonic() < deadline, "the dialog never reached the tree"
                time.sleep(0.3)
                nodes = tree.nodes()
                point = pick(nodes)
        time.sleep(1.0)  # the recorder takes input from here on
        subprocess.run(["xdotool", "mousemove", str(point[0]), str(point[1]), "click", "1"],
                       env={**os.environ, "DISPLAY": display}, check=True, timeout=30)
        time.sleep(2.5)
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    steps = [json.loads(line) for line in (folder / "rec" / "steps.jsonl").read_text().splitlines()]
    assert [s for s in steps if s["action"] and s["action"]["action"] == "left_click"], (steps, err[-800:])
    return folder / "rec", nodes


def _field(nodes):
    n = next((n for n in nodes if "editable" in n.states), None)
    return n.centre if n is not None else None


def test_a_recording_keeps_that_a_field_was_clicked_not_what_it_holds(tmp_path, monkeypatch):
    monkeypatch.setenv("REFVAL", VALUE)
    task = {"env": ["REFVAL"], "setup": [{"launch": DIALOG, "wait_for_window": "^Reference$"}]}
    for name, allow in (("kept_out", {}), ("allowed", {"store_field_text": True})):
        (tmp_path / name).mkdir()
        rec, _ = _record(tmp_path / name, {**task, "allow": allow}, monkeypatch, _field)
        click = next(json.loads(line) for line in (rec / "steps.jsonl").read_text().splitlines() if '"left_click"' in line)
        assert click["target"]["a11y"]["role"] == "text"
        found = _found(rec)
        assert (found == []) if name == "kept_out" else any(h.startswith("steps.jsonl") for h in found), found


def test_a_recording_keeps_the_frames_with_the_tasks_mask(tmp_path, monkeypatch):
    """`mask:` in the task boxes the password field in every frame the recording keeps."""
    from PIL import Image

    login = ["sh", "-c", "exec zenity --forms --title=Anmelden --add-entry=Benutzer --add-password=Kennwort >/dev/null"]
    task = {"mask": [{"role": "password text"}],
            "setup": [{"launch": login, "wait_for_window": "^Anmelden$"}, {"sleep": 1},
                      {"run": ["xdotool", "type", "ada"]}, {"run": ["xdotool", "key", "Tab"]},
                      {"run": ["xdotool", "type", "geheim-42"]}]}
    rec, nodes = _record(tmp_path, task, monkeypatch, lambda nodes: _field(nodes) if any(
        n.role == "password text" for n in nodes) else None)  # a click into the name field
    x, y, w, h = next(n.box for n in nodes if n.role == "password text")
    name = next(n.box for n in nodes if n.role == "text" and "editable" in n.states)
    for shot in (rec / "screens").glob("*.png"):
        image = Image.open(shot).convert("RGB")
        assert image.crop((x, y, x + w, y + h)).getextrema() == ((0, 0), (0, 0), (0, 0)), shot
        nx, ny, nw, nh = name
        assert image.crop((nx, ny, nx + nw, ny + nh)).getextrema() != ((0, 0), (0, 0), (0, 0)), shot


def test_a_failed_screen_text_check_quotes_no_fields_content(tmp_path, monkeypatch):
    """A failed `screen_text` check quotes what OCR read (result.json, JUnit, the report): not the
    field's content, unless the task allows it."""
    from agent.desktop.x11 import X11Desktop
    from agent.run.checks import evaluate
    from agent.task import Task
    from sandbox import atspi
    from sandbox.session import Sandbox

    monkeypatch.setenv("REFVAL", VALUE)
    with Sandbox(screen=SCREEN, workdir=tmp_path, progress=None, pass_env=["REFVAL"]) as sb, \
            atspi.Tree(sb.display) as tree, X11Desktop(sb.display) as desk:
        sb.launch(DIALOG)
        sb.wait_for_window("^Reference$")
        deadline = time.monotonic() + 20
        while not any("editable" in n.states for n in tree.nodes()):
            assert time.monotonic() < deadline, "the dialog never reached the tree"
            time.sleep(0.3)
        desk.key(["end"])  # the dialog opens with its text selected (white on blue): plain text reads better
        time.sleep(0.5)
        details = {}
        for name, allow in (("kept_out", {}), ("allowed", {"store_field_text": True})):
            task = Task(name="t", goal="g", allow=allow, success=[{"screen_text": "not on this screen"}])
            [result] = evaluate(task, tmp_path, desk)
            assert not result.passed and "OCR read" in result.detail and "order reference" in result.detail, result
            details[name] = result.detail.upper()
    assert not any(p in details["kept_out"] for p in (VALUE, *PARTS)), details["kept_out"]
    assert any(p in details["allowed"] for p in PARTS), details["allowed"]  # OCR reads it where allowed
