"""Each kind of target evidence on real applications under Xvfb: the accessibility tree of GTK apps
(zenity, galculator) published on the sandbox's own bus, the screen that did not change, the target's
own text read on a magnified crop, edge maps under a dark theme, look-alike keys told apart or refused,
ambiguity as an error, and a recording made with real input replayed under a dark theme."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sandbox import atspi
from agent.targets.evidence import describe, find, own_text
from sandbox.session import Sandbox
from sandbox.windows import list_windows

pytestmark = [pytest.mark.timeout(300),
              pytest.mark.skipif(not (shutil.which("zenity") and shutil.which("galculator")),
                                 reason="GTK apps not installed (.ci/install installs them)")]
ROOT = Path(__file__).resolve().parents[2]
ZENITY = ["zenity", "--forms", "--title=Shipping", "--add-entry=Name", "--add-entry=City", "--add-combo=Speed",
          "--combo-values=low|high"]


def _capture(display: str):
    from agent.desktop.x11 import X11Desktop

    with X11Desktop(display) as desktop:
        desktop.wait_stable(2.0)
        return desktop.capture()


def _nodes(tree: atspi.Tree, role: str, min_count: int = 1) -> list[atspi.Node]:
    for _ in range(30):  # the app publishes its tree a moment after its window shows
        nodes = tree.nodes()
        if sum(n.role == role for n in nodes) >= min_count:
            return nodes
        time.sleep(0.2)
    raise AssertionError(f"no {role} in the tree: {[(n.role, n.name) for n in nodes]}")


def _move(sb: Sandbox, title: str, x: int, y: int) -> None:
    subprocess.run(["xdotool", "search", "--onlyvisible", "--name", title, "windowmove", str(x), str(y)],
                   env=sb.env, check=True, timeout=10)
    time.sleep(0.6)


def _inside(px, box, margin=0) -> bool:
    x, y, w, h = box
    return x - margin <= px[0] < x + w + margin and y - margin <= px[1] < y + h + margin


# ------------------------------------------------------------------------------ the accessibility tree

@pytest.mark.slow
def test_the_sandbox_bus_publishes_gtk_widgets_and_an_unnamed_field_is_found_by_its_label(tmp_path):
    with Sandbox(workdir=tmp_path) as sb, atspi.Tree(sb.display) as tree:
        sb.launch(ZENITY)
        sb.wait_for_window("^Shipping$")
        nodes = _nodes(tree, "text", 2)
        city = next(n for n in nodes if n.role == "text" and atspi.name_at(nodes, n.centre).endswith("by 'City'"))
        frame = _capture(sb.display)
        ev = describe(frame, city.centre, list_windows(sb.display), nodes)
        assert ev["a11y"]["role"] == "text" and {"text": "City", "side": "left"} in \
            [{k: l[k] for k in ("text", "side")} for l in ev["a11y"]["labels"]]

        _move(sb, "^Shipping$", 60, 50)
        nodes = tree.nodes()
        now = next(n for n in nodes if n.role == "text" and atspi.name_at(nodes, n.centre).endswith("by 'City'"))
        assert now.box != city.box  # it moved
        d = find(ev, _capture(sb.display), list_windows(sb.display), nodes)
        assert d.method == "accessibility" and _inside(d.pixel, now.box), d
        assert d.detail["labels"] == 1.0 and d.detail["element"] == "text '' by 'City'"


def _loop_on_zenity(tmp_path, goal: str, field: str, actions: list, **cfg):
    """`vlagent run`'s loop on the zenity form: actions are (name, element) pairs, the element a
    field's label or "OK"; returns how the loop ended and its trace."""
    from actions import Policy
    from actions.coords import to_relative
    from agent.desktop.x11 import X11Desktop
    from agent.run.loop import LoopConfig, run_loop
    from agent.trace import Trace
    from fakes import QueueModel, reply

    with Sandbox(workdir=tmp_path) as sb, atspi.Tree(sb.display) as tree:
        sb.launch(ZENITY)
        sb.wait_for_window("^Shipping$")
        nodes = _nodes(tree, "text", 2)
        at = {"OK": next(n for n in nodes if n.role == "push button" and n.name == "OK"),
              field: next(n for n in nodes if n.role == "text" and atspi.name_at(nodes, n.centre).endswith(f"by '{field}'"))}
        with X11Desktop(sb.display) as desktop:
            size = desktop.capture().size
            model = QueueModel(*(reply(action="left_click", coordinate=list(to_relative(at[what].centre, size)))
                                 if name == "left_click" else reply(action=name, **what) for name, what in actions))
            trace = Trace(tmp_path / "trace")
            end = run_loop(goal, model, desktop, Policy(), trace, LoopConfig(timeout_s=60, **cfg))
            trace.flush()
    return end, trace


