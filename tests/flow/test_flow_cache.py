"""The verified action cache (agent.flow.cache): hit, heal, miss, the four modes, a changed app, a
corrupt cache file. Real Xvfb, the real form app, real input, the real target finder; scripted replies
keyed by step, so a step served from the cache simply leaves its replies unused."""
from __future__ import annotations

import pytest

import json
import shutil
import subprocess
import sys

import numpy as np
from PIL import Image

from agent.backends.script import ScriptBackend
from agent.flow.runner import run_flow
from agent.task import load_task
from flow_support import DONE, EMAIL_ACT, PRO, ROOT, STEPS, SUBMIT, form_task, replies, script, verdict

CACHE = "flow.cache.json"


def run(task_path, tmp_path, name, cache="read-write", mapping=None):
    backend = ScriptBackend.from_file(script(tmp_path, mapping or replies(), f"{name}.yaml")[len("script:"):])
    result, folder = run_flow(load_task(task_path), backend, trace_dir=tmp_path / name, cache=cache)
    assert result.model_calls == backend.calls
    return result


def caches(result) -> list:
    return [f.cache for f in result.flow]


def why(result) -> list:
    """What each step did and why (for failure messages)."""
    return [(f.cache, f.reason) for f in result.flow]


def entry(folder, text: str) -> dict:
    data = json.loads((folder / CACHE).read_text())
    return next(s for s in data["steps"] if s["text"] == text)


@pytest.mark.slow
def test_first_run_records_and_the_rerun_makes_no_model_call(tmp_path):
    task = form_task(tmp_path / "t", STEPS + [{"assert": "Saved is shown"}])
    mapping = {**replies(), "Saved is shown": [verdict(True)]}
    cold = run(task, tmp_path, "cold", mapping=mapping)
    assert cold.status == "success" and caches(cold) == ["miss"] * 4 + [None] and cold.model_calls == 9
    data = json.loads((tmp_path / "t" / CACHE).read_text())
    assert [s["kind"] for s in data["steps"]] == ["act", "act", "left_click", "left_click"]
    name = data["steps"][0]
    assert [a["action"]["action"] for a in name["actions"]] == ["left_click", "type"]
    assert name["actions"][0]["target"]["patch"]["png_file"].startswith("flow.cache/")  # relative, content-addressed
    assert name["actions"][1]["effect"]["changed"] is True and name["actions"][1]["effect"]["after"]
    files = {p.name for p in (tmp_path / "t" / "flow.cache").iterdir()}
    assert all(len(f) == len("0123456789abcdef0123.png") for f in files)
    before = (tmp_path / "t" / CACHE).read_bytes()

    # Moved to another folder (another machine): relative paths, so it still works.
    shutil.move(tmp_path / "t", tmp_path / "moved")
    warm = run(tmp_path / "moved" / "flow.yaml", tmp_path, "warm", mapping=mapping)
    assert warm.status == "success", warm.reason
    assert caches(warm) == ["hit"] * 4 + [None]
    assert [f.model_calls for f in warm.flow] == [0, 0, 0, 0, 1]  # the assert is never cached
    assert (tmp_path / "moved" / CACHE).read_bytes() == before  # nothing to write


@pytest.mark.slow
def test_read_only_never_writes_and_write_only_never_reads(tmp_path):
    task = form_task(tmp_path / "t", STEPS)
    ro = run(task, tmp_path, "ro", cache="read-only")
    assert ro.status == "success" and caches(ro) == ["miss"] * 4 and not (tmp_path / "t" / CACHE).exists()
    # as a user runs it: `vlagent run --cache off` neither reads nor writes
    r = subprocess.run([sys.executable, "-m", "agent.cli", "run", str(task), "--model", script(tmp_path, replies()),
                        "--cache", "off", "--trace", str(tmp_path / "cli-off")], cwd=ROOT, capture_output=True,
                       text=True, timeout=180)
    assert r.returncode == 0, r.stderr
    assert not (tmp_path / "t" / CACHE).exists() and not (tmp_path / "t" / "flow.cache").exists()
    run(task, tmp_path, "rw")
    wo = run(task, tmp_path, "wo", cache="write-only")
    assert caches(wo) == ["miss"] * 4 and wo.model_calls == 8 and (tmp_path / "t" / CACHE).exists()
    ro = run(task, tmp_path, "ro2", cache="read-only")
    assert caches(ro) == ["hit"] * 4 and ro.model_calls == 0, why(ro)
    off = run(task, tmp_path, "off", cache="off")
    assert caches(off) == [None] * 4 and off.model_calls == 8


