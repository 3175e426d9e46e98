"""`vlagent budget`: how many tokens (and screenshots) fit in device memory, computed, not guessed.

    KV bytes/token  = 2 (K and V) x layers x kv_heads x head_dim x dtype bytes
    token budget    = min(model max context,
                          (device memory - weights - activation reserve - vision cache - margin) / KV bytes/token)
    tokens/image    = (W' / 32) x (H' / 32) + 2, W' and H' rounded to multiples of 32 (16 px patches, 2x2 merge)
    predicted peak  = weights + KV(context) + activation reserve + vision cache

The activation reserve is the largest transient of one step: the vision encoder on one
screenshot, or one prefill chunk of the engine (agent/backends/engine.py), whichever is larger, from the
model's shapes; RESERVE_FIXED covers what the shapes don't show (cuBLAS workspace, graph pools,
logits), set from the H100 runs in benchmarks/results/.
"""
from __future__ import annotations

from dataclasses import dataclass
from agent.backends import DEFAULT_MODEL
from agent.errors import VlagentError


GIB = 1024 ** 3
DEFAULT_CARD_GIB = 24.0  # the user's RTX 4090D, when there is no GPU here
RESERVE_FIXED = 160 * 1024 ** 2  # bytes: cuBLAS workspace, CUDA graph pool, logits, allocator slack
MARGIN = 0.5 * GIB  # bytes left free for the CUDA context / other processes' noise on the card
PROMPT_TOKENS = 1500  # system prompt with the computer_use tool + the task
STEP_TEXT_TOKENS = 80  # per history step: its action and outcome as text, reply included
KV_BUCKET = 1024  # tokens: the engine's decode attention reads the cache up to the next multiple of this
PREFILL_CHUNK = 2048  # tokens per engine prefill pass: bounds activation memory at long context
VISION_CACHE_SIZE = 6  # encoded images the engine keeps: a 4-shot history plus an eviction chunk (33 MB each at 1080p)

# The real Qwen3-VL-2B-Instruct shapes (config.json), so planning and benchmarks need no download.
QWEN3_VL_2B_TEXT = dict(hidden_size=2048, intermediate_size=6144, num_hidden_layers=28,
                        num_attention_heads=16, num_key_value_heads=8, head_dim=128,
                        vocab_size=151936, rms_norm_eps=1e-6, max_position_embeddings=262144,
                        tie_word_embeddings=True, hidden_act="silu",
                        rope_parameters={"rope_type": "default", "rope_theta": 5_000_000.0,
                                         "mrope_section": [24, 20, 20], "mrope_interleaved": True},
                        bos_token_id=151643, eos_token_id=151645)
QWEN3_VL_2B_VISION = dict(depth=24, hidden_size=1024, intermediate_size=4096, num_heads=16,
                          patch_size=16, spatial_merge_size=2, temporal_patch_size=2, in_channels=3,
                          out_hidden_size=2048, deepstack_visual_indexes=[5, 11, 17],
                          num_position_embeddings=2304, hidden_act="gelu_pytorch_tanh")
QWEN3_VL_2B_IDS = dict(image_token_id=151655, video_token_id=151656, vision_start_token_id=151652,
                       vision_end_token_id=151653)


def qwen3_vl_2b_config():
    from transformers import Qwen3VLConfig
    return Qwen3VLConfig(text_config=dict(QWEN3_VL_2B_TEXT), vision_config=dict(QWEN3_VL_2B_VISION),
                         tie_word_embeddings=True, **QWEN3_VL_2B_IDS)


def _shapes_2b():
    """The 2B shapes as plain attributes: planning the default model needs no transformers import."""
    from types import SimpleNamespace as NS
    return NS(text_config=NS(**QWEN3_VL_2B_TEXT), vision_config=NS(**QWEN3_VL_2B_VISION), is_2b=True)


def load_config(model: str | None):
    """The model's config: the built-in 2B shapes for the default id (no download), else from_pretrained."""
    if model in (None, DEFAULT_MODEL, "random-2b"):
        return _shapes_2b()
    from transformers import AutoConfig
    try:
        return AutoConfig.from_pretrained(model)
    except Exception as e:  # not found, offline, not a Qwen3-VL folder
        raise VlagentError(f"cannot read the config of {model!r}: {str(e).splitlines()[0]}") from None


def kv_bytes_per_token(text_cfg, dtype_bytes: int = 2) -> int:
    head_dim = getattr(text_cfg, "head_dim", None) or text_cfg.hidden_size // text_cfg.num_attention_heads
    return 2 * text_cfg.num_hidden_layers * text_cfg.num_key_value_heads * head_dim * dtype_bytes


