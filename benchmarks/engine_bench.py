"""`vlagent bench --mode engine` (benchmarks/bench_steps.py): an agent episode on the real Qwen3-VL-2B architecture, timed step by step.

Each step brings a new screenshot (synthetic, new content every step), the prompt is rendered
with the same rolling-history rule as the agent (agent.run.history.first_image_step: the newest K
screenshots as images, older steps as one text line each, evicted in chunks), and the model
replies with a fixed number of tokens (random weights never stop on their own). The engine
(agent/backends/engine.py) reuses the KV cache of the unchanged prefix between steps.

Prompt text is synthetic token ids (the 2B shapes need no tokenizer); lengths follow the real
prompt: about 1,000 tokens of system prompt with the tool, ~40 per observation, ~25 per reply.
"""
from __future__ import annotations

import json
import math
import os
import platform
import statistics
import time
from dataclasses import asdict


PROCESS_START = time.time()  # fallback for the cold start when psutil is missing

SYSTEM_TOKENS = 1000  # system prompt with the computer_use tool description
TASK_TOKENS = 40  # the goal
OBSERVATION_TOKENS = 40  # "Step N. Here is the screen..." per user turn
STEP_LINE_TOKENS = 30  # an older step as one text line
IM_START, IM_END = 151644, 151645  # Qwen's chat markers (the tiny model maps its own)
GRAMMAR_EBNF = r'''
root ::= "<tool_call>\n{\"name\": \"computer_use\", \"arguments\": {\"action\": " action "}}\n</tool_call>"
action ::= "\"left_click\", \"coordinate\": [" num ", " num "]" | "\"type\", \"text\": \"" [a-zA-Z0-9 @.]* "\"" | "\"key\", \"keys\": [\"" [a-z]+ "\"]"
num ::= [0-9] | [1-9] [0-9] | [1-9] [0-9] [0-9] | "1000"
'''
# A click reply, as `--reply click` constrains every step to (native format, forced parts jump forward).
CLICK_EBNF = r'''
root ::= "<tool_call>\n{\"name\": \"computer_use\", \"arguments\": {\"action\": \"left_click\", \"coordinate\": [" num ", " num "]}}\n</tool_call>"
num ::= [1-9] [0-9] [0-9]
'''


def process_age_s() -> float:
    try:
        import psutil
        return time.time() - psutil.Process().create_time()
    except Exception:
        return time.time() - PROCESS_START


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    v = sorted(values)
    k = (len(v) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


def _processors(folder):
    # Image processor and tokenizer only: the video processor needs torchvision, which CPU installs lack.
    from transformers import AutoImageProcessor, AutoTokenizer
    return AutoImageProcessor.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)


LOAD_TIMES: dict[str, float] = {}  # where a cold start goes: imports, weights


def build_model(model: str | None, tiny: bool, device: str):
    """(model, image_processor, tokenizer or None, label) in bf16 on `device` (float32 on the CPU)."""
    _t0 = time.perf_counter()
    import torch
    from transformers import Qwen3VLForConditionalGeneration

    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    LOAD_TIMES["import_s"] = time.perf_counter() - _t0
    if tiny:
        from agent.backends.tiny import tiny_checkpoint
        folder = tiny_checkpoint()
        m = Qwen3VLForConditionalGeneration.from_pretrained(folder, dtype=dtype).to(device).eval()
        return (m, *_processors(folder), "tiny-random")
    if model:
        procs = _processors(model)
        t = time.perf_counter()
        # Straight onto the device (no CPU copy first): most of a cold start is this load.
        m = Qwen3VLForConditionalGeneration.from_pretrained(model, dtype=dtype, attn_implementation="sdpa",
                                                            device_map=device).eval()
        LOAD_TIMES["weights_s"] = time.perf_counter() - t
        return (m, *procs, model)
    from transformers import Qwen2VLImageProcessor
    from agent.backends.tiny import IMAGE_PROCESSOR
    from agent.backends.budget import qwen3_vl_2b_config
    cfg = qwen3_vl_2b_config()
    cfg._attn_implementation = "sdpa"
    cfg.text_config._attn_implementation = cfg.vision_config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device(device):
        m = Qwen3VLForConditionalGeneration(cfg).to(dtype).eval()
    return m, Qwen2VLImageProcessor(**IMAGE_PROCESSOR), None, "random-2b"


