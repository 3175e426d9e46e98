"""The fast engine gives the same tokens as transformers' own forward, and prefix reuse gives the
same replies as a full re-prefill (greedy, on the CPU, with a small random Qwen3-VL)."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration  # noqa: E402

from agent.backends.engine import Engine, EngineImage, image_spans, mrope_positions  # noqa: E402

IMAGE, VSTART, VEND = 500, 501, 502  # placeholder ids of the small model
VOCAB = 512
PATCH, MERGE = 16, 2


def small_model(seed: int = 0):
    text = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                num_key_value_heads=2, head_dim=16, vocab_size=VOCAB, rms_norm_eps=1e-6,
                max_position_embeddings=4096, tie_word_embeddings=False,
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                 "mrope_section": [2, 3, 3], "mrope_interleaved": True})
    vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=PATCH,
                  spatial_merge_size=MERGE, temporal_patch_size=2, out_hidden_size=64,
                  num_position_embeddings=256, deepstack_visual_indexes=[0, 1])
    cfg = Qwen3VLConfig(text_config=text, vision_config=vision, image_token_id=IMAGE,
                        video_token_id=503, vision_start_token_id=VSTART, vision_end_token_id=VEND,
                        tie_word_embeddings=False)
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    model = Qwen3VLForConditionalGeneration(cfg).eval()
    # Random init gives near-uniform logits; sharpen them so greedy ties are unlikely.
    with torch.no_grad():
        model.lm_head.weight.mul_(50)
    return model


def image(seed: int, h: int = 4, w: int = 6) -> EngineImage:
    """An image of h x w merged tokens (grid 2h x 2w patches)."""
    g = torch.Generator().manual_seed(seed)
    grid = (1, h * MERGE, w * MERGE)
    return EngineImage(torch.randn(grid[1] * grid[2], 3 * 2 * PATCH * PATCH, generator=g), grid)


def text(seed: int, n: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 400, (n,), generator=g).tolist()


def with_image(im: EngineImage) -> list[int]:
    t, h, w = im.grid_thw
    return [VSTART] + [IMAGE] * (t * h * w // MERGE ** 2) + [VEND]


def hf_logits(model, ids, images):
    """transformers' own forward over the whole sequence (no cache)."""
    kw = {}
    if images:
        kw = dict(pixel_values=torch.cat([im.pixel_values for im in images]),
                  image_grid_thw=torch.tensor([im.grid_thw for im in images]),
                  mm_token_type_ids=(torch.tensor([ids]) == IMAGE).int())
    with torch.inference_mode():
        return model(input_ids=torch.tensor([ids]), **kw).logits[0].float()


def test_positions_match_transformers():
    model = small_model()
    ims = [image(1), image(2, 3, 5)]
    ids = text(0, 5) + with_image(ims[0]) + text(1, 7) + with_image(ims[1]) + text(2, 3)
    mine, nxt = mrope_positions(ids, IMAGE, [im.grid_thw for im in ims], MERGE)
    theirs, delta = model.model.get_rope_index(torch.tensor([ids]), (torch.tensor([ids]) == IMAGE).int(),
                                               image_grid_thw=torch.tensor([im.grid_thw for im in ims]))
    assert torch.equal(mine, theirs[:, 0])
    assert nxt == len(ids) + int(delta)
    assert image_spans(ids, IMAGE) == [(6, 30), (39, 54)]


@pytest.mark.slow
@pytest.mark.parametrize("attention", ["sdpa", "bmm"])
def test_greedy_tokens_equal_transformers_forward(attention):
    model = small_model()
    ims = [image(1), image(2)]
    ids = text(0, 9) + with_image(ims[0]) + text(1, 4) + with_image(ims[1]) + text(2, 6)
    ref_first = hf_logits(model, ids, ims)[-1]
    eng = Engine(model, max_context=512, attention=attention)
    gen = eng.generate(ids, ims, max_new_tokens=12)
    assert len(gen.tokens) == 12
    assert gen.tokens[0] == int(ref_first.argmax())
    # Teacher-forced: transformers' argmax after each generated token is the engine's next token.
    full = hf_logits(model, ids + gen.tokens, ims)
    expect = full[len(ids) - 1:-1].argmax(-1).tolist()
    assert gen.tokens == expect


