"""Flows (agent.flow): each step kind's success, failure and bad model output, hooks, results, the
Python session. Real Xvfb, the real form app, real input; scripted replies (and the tiny checkpoint
for the constrained JSON path)."""
from __future__ import annotations

import json

import pytest
from PIL import Image

from agent.backends.script import ScriptBackend
from agent.errors import VlagentError
from agent.flow import ask
from agent.flow.runner import run_flow
from agent.steps import FlowStep, fill
from agent.task import load_task
from agent.trace import load_result, load_steps
from flow_support import (NAME_ACT, PRO, STEPS, SUBMIT, form_task, replies, reply,
                          script, verdict)

QUERY_SCHEMA = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}


def run(task_path, model, tmp_path, cache="off", **kw):
    task = load_task(task_path)
    backend = ScriptBackend.from_file(model[len("script:"):])
    result, folder = run_flow(task, backend, trace_dir=tmp_path / "trace", cache=cache, **kw)
    return result, folder, backend


# ------------------------------------------------------------------------------------------ the file format

def test_step_kinds_and_their_options_are_validated(tmp_path):
    assert FlowStep.model_validate({"assert": "x", "message": "m"}).kind == "assert"
    assert FlowStep.model_validate({"key": "ctrl+a"}).text == "ctrl+a"
    bad = [({"act": "x", "assert": "y"}, "exactly one"), ({}, "exactly one"),
           ({"assert": "x", "max_steps": 3}, "max_steps belongs to act"),
           ({"left_click": {}}, "exactly one of target"), ({"key": "ctrl+"}, "malformed"),
           ({"scroll": {"target": "the list"}}, "scroll needs pixels"),
           ({"query": {"prompt": "p", "schema": {}, "as": "1x"}}, "pattern"), ({"clickk": "x"}, "Extra")]
    for spec, why in bad:
        with pytest.raises(ValueError, match=why):
            FlowStep.model_validate(spec)


def test_task_has_goal_or_steps_and_names_are_defined_before_use(tmp_path):
    path = form_task(tmp_path, [{"assert": "shows {total}"}])
    with pytest.raises(VlagentError) as e:
        load_task(path)
    assert "{total} is not defined" in str(e.value)
    path = form_task(tmp_path, STEPS, goal="do it all")
    with pytest.raises(VlagentError, match="either goal"):
        load_task(path)
    ok = form_task(tmp_path, [{"query": {"prompt": "p", "schema": QUERY_SCHEMA, "as": "form"}},
                              {"assert": "The name is {form.name}"}])
    assert len(load_task(ok).steps) == 2


def test_values_fill_later_steps():
    values = {"form": {"name": "Ada", "tags": ["x", "y"]}, "n": 3}
    assert fill("{form.name} has {n} and {form.tags.1}; {secret:PW} {other}", values) == "Ada has 3 and y; {secret:PW} {other}"
    with pytest.raises(KeyError, match="no 'email'"):
        fill("{form.email}", values)


# ------------------------------------------------------------------------------------------ replies as JSON

def test_replies_are_parsed_and_checked_against_the_schema():
    assert ask.parse_json('```json\n{"pass": true, "reason": "ok"}\n```', ask.VERDICT_SCHEMA)["pass"] is True
    for raw, why in [("yes", "not JSON"), ('{"pass": "yes", "reason": "r"}', "not of type 'boolean'"),
                     ('{"pass": true}', "'reason' is a required property"), ('{"n": NaN}', "NaN is not JSON"),
                     ('{"pass": true, "reason": "r", "x": 1}', "Additional properties")]:
        with pytest.raises(ValueError, match=why):
            ask.parse_json(raw, ask.VERDICT_SCHEMA)
    assert ask.check_schema({"type": "nonsense"}).startswith("not a valid JSON schema")


