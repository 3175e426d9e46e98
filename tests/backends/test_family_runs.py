"""Each model family runs `vlagent run`'s loop end to end (issue 24): scripted replies written in the
family's own format solve the real form task, and a random-weight checkpoint saved as the family
drives the loop under the family's grammar to a clear end."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from actions import parse_action, to_json
from agent.backends.families import family
from agent.backends.script import ScriptBackend
from agent.run.loop import LoopConfig
from agent.run.runner import run_task
from agent.task import load_task

ROOT = Path(__file__).resolve().parents[2]
FAMILIES = ["gui-owl-1.5", "mai-ui", "ui-venus-1.5"]
pytestmark = pytest.mark.slow


def family_solution(name: str) -> list[str]:
    """tests/scripts/fill_form_solution.yaml, each reply written as that family writes it."""
    native = yaml.safe_load((ROOT / "tests" / "scripts" / "fill_form_solution.yaml").read_text())
    fam = family(name)
    replies = [fam.from_native(to_json(parse_action(r))) for r in native]
    assert all("computer_use" not in r for r in replies) or name == "gui-owl-1.5"
    return replies


@pytest.mark.parametrize("name", FAMILIES)
def test_scripted_replies_in_the_familys_format_fill_the_form(tmp_path, name):
    task = load_task(ROOT / "tasks" / "fill_form.yaml")
    backend = ScriptBackend(family_solution(name), name=f"script:{name}", format=name)
    result, trace = run_task(task, backend, trace_dir=tmp_path / "trace")
    assert result.status == "success", result.reason
    steps = [json.loads(line) for line in (trace / "steps.jsonl").read_text().splitlines()]
    assert [s["action"]["action"] for s in steps if s.get("action")][:2] == ["left_click", "type"]


@pytest.mark.parametrize("name", FAMILIES)
def test_random_weights_saved_as_the_family_drive_the_loop(tmp_path, name):
    from agent.backends import load_backend

    task = load_task(ROOT / "tasks" / "fill_form.yaml")
    backend = load_backend(f"tiny-random:{name}")
    result, _ = run_task(task, backend, trace_dir=tmp_path / "trace", loop=LoopConfig(max_steps=2, timeout_s=120))
    assert result.status not in ("error", "invalid_output"), result.reason  # noise, but always a valid action