def test_prefill_logits_close_to_transformers():
    model = small_model()
    ims = [image(3)]
    ids = text(4, 5) + with_image(ims[0]) + text(5, 5)
    eng = Engine(model, max_context=256)
    with torch.inference_mode():
        eng.generate(ids, ims, max_new_tokens=1)
    ref = hf_logits(model, ids, ims)[-1]
    # Recompute the engine's last logits through its own path, from a cold cache.
    eng.reset()
    h = None
    with torch.inference_mode():
        pos3, _ = mrope_positions(ids, IMAGE, [ims[0].grid_thw], MERGE)
        feats, _ = eng.encode(ims[0])
        x = eng.lm.embed_tokens(torch.tensor([ids])).clone()
        mask = torch.tensor([ids]) == IMAGE
        x[mask] = feats[0]
        cos, sin = eng._rope(x, pos3)
        s, e = image_spans(ids, IMAGE)[0]
        h = eng._layers(x, cos, sin, 0, [(s, e)], feats[1])
        mine = eng._logits(h)[0]
    assert torch.allclose(mine, ref, atol=1e-4, rtol=1e-4)


def episode(eng: Engine, steps: int, history: int, reuse: bool) -> list[list[int]]:
    """A rolling-history conversation: each step adds a screenshot and the previous reply; older
    screenshots beyond `history` are dropped (the prompt's prefix changes there)."""
    system = text(100, 20)
    turns, replies = [], []
    for step in range(steps):
        turns.append((image(10 + step), text(200 + step, 3)))
        ids, ims = list(system), []
        for i, (im, t) in enumerate(turns):
            if i >= len(turns) - history:
                ids += with_image(im)
                ims.append(im)
            ids += t
            if i < len(replies):
                ids += replies[i]
        if not reuse:
            eng.reset()
        replies.append(eng.generate(ids, ims, max_new_tokens=8).tokens)
    return replies


def test_prefix_reuse_equals_full_prefill():
    model = small_model()
    reused_engine = Engine(model, max_context=1024)
    reused = episode(reused_engine, steps=5, history=2, reuse=True)
    fresh = episode(Engine(model, max_context=1024), steps=5, history=2, reuse=False)
    assert reused == fresh
    assert len({t for r in reused for t in r}) > 5  # replies depend on the prompt


def test_reuse_prefills_only_the_new_part():
    model = small_model()
    eng = Engine(model, max_context=1024)
    a, b = image(1), image(2)
    p1 = text(0, 10) + with_image(a) + text(1, 4)
    g1 = eng.generate(p1, [a], max_new_tokens=5)
    assert g1.timings.reused_tokens == 0 and g1.timings.images_encoded == 1
    p2 = p1 + g1.tokens + text(2, 3) + with_image(b) + text(3, 2)
    g2 = eng.generate(p2, [a, b], max_new_tokens=5)
    assert g2.timings.reused_tokens == len(p1) + len(g1.tokens) - 1  # the last reply token was never fed
    assert g2.timings.images_encoded == 1  # only the new screenshot
    # A changed image at the same place cuts the prefix at its first placeholder.
    c = image(3)
    p3 = text(0, 10) + with_image(c) + text(1, 4)
    g3 = eng.generate(p3, [c], max_new_tokens=2)
    assert g3.timings.reused_tokens == 11