def test_bad_verdicts_are_sent_back_then_given_up():
    image = Image.new("RGB", (320, 200), "white")
    backend = ScriptBackend(["sure!", verdict(False, "no Saved text")])
    ans = ask.verdict(backend, image, "Saved is shown")
    assert ans.value == {"pass": False, "reason": "no Saved text"} and ans.calls == 2
    backend = ScriptBackend(["nope"] * 3)
    with pytest.raises(ask.InvalidOutput, match="3 replies in a row did not fit; last: not JSON"):
        ask.verdict(backend, image, "Saved is shown")


@pytest.mark.slow
def test_the_tiny_checkpoint_answers_under_the_schema_grammar():
    """The real transformers path: decoding constrained by xgrammar's grammar of the query's schema
    (random weights still write valid JSON of that schema)."""
    from agent.backends import load_backend

    backend = load_backend("tiny-random")
    schema = {"type": "object", "properties": {"count": {"type": "integer"}, "ok": {"type": "boolean"}},
              "required": ["count", "ok"], "additionalProperties": False}
    image = Image.new("RGB", (320, 200), "white")
    raw = ask.generate_json(backend, ask._messages("Answer.", "How many?", image, []), schema, 64)
    value = json.loads(raw)
    assert set(value) == {"count", "ok"} and isinstance(value["count"], int) and isinstance(value["ok"], bool)
    try:  # a verdict's free-text reason may run past the token bound: then a clear InvalidOutput
        ans = ask.verdict(backend, image, "The screen is white")
        assert isinstance(ans.value["pass"], bool) and 1 <= ans.calls <= ask.MAX_TRIES
    except ask.InvalidOutput as e:
        assert "did not fit" in str(e)


# ------------------------------------------------------------------------------------------ whole flows

@pytest.mark.slow
def test_every_step_kind_passes_on_the_real_form(tmp_path):
    steps = [{"wait_for": "The form is shown", "timeout_s": 10}, *STEPS[:3],
             {"query": {"prompt": "What does the Name field hold?", "schema": QUERY_SCHEMA, "as": "form"}},
             {"assert": 'The Name field holds "{form.name}"'},
             {"key": "enter"}]  # Enter submits the form: a native action, no model
    model = script(tmp_path, {**replies(), "The form is shown": [verdict(True)],
                              "What does the Name field hold?": ['{"name": "Ada Lovelace"}'],
                              'The Name field holds "Ada Lovelace"': [verdict(True, "it does")]})
    result, folder, backend = run(form_task(tmp_path, steps), model, tmp_path)
    assert result.status == "success", result.reason
    assert [(f.kind, f.status) for f in result.flow] == [
        ("wait_for", "passed"), ("act", "passed"), ("act", "passed"), ("left_click", "passed"),
        ("query", "passed"), ("assert", "passed"), ("key", "passed")]
    assert [f.model_calls for f in result.flow] == [1, 3, 3, 1, 1, 1, 0]
    assert result.model_calls == backend.calls == 10
    assert result.flow[4].value == {"name": "Ada Lovelace"} and result.flow[5].text == 'The Name field holds "Ada Lovelace"'
    assert result.flow[5].reason == "it does" and (folder / result.flow[5].screenshot).is_file()
    saved = load_result(folder)  # what result.json says
    assert saved.model_calls == 10 and [f.kind for f in saved.flow] == [f.kind for f in result.flow]
    steps_log = load_steps(folder)
    assert [s.flow_step for s in steps_log] == [1, 1, 1, 2, 2, 2, 3, 6]
    assert [s.step for s in steps_log] == list(range(1, 9))  # one numbering for the whole run
    assert json.loads((folder / "workdir" / "form.json").read_text())["plan"] == "Pro"


