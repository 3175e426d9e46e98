"""What a person sees in the terminal: one line per step, a final status panel."""
from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.panel import Panel

from actions.schema import to_json
from agent.report.draw import mark_label
from agent.secrets import redact
from agent.trace import FlowStepResult, Result, Step

console = Console(stderr=True, highlight=False, soft_wrap=True)
STATUS_STYLE = {"success": "bold green", "failed": "bold red", "invalid_output": "bold magenta",
                "timeout": "bold yellow", "aborted": "bold yellow", "error": "bold red"}


def text(value) -> str:
    """Model, task and app text as data: secrets redacted, rich markup escaped (`[/]` is text)."""
    return escape(redact(str(value)))


def describe(step: Step) -> str:
    """One step of a run, a replay or a recording: the action, where it landed, how replay found
    its target, and an error or warning."""
    if step.action is None:
        return f"[red]rejected[/]: {text(step.error)}"
    args = {k: v for k, v in to_json(step.action).items() if k != "action"}
    where = f" -> px {step.pixel[0]},{step.pixel[1]}" if step.pixel else ""
    found = (step.target or {}).get("found") or {}
    how = ", ".join(f"{v['method']} {v['score']:.2f}" for v in found.values() if isinstance(v, dict) and "score" in v)
    how = f" [dim]\\[{text(how)}][/]" if how else ""
    note = f" [yellow]{text(step.error)}[/]" if step.error else ""
    if step.kind == "ask_user" and step.decision:  # the person's answer, or why none came
        note = f" -> [yellow]{text(step.decision.get('verdict'))}[/]: {text(json.dumps(step.decision.get('note', ''), ensure_ascii=False))}"
    mark = f"[dim]{text(mark_label(step))}[/]" if step.mark else ""  # --marks: the element the model named
    return f"{mark}[cyan]{step.kind}[/] {text(json.dumps(args, ensure_ascii=False))}{where}{how}{note}"


def step_printer():
    """The one step printer (run, replay, record): a line per step on stderr."""
    def show(step: Step) -> None:
        ms = step.timings.get("step_ms", 0.0)
        model = f", model {step.timings['model_ms']:.0f} ms" if "model_ms" in step.timings else ""
        console.print(f"[dim]step {step.step:>3}[/] {describe(step)} [dim]({ms:.0f} ms{model})[/]")
    return show


def watch_terminal(bus, as_json: bool = False):
    """The terminal as a subscriber of a run's events: a line per step and per flow step (none
    with --json, whose only output is the result)."""
    from agent.run import events as ev

    if as_json:
        return None
    show_step, show_flow = step_printer(), flow_printer()

    def on_event(event) -> None:
        if isinstance(event, ev.StepWritten):
            show_step(Step.model_validate(event.step))
        elif isinstance(event, ev.FlowStepDone):
            show_flow(FlowStepResult.model_validate(event.result))
    return bus.subscribe(on_event)


def print_result(result: Result, folder: Path) -> None:
    style = STATUS_STYLE.get(result.status, "bold")
    lines = [f"[{style}]{result.status}[/] after {result.steps} steps in {result.duration_s:.1f} s", text(result.reason)]
    for c in result.checks:
        mark = "[green]✓[/]" if c.passed else "[red]✗[/]"
        lines.append(f"{mark} {text(c.check)}" + (f" [dim]({text(c.detail)})[/]" if c.detail and not c.passed else ""))
    if result.answer:
        lines.append(f"answer: {text(result.answer)}")
    if result.flow:
        hits = sum(f.cache == "hit" for f in result.flow)
        lines.append(f"flow: {sum(f.status == 'passed' for f in result.flow)}/{len(result.flow)} steps passed, "
                     f"{hits} from the cache, {result.model_calls} model calls")
    lines.append(f"[dim]trace: {text(folder)}[/]")
    console.print(Panel("\n".join(lines), title=text(result.task), expand=False), soft_wrap=False)


FLOW_MARK = {"passed": "[green]✓[/]", "failed": "[red]✗[/]", "skipped": "[dim]-[/]"}


def flow_printer():
    """One line per flow step: mark, kind, text, cache use, model calls, time, and the reason."""
    def show(f) -> None:
        cache = f" [dim]cache {f.cache}[/]" if f.cache else ""
        value = f" -> {text(json.dumps(f.value, ensure_ascii=False))}" if f.value is not None else ""
        reason = f"\n      [dim]{text(f.reason)}[/]" if f.reason and f.status != "skipped" else ""
        console.print(f"{FLOW_MARK[f.status]} [bold]{text(f.kind)}[/] {text(f.text)}{value}{cache} "
                      f"[dim]({f.model_calls} model calls, {f.duration_s:.1f} s)[/]{reason}")
    return show