def test_work_done_ahead_changes_no_reply():
    """prefill() of the next prompt's history and encode_ahead() of its screenshot (what the loop
    does while the desktop acts) give the same replies as a cold engine, and the call that follows
    only runs what was not prepared; a wrong guess is recomputed, not trusted."""
    model = small_model()
    ahead, cold = Engine(model, max_context=1024), Engine(model, max_context=1024)
    a, b = image(1), image(2)
    p1 = text(0, 10) + with_image(a) + text(1, 4)
    g1 = ahead.generate(p1, [a], max_new_tokens=5)
    history = p1 + g1.tokens + text(2, 3)
    p2 = history + with_image(b) + text(3, 2)
    done = ahead.prefill(history + [VSTART], [a])
    assert done.reused_tokens == len(p1) + len(g1.tokens) - 1 and ahead.last_timings is g1.timings
    assert ahead.prefill(history + [VSTART], [a]) is None  # held already: nothing runs
    assert ahead.encode_ahead(b) is True and ahead.encode_ahead(b) is False
    g2 = ahead.generate(p2, [a, b], max_new_tokens=5)
    assert g2.timings.images_encoded == 0 and g2.timings.reused_tokens == len(history) + 1
    cold.reset()
    assert g2.tokens == cold.generate(p2, [a, b], max_new_tokens=5).tokens
    # A guess that was wrong (another history before the same screenshot) is recomputed.
    wrong = text(0, 10) + with_image(a) + text(9, 6) + [VSTART]
    ahead.prefill(wrong, [a])
    g3 = ahead.generate(p2, [a, b], max_new_tokens=5)
    assert g3.tokens == g2.tokens and g3.timings.reused_tokens == 10 + len(with_image(a))


@pytest.mark.slow
def test_grammar_constrains_every_token():
    xgr = pytest.importorskip("xgrammar")
    from agent.backends.tiny import tiny_checkpoint
    from transformers import AutoTokenizer

    folder = tiny_checkpoint()
    tok = AutoTokenizer.from_pretrained(folder)
    model = Qwen3VLForConditionalGeneration.from_pretrained(folder).eval()
    info = xgr.TokenizerInfo.from_huggingface(tok, vocab_size=model.config.text_config.vocab_size)
    schema = '{"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"], "additionalProperties": false}'
    compiled = xgr.GrammarCompiler(info).compile_json_schema(schema, any_whitespace=False)
    eng = Engine(model, max_context=512)
    ids = tok("<|im_start|>user\nreply<|im_end|>\n<|im_start|>assistant\n")["input_ids"]
    gen = eng.generate(ids, [], max_new_tokens=40, matcher=xgr.GrammarMatcher(compiled),
                       stop_ids={tok.convert_tokens_to_ids("<|im_end|>")})
    out = tok.decode(gen.tokens, skip_special_tokens=True)
    assert out.startswith('{"x":')


def test_context_overflow_is_a_clear_error():
    from agent.errors import VlagentError

    eng = Engine(small_model(), max_context=64)
    with pytest.raises(VlagentError, match="exceeds the engine's context"):
        eng.generate(text(0, 60), [], max_new_tokens=10)


@pytest.mark.slow
def test_jump_forward_gives_the_same_reply():
    """Tokens the grammar forces are fed in batches; the reply equals token-by-token decoding."""
    xgr = pytest.importorskip("xgrammar")
    from agent.backends.tiny import tiny_checkpoint
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    from engine_bench import GRAMMAR_EBNF
    from transformers import AutoTokenizer

    folder = tiny_checkpoint()
    tok = AutoTokenizer.from_pretrained(folder)
    model = Qwen3VLForConditionalGeneration.from_pretrained(folder).eval()
    info = xgr.TokenizerInfo.from_huggingface(tok, vocab_size=model.config.text_config.vocab_size)
    compiled = xgr.GrammarCompiler(info).compile_grammar(GRAMMAR_EBNF)
    ids = tok("<|im_start|>user\nclick<|im_end|>\n<|im_start|>assistant\n")["input_ids"]
    replies = []
    for jump in (True, False):
        eng = Engine(model, max_context=512)
        eng.jump_forward = jump
        gen = eng.generate(ids, [], max_new_tokens=60, matcher=xgr.GrammarMatcher(compiled),
                           stop_ids={tok.convert_tokens_to_ids("<|im_end|>")})
        replies.append(gen.tokens)
        if jump:  # the forced opening went in with the prompt
            assert gen.timings.prompt_tokens == len(ids)
    assert replies[0] == replies[1]
    assert tok.decode(replies[0]).startswith('<tool_call>\n{"name": "computer_use", "arguments": {"action": ')


