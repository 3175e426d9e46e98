"""The Python API: a session bound to a sandbox and a model, one call per flow step.

    from agent.flow import Session

    with Session("tasks/fill_form_flow.yaml", model="script:tests/scripts/fill_form_flow.replies.yaml") as vl:
        vl.act('Type "Ada Lovelace" into the Name field')
        vl.left_click("the Pro plan option")
        form = vl.query("What do the Name and Email fields hold?", {"type": "object", ...})
        vl.assert_that(f'The Name field holds "{form["name"]}"')
    print(vl.result.status, vl.result.model_calls, vl.folder)

The task file gives the sandbox (screen, setup: the app), the policy (allow:), the success checks, and
the before:/after: hooks (before runs on entry, after on exit, also after a failure or Ctrl-C); its
steps: run with run_steps(). Without a task file, `setup=` lists setup steps like a task's.
A failed assert or wait_for raises FlowAssertionError (an AssertionError, so pytest shows it as
one); any other failed step raises FlowStepError. Either way the trace is complete on exit, and the
action cache (agent.flow.cache) is written only when the session ended successfully.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from agent.errors import VlagentError
from agent.flow.runner import Counted, Flow, StepFailed, flow_end, open_cache
from agent.steps import FlowStep
from agent.trace import Result


class FlowStepError(VlagentError):
    """A flow step (act, query, a click) failed; the message names the step and why."""


class FlowAssertionError(AssertionError):
    """An assert or wait_for was false: the statement, the model's reason and the screenshot."""


