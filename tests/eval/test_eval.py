"""`vlagent eval grounding`: ScreenSpot-layout sets, the shipped set from real apps, the report, and
the same prompt and decoding path as `vlagent run` (tiny random weights, an OpenAI-compatible server)."""
from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from PIL import Image

from agent.eval.dataset import load
from agent.eval.grounding import POLICY, evaluate
from agent.eval.oracle import OracleBackend

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "examples" / "grounding_set"


def test_the_shipped_set_is_real_apps_with_boxes_on_their_screenshots():
    samples = load(SHIPPED)
    assert len(samples) >= 40 and {s.platform for s in samples} == {"desktop", "web"}
    assert {s.source for s in samples} >= {"galculator", "mousepad", "chromium", "chromium-settings"}
    for s in samples:
        w, h = Image.open(s.image).size
        x1, y1, x2, y2 = s.box
        assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h, s
    assert sum(p.stat().st_size for p in (SHIPPED / "images").iterdir()) < 200_000  # small enough for the repo


def vlagent(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "agent.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})


@pytest.mark.slow
def test_eval_grounding_on_the_shipped_set_prints_a_table(tmp_path):
    """The CI check: a scripted oracle that misses every 7th sample, through the whole command."""
    r = vlagent("eval", "grounding", str(SHIPPED), "--model", "oracle", "--oracle-miss-every", "7", "--out", str(tmp_path))
    print(r.stdout)
    assert r.returncode == 0, r.stderr
    n = len(load(SHIPPED))
    misses = n // 7
    assert f"{100 * (n - misses) / n:.1f}% of {n} clicks on target" in r.stdout
    table = r.stdout.splitlines()
    assert table[1].split()[:1] == ["platform"] and any(line.startswith("web ") for line in table)
    assert len(list((tmp_path / "failures").glob("*.png"))) == misses
    summary = json.loads((tmp_path / "report.json").read_text())["summary"]
    assert summary["samples"] == n and set(summary["by_platform"]) == {"desktop", "web"} and "p50_ms" in summary


def test_a_perfect_answer_lands_inside_every_box_even_the_smallest():
    """Centre -> 0..1000 -> pixels: the round trip stays inside boxes 13 px wide on 1280 px screens."""
    samples = load(SHIPPED)
    report = evaluate(samples, OracleBackend(samples))
    assert report.accuracy == 1.0, [r.instruction for r in report.results if not r.hit]


def _write(folder: Path, name: str, entries: list[dict]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(json.dumps(entries))


def test_screenspot_v2_and_pro_layouts(tmp_path):
    Image.new("RGB", (200, 100)).save(tmp_path / "shot.png")
    v2 = tmp_path / "v2"
    (v2 / "screenspotv2_image").mkdir(parents=True)
    Image.new("RGB", (200, 100)).save(v2 / "screenspotv2_image" / "a.png")
    _write(v2, "screenspot_web_v2.json", [{"img_filename": "a.png", "bbox": [10, 20, 30, 40], "instruction": "search",
                                           "data_type": "icon", "data_source": "shop"}])
    [s] = load(v2)
    assert s.box == (10, 20, 40, 60) and s.platform == "web" and s.kind == "icon" and s.source == "shop"  # x, y, w, h
    pro = tmp_path / "pro"
    (pro / "images").mkdir(parents=True)
    Image.new("RGB", (200, 100)).save(pro / "images" / "b.png")
    _write(pro / "annotations", "vscode_macos.json", [{"img_filename": "b.png", "bbox": [10, 20, 30, 40],
                                                      "instruction": "run", "ui_type": "text", "platform": "macos",
                                                      "application": "vscode"}])
    [s] = load(pro)
    assert s.box == (10, 20, 30, 40) and s.platform == "macos" and s.kind == "text"  # x1, y1, x2, y2


@pytest.mark.slow  # loads the tiny model
def test_random_weights_take_the_same_path_as_vlagent_run():
    """tiny-random: the transformers backend, the run's prompt, the left_click-only grammar."""
    from agent.backends import load_backend

    samples = load(SHIPPED, limit=2)
    report = evaluate(samples, load_backend("tiny-random"))
    for r in report.results:
        # the grammar gives a left_click, with a point or (native: "click where the pointer is") without
        assert (r.point is not None and r.error == "") or r.error == "left_click without a point"
        assert r.raw.startswith('<tool_call>\n{"name": "computer_use", "arguments": {"action": "left_click"') and r.ms > 0


def test_a_served_model_is_evaluated_the_same_way():
    """--backend openai: the same prompt, the left_click-only schema as response_format."""
    from test_openai_backend import MODEL, FakeServer

    from agent.backends.openai import OpenAIBackend

    srv = FakeServer()
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        samples = load(SHIPPED, limit=2)
        report = evaluate(samples, OpenAIBackend(MODEL, srv.base_url, backoff_s=0.01))
        assert [r.point for r in report.results] == [(640, 240), (640, 240)]  # [500, 300] of 1280x800
        chats = [r for r in srv.requests if r.get("max_tokens", 0) > 1]
        schema = chats[-1]["response_format"]["json_schema"]["schema"]
        assert [v["properties"]["action"]["enum"] for v in schema["properties"]["arguments"]["anyOf"]] == [["left_click"]]
        assert samples[-1].instruction in json.dumps(chats[-1]["messages"])
    finally:
        srv.shutdown()
        srv.server_close()
    assert POLICY.actions == {"left_click"} or set(POLICY.actions) == {"left_click"}


def test_marks_on_the_shipped_set_every_target_is_marked_and_a_mark_answer_lands_on_it():
    """--marks: each screenshot's stored tree numbered as `vlagent run --marks` does; the oracle names
    the target's mark, the click goes to that element's centre in the tree."""
    samples = load(SHIPPED)
    report = evaluate(samples, OracleBackend(samples, marks=True), marks=True)
    assert report.accuracy == 1.0 and all(r.mark is not None for r in report.results)
    assert report.model == "oracle --marks"


def test_marks_need_the_screenshots_trees(tmp_path):
    (tmp_path / "images").mkdir()
    Image.new("RGB", (200, 100)).save(tmp_path / "images" / "a.png")
    _write(tmp_path, "samples.json", [{"img_filename": "a.png", "bbox": [1, 2, 30, 40], "instruction": "OK"}])
    r = vlagent("eval", "grounding", str(tmp_path), "--model", "oracle", "--marks")
    assert r.returncode == 2 and "needs the screenshot's accessibility tree" in r.stderr