@pytest.mark.slow
def test_a_stale_target_heals_with_the_model_and_only_that_step_is_rewritten(tmp_path):
    task = form_task(tmp_path / "t", STEPS)
    run(task, tmp_path, "cold")
    pro = entry(tmp_path / "t", PRO)
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 255, (60, 120), dtype=np.uint8))
    noise.save(tmp_path / "t" / "flow.cache" / "noise.png")
    data = json.loads((tmp_path / "t" / CACHE).read_text())
    for s in data["steps"]:
        if s["text"] == PRO:  # the recorded target no longer looks like anything on screen
            target = s["actions"][0]["target"]
            target["patch"]["png_file"] = target["context"]["png_file"] = "flow.cache/noise.png"
            target["anchors"], target["text"]["at"], target["own_text"] = [], "Platinum", "Platinum"
    (tmp_path / "t" / CACHE).write_text(json.dumps(data))

    healed = run(task, tmp_path, "healed")
    assert healed.status == "success", healed.reason
    assert caches(healed) == ["hit", "hit", "healed", "hit"], why(healed)
    assert [f.model_calls for f in healed.flow] == [0, 0, 1, 0]
    assert "cache:" in healed.flow[2].reason and "not found" in healed.flow[2].reason
    assert entry(tmp_path / "t", PRO)["actions"][0]["target"]["patch"]["png_file"] == pro["actions"][0]["target"]["patch"]["png_file"]
    again = run(task, tmp_path, "again")
    assert caches(again) == ["hit"] * 4 and again.model_calls == 0


@pytest.mark.slow
def test_an_effect_that_does_not_show_falls_back_to_the_model(tmp_path):
    task = form_task(tmp_path / "t", STEPS)
    run(task, tmp_path, "cold")
    data = json.loads((tmp_path / "t" / CACHE).read_text())
    for s in data["steps"]:
        if s["text"] == EMAIL_ACT:  # the cache claims typing showed something this app never shows
            s["actions"][1]["effect"]["after"]["patch"]["png_file"] = s["actions"][0]["target"]["patch"]["png_file"]
            Image.new("L", (112, 48), 0).save(tmp_path / "t" / "flow.cache" / "black.png")
            after = s["actions"][1]["effect"]["after"]
            after["patch"]["png_file"] = after["context"]["png_file"] = "flow.cache/black.png"
            after["anchors"], after["text"]["at"], after["own_text"] = [], "Zyzzyva", "Zyzzyva"
    (tmp_path / "t" / CACHE).write_text(json.dumps(data))
    # The cached click and typing did run; the model, asked to finish the step, sees it done.
    healed = run(task, tmp_path, "healed", mapping={**replies(), EMAIL_ACT: [DONE]})
    assert healed.status == "success", healed.reason
    assert caches(healed) == ["hit", "healed", "hit", "hit"], why(healed)
    assert "recorded effect is not on screen" in healed.flow[1].reason and healed.flow[1].model_calls == 1
    kept = entry(tmp_path / "t", EMAIL_ACT)["actions"]  # what this run did for the step, freshly described
    assert [a["action"]["action"] for a in kept] == ["left_click", "type"]
    assert kept[1]["effect"]["after"]["patch"]["png_file"] != "flow.cache/black.png"
    again = run(task, tmp_path, "again")
    assert caches(again) == ["hit"] * 4 and again.model_calls == 0


@pytest.mark.slow
def test_a_wrong_click_is_caught_by_its_effect(tmp_path):
    """The Pro step's cached target is really the Submit button's (a cache that went wrong): the
    replayed click lands on Submit, the Pro option's recorded effect does not show, and the model
    does the step."""
    task = form_task(tmp_path / "t", STEPS)
    run(task, tmp_path, "cold")
    data = json.loads((tmp_path / "t" / CACHE).read_text())
    steps = {s["text"]: s for s in data["steps"]}
    steps[PRO]["actions"][0]["target"] = steps[SUBMIT]["actions"][0]["target"]
    (tmp_path / "t" / CACHE).write_text(json.dumps(data))
    healed = run(task, tmp_path, "healed", cache="read-only")
    assert healed.status == "success", healed.reason
    assert caches(healed) == ["hit", "hit", "healed", "hit"], why(healed)
    assert "recorded effect is not on screen" in healed.flow[2].reason and healed.flow[2].model_calls == 1