@pytest.mark.slow
def test_the_agent_loop_records_the_element_from_the_tree_read_while_the_model_decided(tmp_path):
    """`vlagent run`'s loop walks the tree while the model looks at the frame (a web page's walk
    takes 0.2-0.5 s: it must not delay every click) and still records the clicked field and the
    dialog's OK button as they were on that frame."""
    end, trace = _loop_on_zenity(tmp_path, "Click the City field, then OK.", "City",
                                 [("left_click", "City"), ("left_click", "OK"), ("terminate", {"status": "success"})])
    assert end.claimed == "success", end
    click_city, click_ok = trace.steps[0], trace.steps[1]
    assert click_city.target["a11y"]["role"] == "text"
    assert "City" in [label["text"] for label in click_city.target["a11y"]["labels"]]
    assert click_ok.target["a11y"]["name"] == "OK"  # read on the frame the model saw, before the click closed it


@pytest.mark.slow
def test_a_click_whose_evidence_is_still_being_read_is_written_whole_when_the_run_ends_after_it(tmp_path):
    """The OCR of a clicked target overlaps the next model call; a run that ends right after a click
    (here at max_steps) still writes that step, with its evidence, in order, before it returns."""
    import json

    end, trace = _loop_on_zenity(tmp_path, "Type Ada as the name, then OK.", "Name",
                                 [("left_click", "Name"), ("type", {"text": "Ada"}), ("left_click", "OK")], max_steps=3)
    assert end.kind == "max_steps", end
    written = [json.loads(line) for line in (tmp_path / "trace" / "steps.jsonl").read_text().splitlines()]
    assert [s["step"] for s in written] == [1, 2, 3] == [s.step for s in trace.steps]
    assert [s["action"]["action"] for s in written] == ["left_click", "type", "left_click"]
    assert "Name" in [label["text"] for label in written[0]["target"]["a11y"]["labels"]]
    assert written[1]["target"] is None  # typing points at nothing
    assert written[2]["target"]["a11y"]["name"] == "OK" and written[2]["target"]["own_text"] == "OK"
    assert all(s["timings"]["step_ms"] >= s["timings"]["exec_ms"] for s in written)


@pytest.mark.slow
def test_look_alike_keys_are_told_apart_by_their_names_in_the_tree(tmp_path):
    with Sandbox(workdir=tmp_path) as sb, atspi.Tree(sb.display) as tree:
        sb.launch(["galculator"])
        sb.wait_for_window("^galculator$")
        nodes = _nodes(tree, "toggle button", 20)
        keys = {n.name: n for n in nodes if n.role == "toggle button"}
        frame = _capture(sb.display)
        evs = {k: describe(frame, keys[k].centre, list_windows(sb.display), nodes, ocr=False) for k in "5367"}
        _move(sb, "^galculator$", 400, 250)
        nodes = tree.nodes()
        now = {n.name: n for n in nodes if n.role == "toggle button"}
        frame = _capture(sb.display)
        for k, ev in evs.items():
            d = find(ev, frame, list_windows(sb.display), nodes)
            assert d.method == "accessibility" and _inside(d.pixel, now[k].box), (k, d)
            assert d.detail["element"] == f"toggle button {k!r}"


def test_two_elements_alike_are_an_error_naming_both():
    def node(i, parent, role, name, box, depth):
        return atspi.Node(i, parent, role, name, (), box, "app", depth)

    # A window with two identical unnamed entries, recorded when there was one.
    nodes = [node(0, -1, "application", "app", (0, 0, 0, 0), 1), node(1, 0, "frame", "Form", (0, 0, 400, 300), 2),
             node(2, 1, "text", "", (100, 50, 200, 30), 3), node(3, 1, "text", "", (100, 150, 200, 30), 3)]
    ev = atspi.describe(nodes[:3], (150, 60))
    ev["box"] = [100, 100, 200, 30]  # recorded midway between them: its place does not tell them apart
    f = atspi.find(ev, nodes)
    assert f.pixel is None and "ambiguous" in f.reason
    assert {f.node.centre, f.runner_up.centre} == {(200, 65), (200, 165)}


# ------------------------------------------------------------------------------ pixels and text (Tk)