@pytest.mark.slow
def test_a_false_assert_fails_the_run_with_statement_reason_and_screenshot_and_after_hooks_still_run(tmp_path):
    steps = [{"act": NAME_ACT}, {"assert": "A green Saved is shown", "message": "not saved yet"},
             {"left_click": {"target": SUBMIT}}]
    after = [{"left_click": {"target": PRO}}]
    model = script(tmp_path, {**replies(), "A green Saved is shown": [verdict(False, "no Saved text anywhere")]})
    result, folder, _ = run(form_task(tmp_path, steps, after=after), model, tmp_path)
    assert result.status == "failed"
    assert "not saved yet (model: no Saved text anywhere; screen: screens/steps-01-assert.png)" in result.reason
    assert "steps[1] assert 'A green Saved is shown'" in result.reason
    assert (folder / "screens" / "steps-01-assert.png").is_file()
    assert [(f.phase, f.kind, f.status) for f in result.flow] == [
        ("steps", "act", "passed"), ("steps", "assert", "failed"), ("steps", "left_click", "skipped"),
        ("after", "left_click", "passed")]


@pytest.mark.slow
def test_act_failure_bad_output_and_step_bound(tmp_path):
    steps = [{"act": "Give up"}]
    model = script(tmp_path, {"Give up": [reply(action="terminate", status="failure")]})
    result, _, _ = run(form_task(tmp_path / "a", steps), model, tmp_path / "a")
    assert result.status == "failed" and "steps[0] act 'Give up': not done: the model called terminate(failure)" in result.reason

    model = script(tmp_path, {"Babble": ["I think I should click", "<tool_call>{}</tool_call>", "ok"]})
    result, _, _ = run(form_task(tmp_path / "b", [{"act": "Babble"}]), model, tmp_path / "b")
    assert result.status == "invalid_output" and "3 rejected replies in a row" in result.reason

    model = script(tmp_path, {"Wander": [reply(action="wait", time=0.1)] * 2})
    result, _, _ = run(form_task(tmp_path / "c", [{"act": "Wander", "max_steps": 2}]), model, tmp_path / "c")
    assert result.status == "failed" and "max_steps (2)" in result.reason


@pytest.mark.slow
def test_query_bad_output_and_query_then_grounding_bad_output(tmp_path):
    steps = [{"query": {"prompt": "Read the name", "schema": QUERY_SCHEMA, "as": "form"}}]
    model = script(tmp_path, {"Read the name": ['{"name": 3}', "Ada", '{"nom": "Ada"}']})
    result, _, backend = run(form_task(tmp_path / "q", steps), model, tmp_path / "q")
    assert result.status == "invalid_output" and backend.calls == 3
    assert "did not fit; last: does not fit the schema: 'name' is a required property" in result.reason

    model = script(tmp_path, {PRO: ["the pro one", reply(action="type", text="x"), reply(action="left_click")]})
    result, _, backend = run(form_task(tmp_path / "g", [{"left_click": {"target": PRO}}]), model, tmp_path / "g")
    assert result.status == "invalid_output" and backend.calls == 3 and "groundings rejected" in result.reason


@pytest.mark.slow
def test_wait_for_polls_until_true_and_times_out(tmp_path):
    steps = [{"act": NAME_ACT}, {"wait_for": "The name is typed", "timeout_s": 5, "interval_s": 0.2}]
    model = script(tmp_path, {**replies(), "The name is typed": [verdict(False, "empty"), verdict(True, "Ada")]})
    result, _, _ = run(form_task(tmp_path / "a", steps), model, tmp_path / "a")
    assert result.flow[1].status == "passed" and result.flow[1].model_calls == 2 and result.flow[1].reason == "Ada"

    steps = [{"wait_for": "Saved is shown", "timeout_s": 0.6, "interval_s": 0.2}]
    model = script(tmp_path, {"Saved is shown": [verdict(False, "nothing saved")] * 10})
    result, _, _ = run(form_task(tmp_path / "b", steps, success=[]), model, tmp_path / "b")
    assert result.status == "timeout" and "still not true after 0.6 s (model: nothing saved" in result.reason
    assert 2 <= result.flow[0].model_calls <= 5


