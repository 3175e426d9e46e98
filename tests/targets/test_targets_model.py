"""Typed target evidence (agent.targets.model) reads the evidence of committed traces and caches
unchanged: every target loads, and dumps back with the same keys and values. No display needed."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.targets.model import Evidence, EvidenceError

ROOT = Path(__file__).resolve().parents[2]


def committed_targets() -> list[dict]:
    out = []
    for f in sorted(ROOT.glob("examples/**/steps.jsonl")):
        out += [json.loads(line)["target"] for line in f.read_text().splitlines() if json.loads(line).get("target")]
    for f in sorted(ROOT.glob("tasks/*.cache.json")):
        for step in json.loads(f.read_text())["steps"]:
            for a in step["actions"]:
                out += [x for x in (a.get("target"), a.get("start"), (a.get("effect") or {}).get("after")) if x]
    return out


def test_old_traces_and_caches_load_and_dump_the_same_keys():
    targets = committed_targets()
    assert len(targets) >= 10
    for t in targets:
        ev = Evidence.parse(t)
        assert ev.dump() == t
        assert ev.patch.at and ev.pixel == t["pixel"]


def test_each_part_is_typed_and_unknown_keys_pass_through():
    t = {**committed_targets()[0], "found": {"coordinate": {"method": "same screen"}},
         "a11y": {"role": "push button", "name": "OK", "app": "zenity", "states": ["focusable"], "late": True,
                  "future_key": 1}}
    ev = Evidence.parse(t)
    assert ev.a11y.role == "push button" and ev.a11y.late and ev.window is None or ev.window.title is not None
    assert ev.dump() == t


def test_evidence_that_does_not_fit_names_the_field():
    with pytest.raises(EvidenceError, match="patch"):
        Evidence.parse({"pixel": [1, 2]})
    with pytest.raises(EvidenceError, match="a11y.role"):
        Evidence.parse({**committed_targets()[0], "a11y": {"name": "OK"}})