def _access(sb: Sandbox, tmp: Path, *extra: str) -> dict:
    layout = tmp / f"layout{len(list(tmp.glob('layout*')))}.json"
    sb.launch([sys.executable, "-m", "sandbox.apps.access", "--out", str(tmp / "a.json"), "--layout", str(layout),
               *extra])
    sb.wait_for_window("^Access$")
    for _ in range(50):
        if layout.is_file():
            break
        time.sleep(0.1)
    time.sleep(0.5)
    return json.loads(layout.read_text())


def _centre(box) -> tuple[int, int]:
    return box[0] + box[2] // 2, box[1] + box[3] // 2


@pytest.mark.slow
def test_an_unchanged_screen_gives_the_recorded_point_even_for_an_empty_field(tmp_path):
    with Sandbox(workdir=tmp_path, cwd=ROOT) as sb:
        boxes = _access(sb, tmp_path)
        frame = _capture(sb.display)
        point = _centre(boxes["entry Access code"])
        ev = describe(frame, point, list_windows(sb.display))
        assert ev["own_text"] == ""  # an empty field has no text of its own
        d = find(ev, _capture(sb.display), list_windows(sb.display), [], recorded=frame)
        assert d.method == "same screen" and d.pixel == point


@pytest.mark.slow
def test_a_moved_window_that_looks_as_recorded_carries_the_point_with_it(tmp_path):
    with Sandbox(workdir=tmp_path, cwd=ROOT) as sb:
        boxes = _access(sb, tmp_path)
        frame = _capture(sb.display)
        point = _centre(boxes["entry Access code"])
        ev = describe(frame, point, list_windows(sb.display))
        _move(sb, "^Access$", 420, 300)
        [win] = list_windows(sb.display)
        d = find(ev, _capture(sb.display), list_windows(sb.display), [], recorded=frame)
    assert d.method == "same window"
    assert d.pixel == (point[0] + win.x - 120, point[1] + win.y - 100)  # the dialog was at +120+100


@pytest.mark.slow
def test_a_button_is_read_by_its_own_text_and_found_by_edges_under_a_dark_theme_with_moved_widgets(tmp_path):
    with Sandbox(workdir=tmp_path, cwd=ROOT) as sb:
        boxes = _access(sb, tmp_path)
        frame = _capture(sb.display)
        ev = describe(frame, _centre(boxes["button Sign in"]), list_windows(sb.display))
    assert ev["own_text"] == "Sign in"
    with Sandbox(workdir=tmp_path, cwd=ROOT) as sb:
        boxes = _access(sb, tmp_path, "--dark", "--shift", "150")
        d = find(ev, _capture(sb.display), list_windows(sb.display), [])
    assert d.pixel is not None and _inside(d.pixel, boxes["button Sign in"]), d
    assert d.detail["own_text"] == 1.0


