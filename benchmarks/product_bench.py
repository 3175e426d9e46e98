"""`vlagent bench` (the default mode; benchmarks/bench_steps.py): an agent episode on the path `vlagent run` takes.

What is the same as a run: the backend (agent.backends.load_backend -> TransformersBackend, with the
engine where `vlagent run` would use it), the messages (agent.run.history.build_messages with the
default HistoryConfig and the backend's `fits` check), the task policy and its grammar
(tasks/fill_form.yaml's `allow:`), the reply check (actions.check_reply) and what the loop times
(prompt building + the model call, agent/run/loop.py).

What differs: screenshots are synthetic (a 1080p noisy desktop with a moving window, new content
every step; no X server), and the weights are random. Random weights never write a realistic
reply, so the model's choices are scripted: ScriptedMatcher keeps the real grammar matcher and,
where the grammar leaves a choice, narrows the mask to the next token of a native reply (a click,
a type, a key, in turn). Every token is still decoded or jump-forwarded exactly as the engine
would for a model that chose it, so token counts, grammar work and decode cost are the real ones.

In the same process, on the same prompts: transformers' `generate` with its defaults, and with a
static cache + torch.compile, decoding as many tokens as the scripted replies (the baselines).
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path

from engine_bench import frames, percentile, process_age_s

from agent.desktop.x11 import SETTLE_POLL_S
from agent.run.lookahead import Lookahead

TASK = Path(__file__).resolve().parents[1] / "tasks" / "fill_form.yaml"
# Native replies in turn: what a form-filling episode does (click a field, type, press a key).
SCRIPT = (
    {"action": "left_click", "coordinate": [412, 305]},
    {"action": "type", "text": "Ada Lovelace"},
    {"action": "key", "keys": ["tab"]},
    {"action": "type", "text": "ada@example.com"},
    {"action": "left_click", "coordinate": [508, 671]},
    {"action": "key", "keys": ["enter"]},
)
IDLE_S = 0.2  # steps back to back: the pause given to backend.idle between them (the desktop settles in ~0.3 s: desktop_time.json)
CLICKS = tuple({"action": "left_click", "coordinate": [100 + 67 * i % 800, 150 + 41 * i % 700]} for i in range(12))


class ScriptedMatcher:
    """A real reply matcher whose free choices follow a script (see the module doc). Same methods
    as the matcher the engine and the logits processor use; `model_choice` tells the engine that a
    one-token mask is a decoded choice, not a grammar-forced token to jump over. The script is the
    reply's text: a choice is the first token of what is left of it, so jump-forward (which feeds
    forced text in its own tokenization) cannot put the script out of step."""

    def __init__(self, real, script: str, tokenizer, stop_id: int):
        self.real, self.script, self.tokenizer, self.stop_id = real, script, tokenizer, stop_id
        self.done = ""  # reply text so far
        self.model_choice = False
        self.grammar_s = 0.0  # time inside the real matcher (mask fills, token accepts, forced strings)
        self.choices = 0

    def _next(self) -> int:
        rest = self.script[len(self.done):]
        return self.tokenizer(rest, add_special_tokens=False)["input_ids"][0] if rest else self.stop_id

    def fill_next_token_bitmask(self, bitmask, index: int = 0):
        import numpy as np

        t = time.perf_counter()
        need = self.real.fill_next_token_bitmask(bitmask, index)
        self.grammar_s += time.perf_counter() - t
        tok = self._next()
        words = bitmask[index].numpy()
        if not (int(words[tok // 32]) >> (tok % 32)) & 1:
            raise ValueError(f"scripted token {tok} is not allowed by the grammar here")
        nz = np.flatnonzero(words)
        one = len(nz) == 1 and bin(int(words[nz[0]]) & 0xFFFFFFFF).count("1") == 1
        self.model_choice = not one
        if not one:
            words[:] = 0
            words[tok // 32] = np.array([1 << (tok % 32)], dtype=np.uint32).view(np.int32)[0]
            self.choices += 1
        return True

    def accept_token(self, token_id: int) -> bool:
        t = time.perf_counter()
        ok = self.real.accept_token(token_id)
        self.grammar_s += time.perf_counter() - t
        if ok and token_id != self.stop_id:
            self.done += self.tokenizer.decode([token_id])
        return ok

    def accept_string(self, text: str) -> bool:
        return self.real.accept_string(text)

    def find_jump_forward_string(self) -> str:
        t = time.perf_counter()
        text = self.real.find_jump_forward_string()
        self.grammar_s += time.perf_counter() - t
        return text

    def is_terminated(self) -> bool:
        return self.real.is_terminated()


class ScriptedConstrainer:
    """Stands in for the backend's Constrainer: real matchers, scripted choices, one reply each call."""

    def __init__(self, real, tokenizer, replies, stop_id: int):
        from agent.run.history import tool_call_text

        self.real, self.tokenizer, self.stop_id = real, tokenizer, stop_id
        self.replies = [tool_call_text(a) for a in replies]
        self.calls = 0
        self.last: ScriptedMatcher | None = None

    def matcher(self, policy=None) -> ScriptedMatcher:
        self.last = ScriptedMatcher(self.real.matcher(policy), self.replies[self.calls % len(self.replies)],
                                    self.tokenizer, self.stop_id)
        self.calls += 1
        return self.last

    def reply_tokens(self, n: int) -> int:
        """Tokens of the n-th scripted reply (and its stop token) in the tokenizer's own split."""
        return len(self.tokenizer(self.replies[n % len(self.replies)], add_special_tokens=False)["input_ids"]) + 1

    def logits_processor(self, policy=None):
        from agent.backends.grammar import ReplyLogitsProcessor
        return ReplyLogitsProcessor(self.matcher(policy), self.real.vocab_size)


