"""Model backends: pick one from the `--model` / `--backend` options.

Each backend is imported only when chosen, so the CLI starts without torch or transformers.
"""
from __future__ import annotations

from agent.backends.base import Backend, BackendBase, Constraint, JsonSchema, Message
from agent.backends.options import EngineOptions
from agent.errors import VlagentError

__all__ = ["Backend", "BackendBase", "Constraint", "JsonSchema", "Message", "EngineOptions", "load_backend",
           "BACKENDS", "DEFAULT_MODEL", "TINY_RANDOM"]

DEFAULT_MODEL = "Qwen/Qwen3-VL-2B-Instruct"
BACKENDS = ("auto", "transformers", "openai")
TINY_RANDOM = "tiny-random"
SCRIPT_PREFIX = "script:"


def load_backend(model: str, backend: str = "auto", **opts) -> Backend:
    """`script:FILE` -> scripted replies; `tiny-random` -> the tiny random Qwen3-VL (built once,
    cached; `tiny-random:FAMILY` saved as that model family); anything else -> a hub id or local folder for transformers, or a model name served
    by an OpenAI-compatible server with backend="openai" (opts: base_url, ...). Other opts: `format`
    (a model family's reply format, agent/backends/families.py), `options` (EngineOptions)."""
    if backend not in BACKENDS:
        raise VlagentError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if model.startswith(SCRIPT_PREFIX):
        from agent.backends.script import ScriptBackend

        return ScriptBackend.from_file(model[len(SCRIPT_PREFIX):], format=opts.get("format"))
    if backend == "openai":
        from agent.backends.openai import OpenAIBackend

        return OpenAIBackend(model=model, **opts)
    from agent.backends.transformers import TransformersBackend

    if model == TINY_RANDOM or model.startswith(TINY_RANDOM + ":"):
        from agent.backends.tiny import tiny_checkpoint

        fam = model.partition(":")[2] or None  # tiny-random:mai-ui -> the tiny checkpoint saved as that family
        backend_ = TransformersBackend(tiny_checkpoint(family=fam), **opts)
        backend_.name = f"transformers:{model}"
        return backend_
    return TransformersBackend(model, **opts)