def frames(width: int, height: int):
    """Endless synthetic screenshots: a fixed noisy desktop with a moving window, so each differs."""
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    step = 0
    while True:
        a = base.copy()
        y, x = (37 * step) % max(1, height // 2), (53 * step) % max(1, width // 2)
        a[y:y + height // 3, x:x + width // 3] = (step * 41) % 256
        yield Image.fromarray(a)
        step += 1


class Prompter:
    """Builds each step's token ids like agent.run.history renders messages, with synthetic text."""

    def __init__(self, vocab: int, ids: dict, history: int, evict: int, seed: int = 0):
        import random
        self.rng = random.Random(seed)
        self.vocab, self.ids = vocab, ids
        from agent.run.history import HistoryConfig
        self.hcfg = HistoryConfig(max_images=history, evict_chunk=evict)
        self.roles = {r: self.text(2) for r in ("system", "user", "assistant")}
        self.newline = self.text(1)[0]
        self.system = self.text(SYSTEM_TOKENS)
        self.task = self.text(TASK_TOKENS)
        self.steps: list[dict] = []  # past steps: image, image tokens, observation, reply, line

    def text(self, n: int) -> list[int]:
        return [self.rng.randrange(0, self.vocab) for _ in range(n)]

    def turn(self, role: str, body: list[int]) -> list[int]:
        """<|im_start|>role\n body <|im_end|>\n, with fixed ids for the role and newline."""
        return [self.ids["im_start"], *self.roles[role], *body, self.ids["im_end"], self.newline]

    def build(self, current) -> tuple[list[int], list]:
        """current: (image, n_placeholders, observation ids). Returns (ids, images in order)."""
        from agent.run.history import first_image_step
        first = first_image_step(len(self.steps), self.hcfg)
        older = [t for s in self.steps[:first] for t in s["line"]]
        ids = self.turn("system", self.system) + self.turn("user", self.task + older)
        images = []
        for s in self.steps[first:] + [current]:
            ids += self.turn("user", [self.ids["vstart"], *[self.ids["image"]] * s["n"], self.ids["vend"], *s["obs"]])
            images.append(s["image"])
            if "reply" in s:
                ids += self.turn("assistant", s["reply"])
        ids += [self.ids["im_start"], *self.roles["assistant"]]  # the reply follows
        return ids, images


def make_grammar(tokenizer, vocab: int, ebnf: str = GRAMMAR_EBNF):
    """A compiled native tool-call grammar (xgrammar is a hard dependency), by the backends' one
    compiler (agent/backends/grammar.py)."""
    from agent.backends.grammar import make_constrainer

    if tokenizer is None:  # the 2B shapes have no tokenizer offline: the tiny one stands in (same bitmask size)
        from transformers import AutoTokenizer
        from agent.backends.tiny import tiny_checkpoint
        tokenizer = AutoTokenizer.from_pretrained(tiny_checkpoint())
    return make_constrainer(tokenizer, vocab).compile_ebnf(ebnf)


def run_bench(model: str | None = None, tiny: bool = False, steps: int = 12, screen=(1920, 1080),
              history: int = 4, evict: int = 2, reply_tokens: int = 25, context: int = 32768,
              compile: bool = False, attention: str = "bmm", peak_context: int = 0,
              grammar: bool = True, reply: str = "fixed", progress: bool = True) -> dict:
    import torch
    from agent.backends.budget import plan
    from agent.backends.engine import KV_BUCKET, Engine, EngineImage, image_key

    if compile:
        from agent.backends.options import cache_dir

        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache_dir() / "inductor"))
    device = "cuda" if torch.cuda.is_available() and not tiny else "cpu"
    process_at_build = process_age_s()  # interpreter start and imports before the model
    t_build = time.perf_counter()
    m, improc, tok, label = build_model(model, tiny, device)
    cfg = m.config
    vocab = cfg.text_config.vocab_size
    # Vision ids from the model's config (the truth); chat markers from the tokenizer when there is one.
    ids = dict(im_start=IM_START, im_end=IM_END, vstart=cfg.vision_start_token_id,
               vend=cfg.vision_end_token_id, image=cfg.image_token_id)
    text_vocab = 150000 if vocab > 150000 else vocab - 64  # ordinary tokens only
    if tok is not None:
        ids.update(im_start=tok.convert_tokens_to_ids("<|im_start|>"), im_end=tok.convert_tokens_to_ids("<|im_end|>"))
        text_vocab = min(text_vocab, len(tok) - 64)
    eng = Engine(m, max_context=context, compile=compile, attention=attention)
    build_s = time.perf_counter() - t_build
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    prompter = Prompter(text_vocab, ids, history, evict)
    pre_kw = {"device": device} if device == "cuda" and "Pil" not in type(improc).__name__ else {}
    merge = cfg.vision_config.spatial_merge_size

    def preprocess(img):
        t = time.perf_counter()
        out = improc(images=[img], return_tensors="pt", **pre_kw)
        grid = tuple(int(v) for v in out["image_grid_thw"][0])
        im = EngineImage(out["pixel_values"].to(device), grid, key=image_key(img))
        if device == "cuda":
            torch.cuda.synchronize()
        return im, (time.perf_counter() - t) * 1e3

    # Decode graphs for the spans the episode will touch, before the first step (part of the cold start).
    per_image = screen[0] * screen[1]  # upper bound on placeholders, refined by the first frame
    rows, cold_start = [], None
    click = None
    if reply == "click":  # every reply constrained to a native click; forced tokens jump forward
        import xgrammar as xgr
        click = make_grammar(tok, vocab, CLICK_EBNF)
        stop = {tok.convert_tokens_to_ids("<|im_end|>")} if tok is not None else {IM_END}
    gen_frames = frames(*screen)
    from rich.progress import Progress
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task(f"bench {label}", total=steps)
        for step in range(steps):
            img = next(gen_frames)
            t0 = time.perf_counter()
            im, pre_ms = preprocess(img)
            n = im.grid_thw[0] * im.grid_thw[1] * im.grid_thw[2] // merge ** 2
            if step == 0 and device == "cuda":
                need = SYSTEM_TOKENS + (history + 1) * (n + 200) + steps * STEP_LINE_TOKENS + reply_tokens + 1024
                eng.warmup(list(range(KV_BUCKET, min(context, need) + KV_BUCKET, KV_BUCKET)))
            obs = prompter.text(OBSERVATION_TOKENS)
            prompt, images = prompter.build({"image": im, "n": n, "obs": obs})
            if click is not None:
                gen = eng.generate(prompt, images, max_new_tokens=4 * reply_tokens,
                                   matcher=xgr.GrammarMatcher(click), stop_ids=stop)
            else:
                gen = eng.generate(prompt, images, max_new_tokens=reply_tokens, min_new_tokens=reply_tokens)
            step_ms = (time.perf_counter() - t0) * 1e3
            if cold_start is None:
                cold_start = process_age_s()
            tm = gen.timings
            rows.append(dict(step=step, preprocess_ms=pre_ms, vision_ms=tm.vision_ms, prefill_ms=tm.prefill_ms,
                             ttft_ms=pre_ms + tm.ttft_ms, decode_ms=tm.decode_ms, step_ms=step_ms,
                             prompt_tokens=tm.prompt_tokens, reused_tokens=tm.reused_tokens,
                             new_tokens=tm.new_tokens, images=len(images), images_encoded=tm.images_encoded,
                             peak_vision_gib=tm.peak_vision_gib, peak_prefill_gib=tm.peak_prefill_gib,
                             peak_decode_gib=tm.peak_decode_gib,
                             decode_tok_s=(tm.new_tokens - 1) / (tm.decode_ms / 1e3) if tm.decode_ms else 0.0))
            im.pixel_values = im.pixel_values.cpu()  # encoded and cached: keep the patches off the device
            prompter.steps.append({"image": im, "n": n, "obs": obs, "reply": gen.tokens,
                                   "line": prompter.text(STEP_LINE_TOKENS)})
            bar.advance(task)
    # The engine reads (and resets) the high-water mark per phase; the episode's peak is their max.
    peak = max(max(r["peak_vision_gib"], r["peak_prefill_gib"], r["peak_decode_gib"]) for r in rows) \
        if device == "cuda" else float("nan")
    warm = rows[1:] or rows

    def med(key):
        return statistics.median(r[key] for r in warm)

    result = dict(
        device=torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu",
        model=label, torch=torch.__version__, transformers=__import__("transformers").__version__,
        screen=list(screen), history=history, evict_chunk=evict, steps=steps, reply_tokens=reply_tokens, reply=reply,
        reply_tokens_median=statistics.median(r["new_tokens"] for r in rows),
        context=context, compile=compile, attention=attention,
        step_ms_p50=percentile([r["step_ms"] for r in warm], 0.5),
        step_ms_p95=percentile([r["step_ms"] for r in warm], 0.95),
        ttft_ms=med("ttft_ms"), preprocess_ms=med("preprocess_ms"), vision_ms=med("vision_ms"),
        prefill_ms=med("prefill_ms"), decode_ms=med("decode_ms"), decode_tok_s=med("decode_tok_s"),
        cold_start_s=cold_start, build_s=build_s, **LOAD_TIMES, process_to_build_s=process_at_build, first_step_ms=rows[0]["step_ms"], peak_gib=peak,
        steps_detail=rows,
    )
    if grammar:
        result.update(grammar_cost(eng, prompter, tok, vocab, gen_frames, preprocess, merge, reply_tokens))
    if peak_context:
        result.update(long_context_peak(eng, m, peak_context, text_vocab, gen_frames, preprocess, merge, device))
    total = float(torch.cuda.get_device_properties(0).total_memory) if device == "cuda" else 24 * 2 ** 30
    budget = plan(cfg, total, screen, model=label, device=result["device"], history=history,
                  context=context, dtype_bytes=2 if device == "cuda" else 4)
    result["budget"] = asdict(budget)
    result["predicted_peak_gib"] = budget.predicted_peak_gib
    return result


