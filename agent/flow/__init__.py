"""QA flows: short steps (act / assert / query / wait_for / native actions) in task files and from
Python, a verified action cache that replays them without the model, and a pytest plugin.

    from agent.flow import Session
    with Session("tasks/fill_form_flow.yaml", model="script:replies.yaml") as vl:
        vl.act('Type "Ada Lovelace" into the Name field')
        vl.assert_that('The Name field shows "Ada Lovelace"')
"""


def __getattr__(name):  # lazy: agent.task imports agent.steps, which must stay light
    if name in ("Session", "FlowAssertionError", "FlowStepError"):
        import importlib

        return getattr(importlib.import_module("agent.flow.session"), name)
    if name == "run_flow":
        from agent.flow.runner import run_flow

        return run_flow
    raise AttributeError(name)