@pytest.mark.slow
def test_native_actions_pass_the_policy(tmp_path):
    steps = [{"left_click": {"coordinate": [352, 205]}}, {"type": "rm -rf / --no-preserve-root"}]
    result, _, backend = run(form_task(tmp_path, steps, success=[]), script(tmp_path, []), tmp_path)
    assert result.status == "failed" and "the task's policy refuses" in result.reason and backend.calls == 0
    assert [f.status for f in result.flow] == ["passed", "failed"]


@pytest.mark.slow
def test_python_session_and_its_assertion_error(tmp_path):
    from agent.flow import FlowAssertionError, Session

    task = form_task(tmp_path, [{"act": NAME_ACT}], success=[])
    model = script(tmp_path, {**replies(), "Ada is typed": [verdict(True)], "Saved is shown": [verdict(False, "no")],
                              "Read the name": ['{"name": "Ada Lovelace"}']})
    with Session(task, model=model, cache="off", trace_dir=tmp_path / "s1") as vl:
        vl.run_steps()
        vl.left_click(PRO)
        assert vl.query("Read the name", QUERY_SCHEMA, "form") == {"name": "Ada Lovelace"}
        vl.assert_that("Ada is typed")
        with pytest.raises(FlowAssertionError) as e:
            vl.assert_that("Saved is shown")
        assert str(e.value).splitlines()[:2] == ["'Saved is shown' is false", "  model: no"]
        assert str(e.value).splitlines()[2].endswith("s1/screens/steps-04-assert.png")
    assert vl.result.status == "failed" and vl.result.model_calls == 7
    assert load_result(tmp_path / "s1").flow[-1].status == "failed"