@pytest.mark.slow
def test_transformers_backend_with_the_engine_replies_like_generate():
    """The backend's engine path (used on CUDA) gives the same constrained replies as
    transformers' generate on the tiny checkpoint, and reuses the prefix across steps. (With forced
    strings taken in their own tokenization, the default, the token split may differ from what
    generate's per-token choices make: that part is checked apart, below.)"""
    from PIL import Image, ImageDraw
    from actions.policy import Allow, Policy
    from agent.backends.tiny import tiny_checkpoint
    from agent.backends.transformers import TransformersBackend
    from agent.run.history import build_messages
    from agent.trace import Step

    def shot(seed):
        img = Image.new("RGB", (320, 200), "#d9d9d9")
        ImageDraw.Draw(img).rectangle((10 + 20 * seed, 30, 120 + 20 * seed, 60), fill="white", outline="black")
        return img

    policy = Policy(Allow(actions=["left_click", "type", "key"], keys=["enter"], max_text_len=20))
    with_engine = TransformersBackend(tiny_checkpoint(), engine=True)
    plain = TransformersBackend(tiny_checkpoint(), engine=False)
    forced_strings, with_engine.engine.tokenize = with_engine.engine.tokenize, None
    made = []  # screenshots preprocessed for the engine: each once, when it is new
    real = with_engine._device_pixels
    with_engine._device_pixels = lambda im: made.append(im) or real(im)
    shots, steps = [shot(i) for i in range(3)], []
    for n in range(3):
        msgs = build_messages("Click the box.", steps, shots[n], policy, load_image=lambda s: shots[s.step - 1])
        reply = with_engine.generate(msgs, policy)
        assert reply == plain.generate(msgs, policy)
        assert reply.startswith("<tool_call>\n")
        steps.append(Step(step=n + 1, raw=reply, action=None))
        if n:  # later steps prefill only what is new
            assert with_engine.engine.last_timings.reused_tokens > 0
        assert made == shots[:n + 1]
    # Forced strings jump forward in their own tokenization: valid replies in fewer decode passes.
    from actions import check_reply
    with_engine.engine.tokenize = forced_strings
    msgs = build_messages("Click the box.", [], shots[0], policy, load_image=None)
    check_reply(with_engine.generate(msgs, policy), policy)
    t = with_engine.engine.last_timings
    assert t.decode_steps < t.new_tokens // 2


# ---- safe on failure and cancellation (issue 9): the tiny checkpoint on the CPU

def _tiny_engine():
    from agent.backends.tiny import tiny_checkpoint

    model = Qwen3VLForConditionalGeneration.from_pretrained(tiny_checkpoint()).eval()
    return model, Engine(model, max_context=1024)


def _fail_after(eng: Engine, calls: int):
    """Make the engine's prefill raise (like an out-of-memory) after `calls` layer passes wrote KV."""
    real, seen = eng._post_n, []

    def post(*args):
        seen.append(1)
        if len(seen) > calls:
            raise RuntimeError("CUDA out of memory (injected)")
        return real(*args)
    eng._post_n = post
    return lambda: setattr(eng, "_post_n", real)


def _tiny_prompt(seed: int, n: int, vocab: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab - 100, (n,), generator=g).tolist()