@pytest.mark.slow
def test_a_failed_run_writes_nothing(tmp_path):
    task = form_task(tmp_path / "t", STEPS + [{"assert": "Saved is shown"}])
    failed = run(task, tmp_path, "failed", mapping={**replies(), "Saved is shown": [verdict(False, "no")]})
    assert failed.status == "failed" and not (tmp_path / "t" / CACHE).exists()


@pytest.mark.slow
def test_a_changed_layout_replays_or_heals_and_still_succeeds(tmp_path):
    """Recorded on the fixed layout, re-run with moved and reordered widgets (--layout-seed): steps
    whose targets the finder re-finds make no model call; the others heal from the model."""
    folder = tmp_path / "t"
    run(form_task(folder, STEPS), tmp_path, "cold")
    moved = form_task(folder, STEPS, seed=5)  # same name, same folder: the same cache
    rerun = run(moved, tmp_path, "moved", mapping=replies(seed=5))
    assert rerun.status == "success", rerun.reason
    assert all(c in ("hit", "healed") for c in caches(rerun))
    for f in rerun.flow:  # the model only for steps that did not replay
        assert (f.model_calls == 0) == (f.cache == "hit")
    assert json.loads((tmp_path / "moved" / "workdir" / "form.json").read_text())["email"] == "ada@example.com"


@pytest.mark.slow
def test_the_apps_next_version_heals_only_the_step_whose_widget_changed(tmp_path):
    """Recorded on the form, re-run on its next version (--restyle: Submit is now a blue "Register"
    button): the finder cannot vouch for the old Submit evidence, so that step alone asks the model;
    its new actions replace the entry and the next re-run of the new version needs no model."""
    folder = tmp_path / "t"
    run(form_task(folder, STEPS), tmp_path, "cold")
    submit = entry(folder, SUBMIT)["actions"][0]["target"]["patch"]["png_file"]
    new = form_task(folder, STEPS, restyle=True)  # same name, same folder: the same cache
    healed = run(new, tmp_path, "restyled", mapping=replies(restyle=True))
    assert healed.status == "success", healed.reason
    assert caches(healed) == ["hit", "hit", "hit", "healed"], why(healed)
    assert [f.model_calls for f in healed.flow] == [0, 0, 0, 1]
    assert "not found" in healed.flow[3].reason
    assert json.loads((tmp_path / "restyled" / "workdir" / "form.json").read_text())["plan"] == "Pro"
    assert entry(folder, SUBMIT)["actions"][0]["target"]["patch"]["png_file"] != submit  # the new button
    again = run(new, tmp_path, "again", mapping=replies(restyle=True))
    assert caches(again) == ["hit"] * 4 and again.model_calls == 0


@pytest.mark.slow
def test_a_corrupt_cache_file_is_one_clear_line(tmp_path):
    task = form_task(tmp_path, STEPS)
    model = script(tmp_path, replies())
    for text, why in [("{not json", "is not valid JSON (line 1"),
                      ('{"version": 9, "task": "flow"}', "not an action cache of version 1 (version"),
                      ('{"version": 1, "task": "flow", "steps": [{"key": "k", "kind": "act", "text": "t", '
                       '"actions": [{"action": {}, "target": {"png_file": "flow.cache/gone.png"}}]}]}',
                       "refers to a missing image flow.cache/gone.png")]:
        (tmp_path / CACHE).write_text(text)
        r = subprocess.run([sys.executable, "-m", "agent.cli", "run", str(task), "--model", model, "--trace",
                            str(tmp_path / "trace")], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert r.returncode == 2, r.stderr
        lines = [line for line in r.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and why in lines[0] and "Traceback" not in r.stderr, r.stderr
        assert "--cache write-only" in lines[0] or "missing image" in lines[0]


def test_two_runs_sharing_a_cache_keep_each_others_steps(tmp_path):
    """Tests of one task share its cache: a save re-reads the file and replaces only its own steps."""
    from agent.flow.cache import ActionCache, CachedAction, CachedStep, step_key

    path = tmp_path / CACHE
    first, second = ActionCache(path, "flow", "read-write"), ActionCache(path, "flow", "write-only")
    click = CachedAction(action={"action": "left_click", "coordinate": [1, 2]})
    first.get(step_key("act", "a"))
    first.stage(CachedStep(key=step_key("act", "a"), kind="act", text="a", actions=[click]))
    second.get(step_key("act", "b"))
    second.stage(CachedStep(key=step_key("act", "b"), kind="act", text="b", actions=[click]))
    first.save()
    second.save()
    again = ActionCache(path, "flow", "read-only")
    assert [s.text for s in again.entries.values()] == ["a", "b"]
    assert again.save() is None  # read-only never writes
