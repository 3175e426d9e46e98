"""The KV budget planner: arithmetic from the config, the CLI, and its prediction against the H100."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from agent.backends.budget import GIB, QWEN3_VL_2B_PARAMS, kv_bytes_per_token, load_config, plan, tokens_per_image
from agent.cli.budget import budget

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"


def test_kv_bytes_per_token_of_the_2b():
    # 2 (K, V) x 28 layers x 8 KV heads x 128 x 2 bytes = 112 KiB
    assert kv_bytes_per_token(load_config(None).text_config) == 114_688


@pytest.mark.parametrize("size, tokens", [((1920, 1080), 2042), ((1280, 720), 882), ((1280, 800), 1002),
                                          ((1024, 768), 770), ((10, 10), 66)])  # the pixel floor: 256x256
def test_tokens_per_image_follow_the_processor(size, tokens):
    assert tokens_per_image(*size) == tokens


@pytest.mark.slow
def test_tokens_per_image_match_the_image_processor():
    pytest.importorskip("transformers")
    from PIL import Image
    from transformers import AutoImageProcessor
    from agent.backends.tiny import tiny_checkpoint  # the real model's preprocessor config
    proc = AutoImageProcessor.from_pretrained(tiny_checkpoint())
    for w, h in [(1920, 1080), (1280, 800), (1280, 720), (1000, 700), (10, 10)]:
        grid = proc(images=[Image.new("RGB", (w, h))], return_tensors="pt")["image_grid_thw"][0]
        assert tokens_per_image(w, h) == int(grid.prod()) // 4 + 2


def test_a_24_gib_card_fits_a_long_history():
    p = plan(load_config(None), 24 * GIB, (1920, 1080))
    assert p.params == QWEN3_VL_2B_PARAMS and 3.9 < p.weights_gib < 4.0
    assert 150_000 < p.token_budget < 200_000  # 256K of bf16 KV (28 GiB) does not fit 24 GB
    assert p.images_fit >= 50
    assert p.predicted_peak_gib <= 24 - 0.5  # never plans past the card


def test_budget_is_capped_by_the_model_context():
    p = plan(load_config(None), 80 * GIB, (1280, 800))
    assert p.token_budget == 262_144


def test_a_card_too_small_gets_no_budget():
    assert plan(load_config(None), 4 * GIB, (1920, 1080)).token_budget == 0


def test_prediction_within_10_percent_of_the_measured_h100_peak():
    runs = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("h100_*.json"))]
    runs = [r for r in runs if isinstance(r, dict) and r.get("peak_gib") and r.get("predicted_peak_gib")]
    if not runs:
        pytest.skip("no H100 results committed")
    for r in runs:
        assert abs(r["predicted_peak_gib"] - r["peak_gib"]) <= 0.1 * r["peak_gib"], r["model"]


def test_prediction_within_10_percent_of_the_measured_h200_peak_at_32k():
    """The product-path bench's one-shot + text to 32K peak, against the planner (benchmarks/product_bench.py)."""
    runs = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("h200_*product*.json"))]
    runs = [r for r in runs if r.get("peak_context_gib") and r.get("planned_peak_gib")]
    if not runs:
        pytest.skip("no H200 product-path results committed")
    for r in runs:
        assert r["device"] == "NVIDIA H200"
        assert abs(r["planned_peak_gib"] - r["peak_context_gib"]) <= 0.1 * r["peak_context_gib"]
        assert r["peak_context_gib"] <= 8.0  # the target at 32K context


def test_cli_prints_a_table_and_json():
    runner = CliRunner()
    out = runner.invoke(budget, ["--device-memory", "24", "--screen", "1280x800"])
    assert out.exit_code == 0 and "KV bytes per token" in out.output and "114,688" in out.output
    out = runner.invoke(budget, ["--device-memory", "24", "--json", "--context", "32768"])
    data = json.loads(out.output)
    assert data["kv_bytes_per_token"] == 114_688 and data["context"] == 32768
    assert 7.5 < data["predicted_peak_gib"] < 8.5


def test_cli_rejects_a_bad_screen_and_an_unknown_model(tmp_path):
    runner = CliRunner()
    assert runner.invoke(budget, ["--screen", "wide"]).exit_code == 2
    out = runner.invoke(budget, ["--model", str(tmp_path / "nope")])
    assert out.exit_code == 2 and "cannot read the config" in out.output


def test_cli_exits_non_zero_with_the_reason_when_the_model_does_not_fit():
    runner = CliRunner()
    out = runner.invoke(budget, ["--device-memory", "1"])
    assert out.exit_code == 1 and "does not fit" in out.output and "weights" in out.output
    out = runner.invoke(budget, ["--device-memory", "6", "--screen", "1920x1080", "--history", "16"])
    assert out.exit_code == 1 and "the history keeps 16" in out.output, out.output
    for bad in ("nan", "inf", "-3", "0"):
        assert runner.invoke(budget, ["--device-memory", bad]).exit_code == 2
