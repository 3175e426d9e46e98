"""The engine switches read from the environment (agent/backends/options.py)."""
import pytest

from agent.backends.options import EngineOptions
from agent.errors import VlagentError


def test_fp8_gemm_is_on_unless_switched_off():
    assert EngineOptions.from_env({}).fp8_gemm is True
    assert EngineOptions.from_env({"VLAGENT_FP8_GEMM": "0"}).fp8_gemm is False
    assert EngineOptions.from_env({"VLAGENT_FP8_GEMM": "0"}, fp8_gemm=True).fp8_gemm is True  # a CLI flag wins


def test_a_bad_switch_value_is_one_clear_line():
    with pytest.raises(VlagentError, match=r"^VLAGENT_FP8_GEMM='2': use 0 or 1$"):
        EngineOptions.from_env({"VLAGENT_FP8_GEMM": "2"})