def resized(width: int, height: int) -> tuple[int, int]:
    """The size the processor resizes a screenshot to (multiples of 32 within its pixel bounds)."""
    from agent.backends.qwen_images import QWEN3_VL_IMAGE, resized_size

    return resized_size(width, height, QWEN3_VL_IMAGE)


def tokens_per_image(width: int, height: int) -> int:
    """Prompt tokens of one screenshot, vision start/end included."""
    from agent.backends.qwen_images import QWEN3_VL_IMAGE, image_tokens

    return image_tokens(width, height, QWEN3_VL_IMAGE)


QWEN3_VL_2B_PARAMS = 2_127_532_032  # counted on the meta device from the config above


def param_count(config) -> int:
    """Parameters of the model, counted on the meta device (no memory, no download)."""
    if getattr(config, "is_2b", False):
        return QWEN3_VL_2B_PARAMS
    import torch
    from transformers import AutoModelForImageTextToText

    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(config)
    return sum(p.numel() for p in model.parameters())


def vision_activation_bytes(vcfg, width: int, height: int, dtype_bytes: int = 2) -> int:
    """Largest transient of the vision encoder on one image: a block's hidden states, qkv, MLP and
    the float32 patches coming in."""
    w, h = resized(width, height)
    patches = (w // 16) * (h // 16)
    per_patch = vcfg.hidden_size * (6 + 3) * dtype_bytes + vcfg.intermediate_size * 2 * dtype_bytes
    pixels_in = patches * vcfg.in_channels * vcfg.temporal_patch_size * vcfg.patch_size ** 2 * (4 + dtype_bytes)
    return patches * per_patch + pixels_in


def prefill_activation_bytes(tcfg, chunk: int, dtype_bytes: int = 2) -> int:
    """Largest transient of one prefill chunk: hidden states, fused QKV, float32 norms, the SwiGLU
    intermediates (attention runs GQA-native, so K/V are never expanded)."""
    hd = getattr(tcfg, "head_dim", None) or tcfg.hidden_size // tcfg.num_attention_heads
    qkv = (tcfg.num_attention_heads + 2 * tcfg.num_key_value_heads) * hd
    per_token = (tcfg.hidden_size * 4 * dtype_bytes + qkv * dtype_bytes + qkv * 4
                 + tcfg.intermediate_size * 4 * dtype_bytes)
    return chunk * per_token


def vision_cache_bytes(cfg, width: int, height: int, images: int, dtype_bytes: int = 2) -> int:
    """The engine keeps each encoded screenshot (embeddings + deepstack features) for reuse."""
    layers = 1 + len(getattr(cfg.vision_config, "deepstack_visual_indexes", []) or [])
    return images * (tokens_per_image(width, height) - 2) * cfg.text_config.hidden_size * layers * dtype_bytes


@dataclass
class Plan:
    model: str
    device: str
    device_gib: float
    dtype_bytes: int
    params: int
    weights_gib: float
    kv_bytes_per_token: int
    reserve_gib: float  # activation reserve: max(vision on one shot, one prefill chunk) + fixed
    vision_cache_gib: float
    max_context_model: int
    token_budget: int  # tokens of KV that fit (capped by the model's max context)
    screen: tuple[int, int]
    tokens_per_image: int
    images_fit: int  # screenshots of that size that fit in the budget with their step text
    history: int
    context: int  # the context the peak is predicted for
    predicted_peak_gib: float


def plan(config, device_bytes: float, screen: tuple[int, int] = (1920, 1080), *, model: str = DEFAULT_MODEL,
         device: str = "", dtype_bytes: int = 2, history: int = 4, context: int | None = None,
         params: int | None = None, prefill_chunk: int | None = None, vision_cache: int | None = None,
         weight_bytes: int | None = None) -> Plan:
    """weight_bytes: what the weights take when not params x dtype_bytes (FP8 linears: agent/backends/fp8.py)."""
    tcfg, vcfg = config.text_config, config.vision_config
    params = params if params is not None else param_count(config)
    weights = weight_bytes if weight_bytes is not None else params * dtype_bytes
    kv = kv_bytes_per_token(tcfg, dtype_bytes)
    chunk = (prefill_chunk or PREFILL_CHUNK) * 3 // 2  # balanced passes run up to 1.5 chunks
    reserve = max(vision_activation_bytes(vcfg, *screen, dtype_bytes),
                  prefill_activation_bytes(tcfg, chunk, dtype_bytes)) + RESERVE_FIXED
    vcache = vision_cache_bytes(config, *screen, vision_cache or VISION_CACHE_SIZE, dtype_bytes)
    free = device_bytes - weights - reserve - vcache - MARGIN
    max_ctx = int(tcfg.max_position_embeddings)
    budget = max(0, min(max_ctx, int(free // kv)))
    per_image = tokens_per_image(*screen)
    fit = max(0, (budget - PROMPT_TOKENS) // (per_image + STEP_TEXT_TOKENS))
    ctx = context if context is not None else budget
    peak = weights + kv * ctx + reserve + vcache
    return Plan(model=model, device=device, device_gib=round(device_bytes / GIB, 2), dtype_bytes=dtype_bytes,
                params=params, weights_gib=round(weights / GIB, 3), kv_bytes_per_token=kv,
                reserve_gib=round(reserve / GIB, 3), vision_cache_gib=round(vcache / GIB, 3),
                max_context_model=max_ctx, token_budget=budget, screen=tuple(screen),
                tokens_per_image=per_image, images_fit=fit, history=history, context=ctx,
                predicted_peak_gib=round(peak / GIB, 3))


def current_device() -> tuple[str, float] | None:
    """(name, total bytes) of the current CUDA device, or None."""
    try:
        import torch
        if torch.cuda.is_available():
            return torch.cuda.get_device_name(), float(torch.cuda.get_device_properties(0).total_memory)
    except Exception:
        pass
    return None


def parse_screen(value: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in value.lower().split("x"))
        if w <= 0 or h <= 0:
            raise ValueError
        return w, h
    except ValueError:
        raise VlagentError(f"expected WxH like 1920x1080, got {value!r}") from None


# ---- many agents on one card (`vlagent serve`, `vlagent budget --agents N`)

OLDER_STEPS_TOKENS = 50 * 30  # steps older than the history, one ~30-token text line each: room for 50


def vision_per_agent(history: int) -> int:
    """Encoded screenshots the server keeps per agent: the history plus an eviction chunk."""
    return history + 2


def agent_context(screen: tuple[int, int], history: int = 4) -> int:
    """KV tokens one agent's region holds: the prompt, `history` screenshots with their step text,
    older steps as lines, and the longest reply the default policy's grammar allows (the server
    refuses a request that could outgrow its region), in whole engine blocks."""
    from agent.backends.grammar import max_reply_bytes

    need = (PROMPT_TOKENS + history * (tokens_per_image(*screen) + STEP_TEXT_TOKENS) + OLDER_STEPS_TOKENS
            + max_reply_bytes() + 2)  # + the stop token and the region's scratch slot
    return -(-need // KV_BUCKET) * KV_BUCKET


@dataclass
class AgentsPlan:
    model: str
    device: str
    device_gib: float
    agents: int
    screen: tuple[int, int]
    history: int
    context_per_agent: int  # KV tokens of each agent's region
    kv_gib_per_agent: float
    vision_cache_gib: float  # all agents' encoded screenshots
    weights_gib: float
    reserve_gib: float  # the largest transient of one step (prefill chunk or vision encoder) + fixed
    predicted_peak_gib: float
    agents_fit: int  # how many agents of this context the card holds
    fits: bool


def plan_agents(config, device_bytes: float, agents: int, screen: tuple[int, int] = (1920, 1080), *,
                history: int = 4, context: int | None = None, model: str = DEFAULT_MODEL, device: str = "",
                dtype_bytes: int = 2, params: int | None = None, weight_bytes: int | None = None) -> AgentsPlan:
    """Memory for `agents` conversations served at once: weights once, a KV region and a share of
    the vision cache per agent, one step's transient (steps run one prefill at a time)."""
    one = plan(config, device_bytes, screen, model=model, device=device, dtype_bytes=dtype_bytes,
               history=history, params=params, context=0, weight_bytes=weight_bytes)
    ctx = context or agent_context(screen, history)
    kv_agent = one.kv_bytes_per_token * ctx
    vision_agent = vision_cache_bytes(config, *screen, vision_per_agent(history), dtype_bytes)
    weights, reserve = one.weights_gib * GIB, one.reserve_gib * GIB
    fit = max(0, int((device_bytes - weights - reserve - MARGIN) // (kv_agent + vision_agent)))
    peak = weights + reserve + agents * (kv_agent + vision_agent)
    return AgentsPlan(model=model, device=device, device_gib=round(device_bytes / GIB, 2), agents=agents,
                      screen=tuple(screen), history=history, context_per_agent=ctx,
                      kv_gib_per_agent=round(kv_agent / GIB, 3), vision_cache_gib=round(agents * vision_agent / GIB, 3),
                      weights_gib=one.weights_gib, reserve_gib=one.reserve_gib,
                      predicted_peak_gib=round(peak / GIB, 3), agents_fit=fit, fits=agents <= fit)