def save_random_2b(folder, device: str = "cuda", small: bool = False) -> None:
    """A local checkpoint of the real 2B architecture with random weights (bf16 on CUDA), Qwen's real
    vocabulary (agent/backends/qwen_vocab.py: config and tokenizer agree on the image token 151655),
    the real processor files and chat template, and a generation config that stops at <|im_end|>.
    small: the tiny checkpoint's layer sizes with the same vocabulary and ids (CPU profiling)."""
    import torch
    from transformers import GenerationConfig, Qwen3VLConfig, Qwen3VLForConditionalGeneration

    from engine_bench import build_model
    from agent.backends.budget import QWEN3_VL_2B_IDS
    from agent.backends.qwen_vocab import CONFIG_VOCAB, qwen_tokenizer, token_ids
    from agent.backends.tiny import TEXT, VISION, write_processor

    ids = token_ids()
    if small:
        cfg = Qwen3VLConfig(text_config=dict(TEXT, vocab_size=CONFIG_VOCAB), vision_config=dict(VISION),
                            tie_word_embeddings=True, **QWEN3_VL_2B_IDS)
        torch.manual_seed(0)
        model = Qwen3VLForConditionalGeneration(cfg).eval()
    else:
        model = build_model(None, False, device)[0]
    cfg = model.config
    if (cfg.image_token_id, cfg.vision_start_token_id, cfg.vision_end_token_id) != \
            (ids["<|image_pad|>"], ids["<|vision_start|>"], ids["<|vision_end|>"]):
        raise RuntimeError("the 2B config and Qwen's tokenizer disagree on the vision token ids")
    model.generation_config = GenerationConfig(bos_token_id=ids["<|endoftext|>"], pad_token_id=ids["<|endoftext|>"],
                                               eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]], do_sample=False)
    model.save_pretrained(folder)
    qwen_tokenizer().save_pretrained(folder)
    write_processor(Path(folder))


def random_2b_checkpoint() -> Path:
    """The random-weight 2B checkpoint in the vlagent cache, saved on first use (4.3 GB)."""
    import torch

    from agent.backends.tiny import cache_root
    folder = cache_root() / "random-2b-qwen-vocab-v1"
    if not (folder / "config.json").exists():
        tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
        save_random_2b(tmp, "cuda" if torch.cuda.is_available() else "cpu")
        os.replace(tmp, folder)
    return folder


def _device_name() -> str:
    import torch
    return torch.cuda.get_device_name() if torch.cuda.is_available() else (platform.processor() or "cpu")