def grammar_cost(eng, prompter, tok, vocab, gen_frames, preprocess, merge, reply_tokens) -> dict:
    """Decode cost of the native-reply grammar on a warm prompt: the bitmask alone (jump-forward
    off, ms per token against unconstrained decoding), and a whole constrained reply with forced
    tokens fed in batches (jump-forward on)."""
    compiled = make_grammar(tok, vocab)
    import xgrammar as xgr
    im, _ = preprocess(next(gen_frames))
    n = im.grid_thw[0] * im.grid_thw[1] * im.grid_thw[2] // merge ** 2
    prompt, images = prompter.build({"image": im, "n": n, "obs": prompter.text(OBSERVATION_TOKENS)})
    free, masked, jump, jump_tokens = [], [], [], 0
    for _ in range(3):
        g = eng.generate(prompt, images, max_new_tokens=reply_tokens, min_new_tokens=reply_tokens)
        free.append(g.timings.decode_ms / max(1, g.timings.new_tokens - 1))
        eng.jump_forward = False
        g = eng.generate(prompt, images, max_new_tokens=reply_tokens, matcher=xgr.GrammarMatcher(compiled))
        masked.append(g.timings.decode_ms / max(1, g.timings.new_tokens - 1))
        eng.jump_forward = True
        g = eng.generate(prompt, images, max_new_tokens=reply_tokens, matcher=xgr.GrammarMatcher(compiled))
        jump.append(g.timings.decode_ms + g.timings.prefill_ms)
        jump_tokens = g.timings.new_tokens
    f, c = statistics.median(free), statistics.median(masked)
    return {"decode_ms_per_token": f, "grammar_decode_ms_per_token": c, "grammar_overhead_pct": (c / f - 1) * 100,
            "grammar_jump_reply_tokens": jump_tokens, "grammar_jump_prefill_decode_ms": statistics.median(jump)}