@pytest.mark.slow
def test_a_flow_in_a_suite_shows_its_steps_in_junit_and_the_report(tmp_path):
    """`vlagent suite` on a flow: JUnit carries the model calls and each step with the model's reason
    and screen; the HTML report has the flow table with the screen each assert was judged on."""
    import subprocess
    import sys
    import xml.etree.ElementTree as ET

    from flow_support import ROOT

    suite = tmp_path / "suite"
    form_task(suite, [{"act": NAME_ACT}, {"assert": "Ada is typed"}, {"assert": "Saved is shown"}], success=[])
    script(suite, {**replies(), "Ada is typed": [verdict(True, "the Name field shows Ada Lovelace")],
                   "Saved is shown": [verdict(False, "no Saved text anywhere")]}, "flow.replies.yaml")
    r = subprocess.run([sys.executable, "-m", "agent.cli", "suite", str(suite), "--model", "script:{dir}/{name}.replies.yaml",
                        "--junit", str(tmp_path / "j.xml"), "--report", str(tmp_path / "rep")],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 1, r.stderr
    case = next(ET.parse(tmp_path / "j.xml").getroot().iter("testcase"))
    props = {p.get("name"): p.get("value") for p in case.iter("property")}
    assert props["model_calls"] == "5" and case.find("failure") is not None
    out = case.find("system-out").text
    assert "PASS steps[1] assert: Ada is typed\n    reason: the Name field shows Ada Lovelace" in out
    assert "FAIL steps[2] assert: Saved is shown\n    reason: no Saved text anywhere\n    screen: " in out
    page = next((tmp_path / "rep" / "tasks").glob("*.html")).read_text()
    assert "Flow steps" in page and "no Saved text anywhere" in page and "(5 model calls)" in page
    assert page.count('alt="screen of assert"') == 2


@pytest.mark.slow
def test_ctrl_c_still_runs_the_after_hooks(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    from flow_support import ROOT

    task = form_task(tmp_path, [{"wait_for": "Saved is shown", "timeout_s": 120, "interval_s": 0.5}],
                     after=[{"left_click": {"coordinate": [352, 205]}}, {"type": "cleanup"}], success=[])
    model = script(tmp_path, {"Saved is shown": [verdict(False, "not yet")] * 500})
    trace = tmp_path / "trace"
    proc = subprocess.Popen([sys.executable, "-m", "agent.cli", "run", str(task), "--model", model, "--trace", str(trace)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (trace / "screens" / "steps-00-wait_for.png").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    result = load_result(trace)
    assert result.status == "aborted"
    assert [(f.phase, f.kind, f.status) for f in result.flow] == [
        ("steps", "wait_for", "failed"), ("after", "left_click", "passed"), ("after", "type", "passed")]
    assert result.flow[0].reason == "interrupted (Ctrl-C or SIGTERM)" and result.flow[0].model_calls >= 1
    assert [s.kind for s in load_steps(trace)] == ["left_click", "type"]


@pytest.mark.slow
def test_a_flow_on_the_tiny_checkpoint_ends_with_a_clear_status(tmp_path):
    """The whole flow path on the real transformers code (random weights): an act bounded to 2 steps,
    then an assert under the verdict grammar. Whatever the noise says, the run ends with a status,
    a complete trace and every model call counted."""
    from agent.backends import load_backend

    backend = load_backend("tiny-random")
    task = load_task(form_task(tmp_path, [{"assert": "The Registration form is shown"},
                                          {"act": "Click the Name field", "max_steps": 2}], success=[]))
    result, folder = run_flow(task, backend, trace_dir=tmp_path / "trace", cache="read-write")
    assert result.status in ("success", "failed", "invalid_output", "timeout"), result.reason
    assert result.flow[0].kind == "assert" and 1 <= result.flow[0].model_calls <= ask.MAX_TRIES
    assert result.model_calls == sum(f.model_calls for f in result.flow) >= 1
    assert load_result(folder).model_calls == result.model_calls
    if result.status != "success":
        assert not (tmp_path / "flow.cache.json").exists()  # only a successful run writes the cache


@pytest.mark.slow
def test_a_session_without_a_task_file(tmp_path):
    from agent.flow import FlowStepError, Session

    setup = [{"launch": ["{python}", "-m", "sandbox.apps.form", "--out", "{workdir}/form.json"],
              "wait_for_window": "Registration"}]
    model = script(tmp_path, {**replies(), "Babble": ["no idea"] * 3})
    with Session(setup=setup, model=model, name="adhoc", base_dir=tmp_path, trace_dir=tmp_path / "t") as vl:
        vl.act(NAME_ACT)
        vl.key("ctrl+a")
    # No success checks: a success by its steps, said to be unverified (agent.run.status's table).
    assert vl.result.status == "success" and "all steps passed" in vl.result.reason
    assert (tmp_path / "adhoc.cache.json").exists()  # next to base_dir, named after the session
    with pytest.raises(FlowStepError, match="invalid model output"):
        with Session(setup=setup, model=model, name="adhoc", base_dir=tmp_path, trace_dir=tmp_path / "t2") as vl:
            vl.left_click("Babble")
    assert vl.result.status == "invalid_output"


@pytest.mark.slow
def test_native_steps_type_secrets_without_writing_them_down(tmp_path, monkeypatch):
    from flow_support import at

    monkeypatch.setenv("VLAGENT_SECRET_WHO", "Grace Hopper")
    steps = [{"left_click": {"coordinate": at("name")}}, {"type": "{secret:WHO}"},
             {"left_click": {"coordinate": at("email")}}, {"type": "grace@example.com"}, {"key": "enter"}]
    success = [{"file_json": {"path": "{workdir}/form.json", "equals": {"name": "Grace Hopper"}}}]
    result, folder, backend = run(form_task(tmp_path, steps, success=success, secrets={"WHO": "VLAGENT_SECRET_WHO"}),
                                  script(tmp_path, []), tmp_path)  # a secret is typed only when the task declares it
    assert result.status == "success", result.reason
    assert backend.calls == 0 and all(f.cache is None for f in result.flow)
    assert "Grace" not in (folder / "steps.jsonl").read_text() and "Grace" not in (folder / "result.json").read_text()