def run_product_bench(model: str, steps: int = 12, screen=(1920, 1080), reply: str = "mix",
                      baselines: bool = True, peak_context: int = 0, decode_context: int = 0,
                      progress: bool = True, desktop_ms: float = 0.0, lookahead: bool = True, **engine) -> dict:
    """The episode (see the module doc); a dict of figures, with per-step rows in steps_detail.
    desktop_ms: the time the desktop takes between a reply and the next settled screenshot (0: steps
    back to back). In it, as in the loop (agent/run/loop.py), the action runs for desktop_ms less one
    settle poll, then the new frame is grabbed and shown to the lookahead (agent/run/lookahead.py),
    and the screen is called settled one poll later; the step is timed from there to the reply.
    engine: switches of the engine's options changed for this run (compile=True, kv_shift=True,
    fp8="block", sdpa="flash", warm_tokens=4096)."""
    import torch
    from PIL import Image

    from actions import check_reply
    from actions.policy import Policy
    from agent.backends import load_backend
    from agent.run.history import HistoryConfig, build_messages
    from agent.task import load_task
    from agent.trace import Step

    t_load = time.perf_counter()
    before_load = process_age_s()
    from agent.backends.engine import engine_options, with_options
    opts = with_options(engine_options(), **{k: v for k, v in engine.items() if v is not None})
    backend = load_backend(model, options=opts)
    load_s = time.perf_counter() - t_load
    cuda = backend.device.startswith("cuda")
    task = load_task(TASK)
    policy = Policy(task.allow)
    tok = backend.tokenizer
    if backend.constrainer is None:
        raise RuntimeError("the product bench needs xgrammar (the task's grammar)")
    stop = tok.convert_tokens_to_ids("<|im_end|>")
    backend.constrainer = scripted = ScriptedConstrainer(backend.constrainer, tok, CLICKS if reply == "click" else SCRIPT, stop)
    hcfg = HistoryConfig()
    fits = lambda msgs: backend.fits(msgs, policy)  # noqa: E731  (as the loop passes it)
    past: list[Step] = []
    shots: dict[int, Image.Image] = {}
    gen_frames = frames(*screen)
    rows, cold_start, prompts = [], None, []
    ahead = Lookahead(backend, policy, prepare=lookahead) if desktop_ms > 0 else None  # (its idle slices either way)
    frame = next(gen_frames)
    if cuda:
        torch.cuda.reset_peak_memory_stats()

    def desktop(before, n: int, past: list) -> Image.Image:
        """The action runs, the screen changes, the settle loop grabs it and calls it settled a poll later."""
        t = time.perf_counter()
        if ahead is not None:
            ahead.begin(lambda shot: build_messages(task.goal, list(past), shot, policy, lambda s: shots[s.step], hcfg, fits), before)
        now = next(gen_frames)
        time.sleep(max(0.0, t + (desktop_ms / 1e3 - SETTLE_POLL_S) - time.perf_counter()))
        if ahead is not None:
            ahead.seen(now)
        time.sleep(max(0.0, t + desktop_ms / 1e3 - time.perf_counter()))
        if ahead is not None:
            ahead.end()
        return now

    from rich.progress import Progress
    with Progress(disable=not progress, transient=True) as bar:
        task_bar = bar.add_task(f"bench {backend.name}", total=steps)
        for n in range(1, steps + 1):
            if n > 1:
                frame = desktop(frame, n, past)
            t0 = time.perf_counter()
            messages = build_messages(task.goal, past, frame, policy, lambda s: shots[s.step], hcfg, fits)
            t1 = time.perf_counter()
            raw = backend.generate(messages, policy)
            t2 = time.perf_counter()
            if cold_start is None:
                cold_start = process_age_s()
            action = check_reply(raw, policy)  # the scripted reply must pass like a model's would
            shots[n] = frame
            past.append(Step(step=n, raw=raw, action=action, frame=frame.size))
            m = scripted.last
            bt = getattr(backend, "last_timings", {}) or {}
            et = backend.engine.last_timings if backend.engine is not None else None
            row = dict(step=n, action=action.action, prompt_ms=(t1 - t0) * 1e3, model_ms=(t2 - t1) * 1e3,
                       step_ms=(t2 - t0) * 1e3, grammar_ms=m.grammar_s * 1e3, choices=m.choices,
                       images=sum(1 for x in messages for p in x["content"] if p.get("type") == "image"),
                       **{k: v for k, v in bt.items()})
            if et is not None:
                row.update(preprocess_ms=et.preprocess_ms, vision_ms=et.vision_ms - et.preprocess_ms, prefill_ms=et.prefill_ms, decode_ms=et.decode_ms,
                           prompt_tokens=et.prompt_tokens, reused_tokens=et.reused_tokens, shifted_tokens=et.shifted_tokens,
                           new_tokens=et.new_tokens, decode_steps=et.decode_steps, images_encoded=et.images_encoded,
                           peak_gib=max(et.peak_vision_gib, et.peak_prefill_gib, et.peak_decode_gib))
            if ahead is None:  # back to back: the deferred graph captures, untimed, as the loop does while the desktop acts
                t3 = time.perf_counter()
                backend.idle(IDLE_S)
                row["idle_ms"] = (time.perf_counter() - t3) * 1e3
            rows.append(row)
            prompts.append((messages, scripted.reply_tokens(scripted.calls - 1)))
            bar.advance(task_bar)
    if ahead is not None:
        ahead.close()
    warm = rows[1:] or rows
    steady = [r for r in warm if r["images"] == hcfg.max_images] or warm

    def med(key, rs=warm):
        vals = [r[key] for r in rs if key in r]
        return statistics.median(vals) if vals else None

    clicks = [r for r in steady if r["action"] == "left_click"]
    result = dict(
        mode="product", device=_device_name(), model=backend.name, torch=torch.__version__,
        transformers=__import__("transformers").__version__, engine=backend.engine is not None,
        compile=bool(getattr(opts, "compile", False)), kv_shift=bool(getattr(opts, "kv_shift", False)),
        fp8=getattr(backend.model, "fp8_layout", None) or getattr(opts, "fp8", None),
        fp8_kernels=bool(getattr(backend.model, "fp8_kernels", False)),
        screen=list(screen), steps=steps, reply=reply, desktop_ms=desktop_ms, lookahead=ahead is not None and lookahead,
        lookahead_jobs=ahead.prepared if ahead is not None else 0,
        history=dict(max_images=hcfg.max_images, evict_chunk=hcfg.evict_chunk),
        step_ms_p50=percentile([r["step_ms"] for r in warm], 0.5),
        step_ms_p95=percentile([r["step_ms"] for r in warm], 0.95),
        steady_steps=len(steady),  # steps with the full history of screenshots
        steady_step_ms_p50=percentile([r["step_ms"] for r in steady], 0.5),
        steady_step_ms_p95=percentile([r["step_ms"] for r in steady], 0.95),
        click_step_ms_p50=percentile([r["step_ms"] for r in clicks], 0.5) if clicks else None,
        click_step_ms_p95=percentile([r["step_ms"] for r in clicks], 0.95) if clicks else None,
        prompt_ms=med("prompt_ms"), model_ms=med("model_ms"), encode_ms=med("encode_ms"), preprocess_ms=med("preprocess_ms"),
        vision_ms=med("vision_ms"), prefill_ms=med("prefill_ms"), decode_ms=med("decode_ms"),
        grammar_ms=med("grammar_ms"), new_tokens=med("new_tokens"), choices=med("choices"), decode_steps=med("decode_steps"),
        prompt_tokens=med("prompt_tokens"),
        cold_start_s=cold_start, process_to_load_s=before_load, load_s=load_s, first_step_ms=rows[0]["step_ms"],
        load_timings=getattr(backend, "load_timings", {}),
        peak_gib=(torch.cuda.max_memory_allocated() / 2 ** 30) if cuda else None,
        steps_detail=rows,
    )
    dec = [r for r in warm if r.get("decode_ms")]
    if dec:
        result["grammar_pct_of_decode"] = 100 * sum(r["grammar_ms"] for r in dec) / sum(r["decode_ms"] for r in dec)
        result["decode_tok_s_episode"] = sum(r["new_tokens"] - 1 for r in dec) / sum(r["decode_ms"] for r in dec) * 1e3
    if backend.engine is not None and decode_context:
        result.update(decode_rate(backend, decode_context))
    if backend.engine is not None and peak_context and cuda:
        result.update(context_peak(backend, peak_context, screen))
    if baselines:
        result.update(run_baselines(backend, prompts[-3:], result["step_ms_p50"]))
    if backend.engine is not None:  # at the end: a fused kernel that failed on the way shows as the torch ops
        result["decode"] = backend.engine.decode_info()
    return result