class Session:
    def __init__(self, task: str | Path | Any = None, *, model: str | Any = None, display: str | None = None,
                 cache: str = "read-write", trace_dir: str | Path | None = None, setup: list[dict] | None = None,
                 name: str = "session", base_dir: str | Path = ".", backend: str = "auto", base_url: str | None = None):
        """Without a task file: a bare sandbox running `setup`, the default policy, and the cache
        `<base_dir>/<name>.cache.json`."""
        from agent.task import Task, load_task

        if task is None:
            self.task = Task.model_validate({"name": name, "goal": "a vlagent Python session", "setup": setup or []})
            self.task.base_dir = Path(base_dir).resolve()
        else:
            self.task = task if isinstance(task, Task) else load_task(task)
        self._model, self._backend_kind, self._base_url = model, backend, base_url
        self.display, self.trace_dir = display, trace_dir
        self.cache = open_cache(self.task, cache)  # a corrupt file fails here, before anything starts
        self.result: Result | None = None
        self.folder: Path | None = None
        self.failure: StepFailed | None = None
        self._index = 0

    # -- lifecycle --------------------------------------------------------------------------------------
    def __enter__(self) -> "Session":
        from agent.backends import DEFAULT_MODEL, load_backend
        from agent.run.session import RunSession

        model = self._model if self._model is not None else DEFAULT_MODEL
        if isinstance(model, str):
            opts = {"base_url": self._base_url} if self._backend_kind == "openai" else {}
            model = load_backend(model, backend=self._backend_kind, **opts)
        self.backend = Counted(model)
        self.run = RunSession(self.task, mode="flow", model=self.backend.name, trace_dir=self.trace_dir,
                              display=self.display, reraise=True)
        self.run.__enter__()
        self.trace, self.result, self.folder = self.run.trace, self.run.result, self.run.trace.folder
        try:
            self.env = self.run.start()
            self.flow = Flow(self.task, self.backend, self.env.desktop, self.env.sandbox.display, self.trace,
                             self.cache, time.monotonic() + self.task.timeout_s, session=self.run)
            self._raise(self.flow.phase("before", self.task.before))
        except BaseException as e:
            self.__exit__(type(e), e, e.__traceback__)
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        flow, raised = getattr(self, "flow", None), None
        try:
            if flow is not None:
                try:
                    after = flow.phase("after", self.task.after, always=True)
                    self.failure = self.failure or after
                    if exc is None:
                        self.run.finish(flow_end(self.failure), checks=self.failure is None)
                        if self.result.status == "success" and self.cache is not None:
                            self.cache.save()
                finally:
                    self.result.flow, self.result.model_calls = flow.results, self.backend.calls
                    flow.close()
        except BaseException as e:  # the app died, the display went away, Ctrl-C in the after: hooks
            if exc is None:
                exc_type, exc, tb, raised = type(e), e, e.__traceback__, e
        if isinstance(exc, (FlowAssertionError, FlowStepError)) and self.failure is not None:
            exc.status = self.failure.kind  # the status this step's failure implies
        self.run.__exit__(exc_type, exc, tb)
        if raised is not None:
            raise raised
        return False

    # -- steps ----------------------------------------------------------------------------------------
    def step(self, spec: dict) -> Any:
        """Run one step given as in a task file ({"act": "..."}, {"key": "ctrl+a"}, ...). Returns
        the query's value for a query, else None."""
        from pydantic import ValidationError

        try:
            step = FlowStep.model_validate(spec)
        except ValidationError as e:
            raise FlowStepError(f"not a valid step: {e.errors(include_url=False)[0]['msg']}") from None
        __tracebackhide__ = True  # pytest shows the test's line, not this module's
        self._index += 1
        failure = self.flow.one("steps", self._index - 1, step)
        res = self.flow.results[-1]
        if failure is not None and step.kind in ("assert", "wait_for") and failure.kind != "invalid_output":
            self.failure = self.failure or failure
            what = fill_message(step, self.flow.values) or f"{res.text!r} is {'still ' if step.kind == 'wait_for' else ''}false"
            shot = self.trace.folder / res.screenshot if res.screenshot else "(none)"
            raise FlowAssertionError(f"{what}\n  model: {res.reason}\n  screen: {shot}")
        self._raise(failure)
        return res.value

    def _raise(self, failure: StepFailed | None) -> None:
        __tracebackhide__ = True
        if failure is None:
            return
        self.failure = self.failure or failure
        raise FlowStepError(str(failure))

    def run_steps(self) -> None:
        """The task file's own steps:, in order (the first failure raises)."""
        __tracebackhide__ = True
        for step in self.task.steps:
            self.step(step.model_dump(by_alias=True, exclude_none=True))

    def act(self, instruction: str, max_steps: int | None = None) -> None:
        __tracebackhide__ = True
        self.step({"act": instruction, **({"max_steps": max_steps} if max_steps else {})})

    def assert_that(self, statement: str, message: str | None = None) -> None:
        __tracebackhide__ = True
        self.step({"assert": statement, **({"message": message} if message else {})})

    def query(self, prompt: str, schema: dict, as_: str = "value") -> Any:
        __tracebackhide__ = True
        return self.step({"query": {"prompt": prompt, "schema": schema, "as": as_}})

    def wait_for(self, statement: str, timeout_s: float = 30.0, interval_s: float = 1.0) -> None:
        __tracebackhide__ = True
        self.step({"wait_for": statement, "timeout_s": timeout_s, "interval_s": interval_s})

    def left_click(self, target: str | None = None, coordinate: tuple[float, float] | None = None) -> None:
        __tracebackhide__ = True
        self.step({"left_click": {"target": target, "coordinate": coordinate}})

    click = left_click

    def double_click(self, target: str | None = None, coordinate: tuple[float, float] | None = None) -> None:
        __tracebackhide__ = True
        self.step({"double_click": {"target": target, "coordinate": coordinate}})

    def right_click(self, target: str | None = None, coordinate: tuple[float, float] | None = None) -> None:
        __tracebackhide__ = True
        self.step({"right_click": {"target": target, "coordinate": coordinate}})

    def type(self, text: str) -> None:
        __tracebackhide__ = True
        self.step({"type": text})

    def key(self, chord: str | list[str]) -> None:
        __tracebackhide__ = True
        self.step({"key": chord})

    @property
    def values(self) -> dict[str, Any]:
        """Query results by name (usable as {name} in later steps)."""
        return self.flow.values


def fill_message(step: FlowStep, values: dict) -> str | None:
    from agent.steps import fill

    return fill(step.message, values) if step.message else None
