"""`vlagent bench --tiny`: the whole benchmark path on the CPU in seconds (a CI smoke test)."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

pytest.importorskip("torch")
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))  # the benchmarks are scripts there
from engine_bench import percentile  # noqa: E402

from agent.cli.bench import bench  # noqa: E402

KEYS = ("device", "step_ms_p50", "step_ms_p95", "ttft_ms", "decode_tok_s", "cold_start_s", "peak_gib",
        "vision_ms", "prefill_ms", "budget")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_tiny_bench_writes_the_json(tmp_path):
    out = tmp_path / "bench.json"
    res = CliRunner().invoke(bench, ["--mode", "engine", "--tiny", "--steps", "4", "--screen", "320x200",
                                     "--reply-tokens", "6", "--context", "4096", "--json", str(out)])
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    assert all(k in data for k in KEYS)
    assert data["device"] and data["model"] == "tiny-random"
    assert data["step_ms_p95"] >= data["step_ms_p50"] > 0
    steps = data["steps_detail"]
    assert [s["new_tokens"] for s in steps] == [6] * 4
    # The history is append-only between evictions: later steps reuse the cached prefix and
    # encode only the new screenshot.
    assert steps[0]["reused_tokens"] == 0 and all(s["reused_tokens"] > 0 for s in steps[1:])
    assert all(s["images_encoded"] == 1 for s in steps)
    assert "grammar_overhead_pct" in data or "grammar" in data
    assert "step_ms_p50" in res.output  # the table


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("engine", ["0", "1"])
def test_product_bench_runs_the_run_path(tmp_path, monkeypatch, engine):
    """The default mode drives TransformersBackend with the history's messages, the fill_form policy's
    grammar and scripted native replies (click, type, key): each reply passes the policy, the engine
    path reuses the prefix, and the baselines run on the same prompts."""
    monkeypatch.setenv("VLAGENT_ENGINE", engine)
    out = tmp_path / "product.json"
    args = ["--tiny", "--steps", "3", "--screen", "320x200", "--json", str(out)]
    res = CliRunner().invoke(bench, args + ([] if engine == "1" else ["--no-baselines"]))
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    assert data["mode"] == "product" and data["model"] == "transformers:tiny-random"
    assert data["engine"] is (engine == "1")
    steps = data["steps_detail"]
    assert [s["action"] for s in steps] == ["left_click", "type", "key"]
    assert all(s["prompt_ms"] > 0 and s["model_ms"] > 0 and s["grammar_ms"] > 0 and s["choices"] >= 1 for s in steps)
    assert [s["images"] for s in steps] == [1, 2, 3]  # the history's screenshots
    if engine == "1":
        assert all(s["reused_tokens"] > 0 and s["images_encoded"] == 1 for s in steps[1:])
        assert all(s["decode_steps"] < s["new_tokens"] for s in steps)  # forced strings jump forward
        assert data["generate_defaults_step_ms_p50"] > 0 and data["generate_static_compile_step_ms_p50"] > 0
        assert data["decode"] == {"fused": False}  # how decode ran is in the result: torch ops on the CPU


def test_bench_usage_errors():
    runner = CliRunner()
    assert runner.invoke(bench, ["--tiny", "--steps", "1"]).exit_code == 2
    assert runner.invoke(bench, ["--tiny", "--model", "x"]).exit_code == 2
    assert runner.invoke(bench, ["--tiny", "--reply", "fixed"]).exit_code == 2  # the product mode scripts native replies


def test_percentile():
    assert percentile([3, 1, 2], 0.5) == 2
    assert percentile([1, 2, 3, 4], 0.95) == pytest.approx(3.85)