def _text_ids(n: int, vocab: int, seed: int) -> list[int]:
    import random
    rng = random.Random(seed)
    return [rng.randrange(1000, vocab) for _ in range(n)]


def decode_rate(backend, context: int) -> dict:
    """Unconstrained decode speed with ~`context` tokens in the cache (a long episode's state)."""
    eng = backend.engine
    eng.reset()
    ids = _text_ids(context - 128, 150000, 2)
    eng.generate(ids, [], max_new_tokens=8, min_new_tokens=8)  # prefill (and capture) first
    g = eng.generate(ids, [], max_new_tokens=128, min_new_tokens=128)
    t = g.timings
    eng.reset()
    return {"decode_context": context, "decode_tok_s_at_context": (t.new_tokens - 1) / (t.decode_ms / 1e3)}


def context_peak(backend, context: int, screen) -> dict:
    """Peak device memory for one screenshot plus text filling `context` tokens, against the planner."""
    import torch
    from agent.backends.budget import plan
    from agent.backends.engine import EngineImage, image_key

    eng = backend.engine
    eng.reset()
    eng.vision.clear()
    img = next(frames(*screen))
    pv, grid = backend._pixels(img)
    im = EngineImage(pv, tuple(int(v) for v in grid[0]), key=image_key(img))
    cfg = backend.model.config
    n = im.grid_thw[0] * im.grid_thw[1] * im.grid_thw[2] // cfg.vision_config.spatial_merge_size ** 2
    ids = _text_ids(100, 150000, 3) + [cfg.vision_start_token_id] + [cfg.image_token_id] * n + [cfg.vision_end_token_id]
    ids += _text_ids(context - len(ids) - 64, 150000, 4)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    g = eng.generate(ids, [im], max_new_tokens=32, min_new_tokens=32)
    tm = g.timings
    peak = max(tm.peak_vision_gib, tm.peak_prefill_gib, tm.peak_decode_gib)
    total = float(torch.cuda.get_device_properties(0).total_memory)
    from agent.backends.engine import model_weight_bytes
    params, weights = model_weight_bytes(backend.model)  # FP8 linears counted as theirs
    budget = plan(cfg, total, screen, model="random-2b", device=_device_name(), context=eng.max_context, dtype_bytes=2,
                  params=params, weight_bytes=weights)
    eng.reset()
    return {"peak_context": len(ids) + 32, "peak_context_gib": peak, "planned_peak_gib": budget.predicted_peak_gib,
            "planner_error_pct": 100 * (budget.predicted_peak_gib / peak - 1), "engine_context": eng.max_context}


