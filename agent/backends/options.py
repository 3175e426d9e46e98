"""Engine switches and the cache folder: one options object, read from the environment in one place.

The CLI builds `EngineOptions.from_env()` (or from its own flags) and passes it to the backend,
which passes it to the engine; nothing below the CLI reads these variables itself.

| variable | field | default |
|---|---|---|
| VLAGENT_ENGINE | engine | on CUDA only (0: off everywhere, 1: on the CPU too) |
| VLAGENT_COMPILE | compile | off (1: torch.compile the prefill and vision pieces) |
| VLAGENT_COMPILE_VISION | compile_vision | on when compiling (0: leave the vision tower eager) |
| VLAGENT_SDPA | sdpa | "cudnn" ("flash": prefer the flash kernel) |
| VLAGENT_WARM_TOKENS | warm_tokens | 16384 (decode graphs captured ahead, at load and between steps, up to this context) |
| VLAGENT_CONTEXT | context | None (the engine's default static KV cache) |
| VLAGENT_SERVE_GRAPHS | serve_graphs | on (0: eager decode steps in `vlagent serve`) |
| VLAGENT_KV_SHIFT | kv_shift | off (1: after an eviction, move the kept KV instead of prefilling it again) |
| VLAGENT_FP8 | fp8 | None ("block" or "channel": quantise a bf16 checkpoint's linears to FP8 at load) |
| VLAGENT_FP8_GEMM | fp8_gemm | on (FP8 weights: prefill and vision through FP8 GEMMs, activations quantised per 1x128 group, where the card has them; 0: weights widened to bf16 per call) |
| VLAGENT_FUSED_DECODE | fused_decode | on CUDA (0: the torch ops; 1: also on the CPU, where it needs TRITON_INTERPRET=1: tests): a decode token in seven Triton kernels a layer (agent/backends/decode_kernels.py) |
| VLAGENT_PDL | pdl | on where the card has it (Hopper and later, a CUDA 12.3 driver; 0: off): each fused decode kernel's programs start while the kernel before it ends (programmatic dependent launch) |
| VLAGENT_NATIVE | native | on (with the engine, Qwen3-VL loads without transformers' modeling code: agent/backends/qwen3vl_model.py; 0: through it) |
| VLAGENT_CACHE_DIR | cache_dir() | ~/.cache/vlagent (built checkpoints, tokenizers, compiled kernels) |

`VLAGENT_CACHE_DIR` names a folder; the flow cache's *mode* (read-write, read-only, ...) has its
own name (the pytest plugin's). The old `VLAGENT_CACHE` is still read as the folder when it names
a path (it holds a "/"), so existing setups keep working.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Mapping

from agent.errors import VlagentError

WARM_TOKENS = 16384
SDPA_KERNELS = ("cudnn", "flash")
CACHE_ENV = "VLAGENT_CACHE_DIR"
LEGACY_CACHE_ENV = "VLAGENT_CACHE"


def _flag(env: Mapping[str, str], name: str, default: bool | None) -> bool | None:
    value = env.get(name)
    if value is None or value == "":
        return default
    if value not in ("0", "1"):
        raise VlagentError(f"{name}={value!r}: use 0 or 1")
    return value == "1"


def _int(env: Mapping[str, str], name: str, default: int | None) -> int | None:
    value = env.get(name)
    if value is None or value == "":
        return default
    try:
        n = int(value)
    except ValueError:
        raise VlagentError(f"{name}={value!r}: not a whole number") from None
    if n <= 0:
        raise VlagentError(f"{name}={value!r}: must be positive")
    return n


@dataclass(frozen=True)
class EngineOptions:
    """How the in-process engine runs (agent/backends/engine.py). Speed only: replies are the same."""

    engine: bool | None = None  # None: on CUDA
    compile: bool = False
    compile_vision: bool = True
    sdpa: str = "cudnn"
    warm_tokens: int = WARM_TOKENS
    context: int | None = None
    serve_graphs: bool = True
    kv_shift: bool = False  # agent/backends/engine.py: KV moved after an eviction (not what a fresh prefill computes)
    fp8: str | None = None  # agent/backends/fp8.py: "block" (128x128, Qwen's layout) or "channel"
    fp8_gemm: bool = True  # FP8 weights: long inputs through FP8 GEMMs (activations quantised too; fp8.py)
    fused_decode: bool | None = None  # None: on CUDA (agent/backends/decode_kernels.py)
    pdl: bool | None = None  # None: where the card has it (decode_kernels.pdl_available)
    native: bool = True  # with the engine: Qwen3-VL's weights, vision tower and processor without transformers' modeling import

    def __post_init__(self):
        if self.fp8 not in (None, "block", "channel"):
            raise VlagentError(f"unknown FP8 layout {self.fp8!r}; choose block or channel")
        if self.sdpa not in SDPA_KERNELS:
            raise VlagentError(f"unknown attention kernel {self.sdpa!r}; choose one of {', '.join(SDPA_KERNELS)}")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides) -> "EngineOptions":
        """The options the environment asks for, then `overrides` (CLI flags) on top."""
        env = os.environ if env is None else env
        opts = cls(
            engine=_flag(env, "VLAGENT_ENGINE", None),
            compile=bool(_flag(env, "VLAGENT_COMPILE", False)),
            compile_vision=bool(_flag(env, "VLAGENT_COMPILE_VISION", True)),
            sdpa=env.get("VLAGENT_SDPA") or "cudnn",
            warm_tokens=_int(env, "VLAGENT_WARM_TOKENS", WARM_TOKENS),
            context=_int(env, "VLAGENT_CONTEXT", None),
            serve_graphs=bool(_flag(env, "VLAGENT_SERVE_GRAPHS", True)),
            kv_shift=bool(_flag(env, "VLAGENT_KV_SHIFT", False)),
            fp8=env.get("VLAGENT_FP8") or None,
            fp8_gemm=bool(_flag(env, "VLAGENT_FP8_GEMM", True)),
            fused_decode=_flag(env, "VLAGENT_FUSED_DECODE", None),
            pdl=_flag(env, "VLAGENT_PDL", None),
            native=bool(_flag(env, "VLAGENT_NATIVE", True)),
        )
        known = {f.name for f in fields(cls)}
        unknown = set(overrides) - known
        if unknown:
            raise TypeError(f"unknown engine options: {', '.join(sorted(unknown))}")
        return replace(opts, **{k: v for k, v in overrides.items() if v is not None})

    def engine_on(self, device: str) -> bool:
        return self.engine if self.engine is not None else device.startswith("cuda")


def cache_dir(env: Mapping[str, str] | None = None) -> Path:
    """The folder for built checkpoints, tokenizers and compiled kernels."""
    env = os.environ if env is None else env
    value = env.get(CACHE_ENV)
    if not value:
        legacy = env.get(LEGACY_CACHE_ENV, "")
        value = legacy if "/" in legacy else ""  # a flow-cache mode word is not a folder
    return Path(value).expanduser() if value else Path.home() / ".cache" / "vlagent"