def long_context_peak(eng, m, context, text_vocab, gen_frames, preprocess, merge, device) -> dict:
    """Peak device memory for one screenshot plus text filling `context` tokens (the baseline's 32K case)."""
    import random
    import torch
    from agent.backends.engine import Engine
    if eng.max_context < context:
        return {"peak_context": "skipped: engine context smaller"}
    eng.reset()
    eng.vision.clear()  # a fresh single-shot conversation: no cached screenshots from the episode
    im, _ = preprocess(next(gen_frames))
    n = im.grid_thw[0] * im.grid_thw[1] * im.grid_thw[2] // merge ** 2
    rng = random.Random(1)
    cfg = m.config
    head = [rng.randrange(text_vocab) for _ in range(100)]
    ids = head + [cfg.vision_start_token_id] + [cfg.image_token_id] * n + [cfg.vision_end_token_id]
    ids += [rng.randrange(text_vocab) for _ in range(context - len(ids) - 64)]
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    g = eng.generate(ids, [im], max_new_tokens=32, min_new_tokens=32)
    tm = g.timings
    peak = max(tm.peak_vision_gib, tm.peak_prefill_gib, tm.peak_decode_gib) if device == "cuda" else float("nan")
    return {"peak_context": len(ids) + 32, "peak_context_gib": peak, "peak_context_ttft_ms": g.timings.ttft_ms,
            "peak_context_decode_tok_s": (g.timings.new_tokens - 1) / (g.timings.decode_ms / 1e3)}