def run_baselines(backend, prompts, product_p50: float) -> dict:
    """transformers' generate on the same prompts: its defaults, then a static cache + torch.compile.
    Each decodes as many tokens as the scripted reply of that step (no grammar, no stop)."""
    import torch
    from transformers import GenerationConfig

    out = {}
    model = backend.model
    processor = backend.reference_processor()
    if not hasattr(model, "generate"):  # the engine's native load (no transformers model): load theirs
        from agent.backends.hf_import import model_class
        model = model_class().from_pretrained(backend.folder, dtype=backend.dtype, device_map=backend.device).eval()
    shipped = model.generation_config
    for name, extra in (("generate_defaults", {}), ("generate_static_compile", {"cache_implementation": "static"})):
        times, toks = [], 0
        for i, (messages, n_new) in enumerate([prompts[0]] + list(prompts)):  # the first run warms up (compiles)
            inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                   return_dict=True, return_tensors="pt").to(model.device)
            cfg = GenerationConfig(do_sample=False, max_new_tokens=n_new, min_new_tokens=n_new,
                                   eos_token_id=shipped.eos_token_id, pad_token_id=shipped.pad_token_id, **extra)
            if backend.device.startswith("cuda"):
                torch.cuda.synchronize()
            t = time.perf_counter()
            with torch.inference_mode():
                model.generate(**inputs, generation_config=cfg)
            if backend.device.startswith("cuda"):
                torch.cuda.synchronize()
            if i:
                times.append((time.perf_counter() - t) * 1e3)
                toks += n_new
            else:
                out[f"{name}_first_call_s"] = time.perf_counter() - t
        p50 = statistics.median(times)
        out[f"{name}_step_ms_p50"] = p50
        out[f"{name}_ratio"] = p50 / product_p50  # how many times slower than the product path
    return out


def write_json(result: dict, path: str) -> None:
    import math
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    clean = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in result.items()}
    Path(path).write_text(json.dumps(clean, indent=1, default=str), encoding="utf-8")
