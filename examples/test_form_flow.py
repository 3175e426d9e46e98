"""A QA test of the registration form written with vlagent's pytest plugin (the `vl` fixture).

    pytest examples/test_form_flow.py                                  # Qwen3-VL-2B, cache read-write
    pytest examples/test_form_flow.py --vl-model script:examples/form_flow.replies.yaml --vl-cache read-only \
        --junitxml junit.xml                                           # no model weights, CI style

Each test gets a fresh sandbox running the form (the task's setup) and its own trace under
runs/pytest/; the trace folder, status and model calls land in the JUnit XML as properties. The
first run records the act/click steps in tasks/fill_form_flow.cache.json; later runs replay them
without the model while the form looks the same.
"""
import pytest

pytestmark = pytest.mark.vlagent(task="../tasks/fill_form_flow.yaml")

CONTACT = {"type": "object", "properties": {"name": {"type": "string"}, "email": {"type": "string"}},
           "required": ["name", "email"]}


def test_register_ada(vl):
    vl.wait_for("The Registration form is shown", timeout_s=20)
    vl.act('Type "Ada Lovelace" into the Name field', max_steps=5)
    vl.act('Type "ada@example.com" into the Email field', max_steps=5)
    vl.left_click("the Pro plan option")
    form = vl.query("What do the Name and Email fields hold?", CONTACT, "form")
    assert form["email"] == "ada@example.com"  # plain pytest asserts on values read off the screen
    vl.assert_that(f'The Name field holds "{form["name"]}" and the Pro plan is selected')
    vl.left_click("the Submit button")
    vl.wait_for('A large green "Saved" is shown', timeout_s=10)
    # leaving the test runs the task's success checks (form.json holds Ada, Pro)


def test_the_task_file_steps(vl):
    """The same flow, as written in the task file's steps:."""
    vl.run_steps()