@pytest.mark.slow
def test_a_radio_buttons_circle_is_found_by_its_label_under_a_dark_theme_and_a_larger_font(tmp_path):
    """The indicator has no text of its own: its label 'South', read on a magnified window crop, and
    the recorded offset from it (scaled with the font) place it."""
    with Sandbox(workdir=tmp_path, cwd=ROOT) as sb:
        boxes = _access(sb, tmp_path)
        x, y, w, h = boxes["radio South"]
        ev = describe(_capture(sb.display), (x + 10, y + h // 2), list_windows(sb.display))
    assert ev["own_text"] == "" and any(a["text"] == "South" for a in ev["anchors"])
    with Sandbox(workdir=tmp_path, cwd=ROOT) as sb:
        boxes = _access(sb, tmp_path, "--dark", "--font-scale", "1.5")
        d = find(ev, _capture(sb.display), list_windows(sb.display), [])
    assert d.pixel is not None and _inside(d.pixel, boxes["radio South"]), (d, boxes["radio South"])


@pytest.mark.slow
def test_look_alike_keys_without_a_tree_are_found_by_their_own_text_or_refused(tmp_path):
    """galculator's keys by pixels alone (as on a toolkit without a tree): a key is found on the
    moved window only where its own magnified text reads the same, never on a neighbour."""
    with Sandbox(workdir=tmp_path) as sb, atspi.Tree(sb.display) as tree:
        sb.launch(["galculator"])
        sb.wait_for_window("^galculator$")
        nodes = _nodes(tree, "toggle button", 20)
        keys = {n.name: n for n in nodes if n.role == "toggle button"}
        frame = _capture(sb.display)
        evs = {k: describe(frame, keys[k].centre, list_windows(sb.display)) for k in ("5", "3", "MS")}
        _move(sb, "^galculator$", 300, 200)
        now = {n.name: n for n in tree.nodes() if n.role == "toggle button"}
        frame = _capture(sb.display)
        found = 0
        for k, ev in evs.items():
            d = find(ev, frame, list_windows(sb.display), [])  # no tree: pixels and text only
            if d.pixel is not None:
                assert _inside(d.pixel, now[k].box), (k, d)  # never another key
                found += 1
            else:
                assert "ambiguous" in d.reason or "not" in d.reason
        assert found >= 2


# ------------------------------------------------------------------------------ record, then replay

@pytest.mark.slow
def test_a_recording_with_real_input_replays_under_a_dark_theme_clicking_the_same_widgets(tmp_path):
    import yaml

    from agent.replay.player import replay
    from agent.trace import load_steps

    def task(dark: bool) -> Path:
        env = ["env", "GTK_THEME=Adwaita:dark"] if dark else ["env"]
        path = tmp_path / f"task-{dark}.yaml"
        path.write_text(yaml.safe_dump({
            "name": "zenity", "goal": "Fill the shipping form.", "screen": {"width": 1280, "height": 800},
            "setup": [{"launch": env + ZENITY, "wait_for_window": "^Shipping$"}, {"sleep": 1.0}],
            "allow": {"actions": ["left_click", "type", "key", "terminate"]}}))
        return path

    trace = tmp_path / "rec"
    proc = subprocess.Popen(["vlagent", "record", str(trace), "--task", str(task(False)), "--max-seconds", "90"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    display = None
    while display is None:
        line = proc.stdout.readline()
        assert line, proc.communicate()
        m = re.search(r"recording on display (:\d+)", line)
        display = m.group(1) if m else None
        os.environ["XAUTHORITY"] = re.search(r"XAUTHORITY=(\S*?)\)", line).group(1) if m else os.environ.get("XAUTHORITY", "")
    env = {**os.environ, "DISPLAY": display}
    time.sleep(1.0)
    with atspi.Tree(display) as tree:
        nodes = _nodes(tree, "text", 2)
        targets = {atspi.name_at(nodes, n.centre): n.centre for n in nodes
                   if n.role in ("text", "combo box", "push button")}
    for name, typed in (("text '' by 'Name'", "Ada"), ("text '' by 'City'", "Paris"), ("push button 'OK'", None)):
        x, y = targets[name]
        subprocess.run(["xdotool", "mousemove", str(x), str(y)], env=env, check=True)
        time.sleep(0.6)  # a person's pace: the hover shows before the click
        subprocess.run(["xdotool", "click", "1"], env=env, check=True)
        time.sleep(0.6)
        if typed:
            subprocess.run(["xdotool", "type", "--delay", "40", typed], env=env, check=True)
            time.sleep(2.5)  # the typing ends
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=60)
    recorded = load_steps(trace)
    assert [s.kind for s in recorded] == ["left_click", "type", "left_click", "type", "left_click"]
    assert recorded[0].target["a11y"]["labels"][0]["text"] in ("Name", "City")
    assert recorded[4].target["a11y"]["name"] == "OK"  # read before the click closed the dialog

    out = tmp_path / "dark"
    replay(trace, task=task(True), trace_out=out)
    steps = load_steps(out)
    clicks = [s.target["found"]["coordinate"] for s in steps if s.kind == "left_click"]
    assert [c["detail"]["element"] for c in clicks] == ["text '' by 'Name'", "text '' by 'City'", "push button 'OK'"]
    assert all(c["method"] == "accessibility" for c in clicks)
    assert all((out / s.target["recorded_screenshot"]).is_file() for s in steps if s.kind == "left_click")


def test_a_click_whose_effect_is_missing_on_the_tree_is_named():
    """The effect rule on the tree as the reader returns it: a field that did not take the focus, a
    check box that did not change; a popup in the way (another element there now) says nothing."""
    def tree(role, name, states):
        return [atspi.Node(0, -1, "application", "app", (), (0, 0, 0, 0), "app", 1),
                atspi.Node(1, 0, "frame", "Form", ("active",), (0, 0, 400, 300), "app", 2),
                atspi.Node(2, 1, role, name, states, (100, 50, 200, 30), "app", 3)]

    field = {"a11y": atspi.describe(tree("text", "", ("editable", "focusable")), (150, 60))}
    assert "did not take the keyboard focus" in evidence_missing(field, tree("text", "", ("editable",)))
    assert evidence_missing(field, tree("text", "", ("editable", "focused"))) is None
    box = {"a11y": atspi.describe(tree("check box", "Gift wrap", ()), (150, 60))}
    assert "did not change" in evidence_missing(box, tree("check box", "Gift wrap", ()))
    assert evidence_missing(box, tree("check box", "Gift wrap", ("checked",))) is None
    assert evidence_missing(box, tree("menu item", "high", ())) is None


def evidence_missing(ev, nodes):
    from agent.targets.evidence import missing_effect

    return missing_effect(ev, nodes, (150, 60))


# ------------------------------------------------------------------------------ a changed app under `vlagent replay`

def _order_task(folder: Path, page: str) -> Path:
    """The order page (its title says what was ordered) in Chromium; `page` edits the page."""
    import yaml

    html = (ROOT / "tests" / "scripts" / "flows" / "order.html").read_text()
    std = '<label><input type="radio" name="ship" value="Standard" checked> Standard</label>'
    exp = '<label><input type="radio" name="ship" value="Express"> Express</label>'
    html = {"swapped": html.replace(f"{std}\n  {exp}", f"{exp}\n  {std}"),
            "relabelled": html.replace(">Place order<", ">Buy now<")}.get(page, html)
    (folder / f"{page}.html").write_text(html)
    task = {"name": "order", "goal": "Order for Ada: Express, gift wrapped.", "screen": {"width": 1280, "height": 800},
            "setup": [{"launch": ["chromium", "--no-sandbox", "--user-data-dir={workdir}/chrome",
                                  f"--app=file://{folder / page}.html", "--force-renderer-accessibility",
                                  "--window-size=760,560", "--window-position=60,40", "--no-first-run", "--disable-gpu",
                                  "--disable-features=Translate"], "wait_for_window": "^Order", "timeout_s": 60},
                      {"sleep": 1.5}],
            "allow": {"actions": ["left_click", "type", "wait", "terminate"]},
            "success": [{"window_title": "^Order placed - Ordered: Ada, Express, gift$"}]}
    path = folder / f"{page}.yaml"
    path.write_text(yaml.safe_dump(task, sort_keys=False))
    return path


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not installed; .ci/install installs it")
def test_replay_on_a_changed_page_clicks_what_was_clicked_or_stops(tmp_path):
    """The window looks as recorded but two options swapped places, or the button was relabelled:
    the recorded place vouches for nothing (last round: Standard was ordered, and "Buy now" clicked as
    "Place order", each with every step passed). Swapped: Express is found by what it is, at its new
    place; relabelled: the replay stops at that step, before clicking."""
    import yaml

    from agent.trace import load_result, load_steps

    def reply(**a):
        return "<tool_call>" + json.dumps({"name": "computer_use", "arguments": a}) + "</tool_call>"

    script = tmp_path / "replies.yaml"  # Name, type, Express, Gift wrap, Place order (1280x800, window at 60,40)
    script.write_text(yaml.safe_dump([reply(action="left_click", coordinate=[216, 239]), reply(action="type", text="Ada"),
                                      reply(action="left_click", coordinate=[252, 292]),
                                      reply(action="left_click", coordinate=[80, 340]),
                                      reply(action="left_click", coordinate=[123, 397]),
                                      reply(action="wait", time=1), reply(action="terminate", status="success")]))
    vlagent = [sys.executable, "-m", "agent.cli"]
    run = subprocess.run([*vlagent, "run", _order_task(tmp_path, "order"), "--model", f"script:{script}",
                          "--trace", tmp_path / "recorded"], capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stdout + run.stderr  # the recording itself ordered Express

    swapped = subprocess.run([*vlagent, "replay", tmp_path / "recorded", "--task", _order_task(tmp_path, "swapped"),
                              "--trace", tmp_path / "swapped"], capture_output=True, text=True, timeout=240)
    assert swapped.returncode == 0, swapped.stdout + swapped.stderr
    express = load_steps(tmp_path / "swapped")[2]
    assert express.target["found"]["coordinate"]["method"] == "accessibility"
    assert express.target["found"]["coordinate"]["retargeted"]

    relabelled = subprocess.run([*vlagent, "replay", tmp_path / "recorded", "--task", _order_task(tmp_path, "relabelled"),
                                 "--trace", tmp_path / "relabelled"], capture_output=True, text=True, timeout=240)
    result = load_result(tmp_path / "relabelled")
    assert relabelled.returncode == 1 and result.status == "failed", relabelled.stdout
    assert "step 5" in result.reason and "Place order" in result.reason, result.reason
    last = load_steps(tmp_path / "relabelled")[-1]
    assert last.step == 5 and last.error and last.pixel is None  # found nowhere, clicked nowhere