def test_a_failure_mid_prefill_leaves_no_stale_prefix():
    """A call that fails after overwriting cache slots of the cached prefix: the next call that
    shares that prefix must recompute it, so its reply equals a fresh engine's."""
    model, eng = _tiny_engine()
    vocab = model.config.text_config.vocab_size
    head, tail_a, tail_b = _tiny_prompt(1, 40, vocab), _tiny_prompt(2, 60, vocab), _tiny_prompt(3, 60, vocab)
    eng.generate(head + tail_a, [], max_new_tokens=4)
    restore = _fail_after(eng, 1)  # layer 0 writes tail_b's KV over tail_a's slots, then the call fails
    with pytest.raises(RuntimeError, match="injected"):
        eng.generate(head + tail_b, [], max_new_tokens=4)
    restore()
    again = eng.generate(head + tail_a, [], max_new_tokens=12)
    clean = Engine(model, max_context=1024)
    fresh = clean.generate(head + tail_a, [], max_new_tokens=12)
    assert again.timings.reused_tokens == len(head)  # only what the failed call left untouched
    assert again.tokens == fresh.tokens
    # The reply was computed on the same keys and values as a fresh engine's (with a stale prefix,
    # slots 40..99 would hold tail_b's): the tiny model's replies alone are too insensitive to show it.
    n = len(head + tail_a) + len(fresh.tokens) - 1
    assert torch.allclose(eng.k_cache[:, :, :n], clean.k_cache[:, :, :n], atol=1e-5)
    assert torch.allclose(eng.v_cache[:, :, :n], clean.v_cache[:, :, :n], atol=1e-5)


@pytest.mark.slow
def test_one_call_at_a_time_and_an_abandoned_call_cannot_corrupt_the_next():
    """The loop runs each model call in a thread with a deadline. A call it abandons keeps running;
    the next call waits for it (or cancels it) and replies exactly like a fresh engine."""
    import threading
    from agent.backends.engine import Cancelled

    model, eng = _tiny_engine()
    vocab = model.config.text_config.vocab_size
    first, second = _tiny_prompt(4, 80, vocab), _tiny_prompt(5, 80, vocab)
    inside, release = threading.Event(), threading.Event()
    real = eng._post_n

    def slow(*args):  # the first call stalls mid-prefill until released
        inside.set()
        release.wait(30)
        return real(*args)
    eng._post_n = slow
    box = {}
    abandoned = threading.Thread(target=lambda: box.update(a=eng.generate(first, [], max_new_tokens=8)))
    abandoned.start()
    assert inside.wait(30)
    eng._post_n = real  # later passes run normally
    nxt = threading.Thread(target=lambda: box.update(b=eng.generate(second, [], max_new_tokens=8)))
    nxt.start()
    nxt.join(0.5)
    assert nxt.is_alive()  # waits: the engine serves one call at a time
    release.set()
    abandoned.join(30)
    nxt.join(30)
    fresh = Engine(model, max_context=1024)
    assert box["a"].tokens == fresh.generate(first, [], max_new_tokens=8).tokens
    assert box["b"].tokens == Engine(model, max_context=1024).generate(second, [], max_new_tokens=8).tokens

    # cancel(): the abandoned call stops at its next pass; the next call replies like a fresh engine.
    inside.clear(); release.clear()
    eng._post_n = slow
    errors = []

    def run_first():
        try:
            eng.generate(first + second, [], max_new_tokens=8)
        except Cancelled as e:
            errors.append(e)
    abandoned = threading.Thread(target=run_first)
    abandoned.start()
    assert inside.wait(30)
    eng._post_n = real
    eng.cancel()
    release.set()
    abandoned.join(30)
    assert errors and not abandoned.is_alive()
    after = eng.generate(first, [], max_new_tokens=8)
    assert after.tokens == box["a"].tokens


def test_warm_up_leaves_no_trace():
    """warm_up (run at load on CUDA) runs a dummy prompt; the next reply equals a fresh engine's."""
    model = small_model()
    eng = Engine(model, max_context=2048)
    eng.warm_up()
    assert eng.state.ids == [] and "warm-up" not in eng.vision
    a = image(7)
    ids = text(0, 10) + with_image(a) + text(1, 4)
    assert eng.generate(ids, [a], max_new_tokens=6).tokens == Engine(model, max_context=2048).generate(ids, [a], max_new_tokens=6).tokens


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "1", "I;16"])
def test_image_key_tells_contents_apart(mode):
    """The screenshot content key (hashed in place through Pillow's Arrow export where it can):
    the same pixels in another image object give the same key, one changed pixel another."""
    from PIL import Image

    from agent.backends.engine_ops import image_key
    im = Image.effect_noise((1920, 1080), 50).convert(mode)
    assert image_key(im.copy()) == image_key(im)
    for xy in [(0, 0), (777, 555), (1919, 1079)]:
        changed = im.copy()
        v = im.getpixel(xy)
        changed.putpixel(xy, tuple(255 - c for c in v) if isinstance(v, tuple) else (1 - v if mode == "1" else 255 - v))
        assert image_key(changed) != image_key(im), xy
    assert image_key(im.resize((1080, 1920))) != image_key(im)


class EagerGraph:
    """A stand-in decode graph for the CPU (which has no CUDA graphs): replaying runs the step."""

    def __init__(self, eng: Engine, span: int, n: int):
        self.eng, self.span, self.n = eng, span, n

    def replay(self):
        self.eng._decode_step(self.span, self.n)


class RecordingEngine(Engine):
    """The engine with its graph bookkeeping on (graphs=True) and captures recorded, not made."""

    captured: list

    def _capture(self, span: int, n: int = 1):
        self.captured = getattr(self, "captured", [])
        self.captured.append((span, n))
        self._graphs[(span, n)] = g = EagerGraph(self, span, n)
        return g


def test_decode_graphs_left_for_later_are_captured_between_steps():
    """warm_up captures the buckets up to load_tokens (both widths) and leaves the rest pending; a call
    captures the one it needs; capture_pending takes the rest from the current context up, and the
    replies stay those of an engine without graphs."""
    import threading

    from agent.backends.engine import FEED_WIDTH, KV_BUCKET

    model = small_model()
    eng = RecordingEngine(model, max_context=4 * KV_BUCKET, graphs=True)
    eng.warm_up(load_tokens=KV_BUCKET)
    assert eng.captured == [(KV_BUCKET, 1), (KV_BUCKET, FEED_WIDTH)]
    plain = Engine(model, max_context=4 * KV_BUCKET)
    a = image(7)
    ids = text(0, KV_BUCKET + 100) + with_image(a) + text(1, 4)  # decodes in the second bucket
    assert eng.generate(ids, [a], max_new_tokens=6).tokens == plain.generate(ids, [a], max_new_tokens=6).tokens
    assert eng.captured[2:] == [(2 * KV_BUCKET, 1)]  # the call's own, on demand
    held = threading.Event()
    with eng._lock:  # a call in progress: no pause to fill
        t = threading.Thread(target=lambda: held.set() if eng.capture_pending(10.0) == 0 else None)
        t.start()
        t.join()
    assert held.is_set()
    assert eng.capture_pending(0.0) == 0
    assert eng.capture_pending(10.0) == 5
    assert eng.captured[3:] == [(2 * KV_BUCKET, FEED_WIDTH), (3 * KV_BUCKET, 1), (3 * KV_BUCKET, FEED_WIDTH),
                                (4 * KV_BUCKET, 1), (4 * KV_BUCKET, FEED_WIDTH)]
    assert eng.capture_pending(10.0) == 0
    b = image(8)
    more = ids + text(2, 900) + with_image(b) + text(3, 4)  # the prefix reused across the captures
    assert eng.generate(more, [a, b], max_new_tokens=6).tokens == plain.generate(more, [a, b], max_new_tokens=6).tokens
