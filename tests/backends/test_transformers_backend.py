"""The transformers backend on the tiny random Qwen3-VL: the real code path, offline, in seconds.

A random model is the worst case for the output format: only the grammar makes its replies valid.
"""
from __future__ import annotations

import random

import pytest
from PIL import Image, ImageDraw

from actions.parse import parse_action
from actions.policy import Allow, Policy, normalize_chord
from agent.backends import load_backend
from agent.backends.script import ScriptBackend
from agent.backends.transformers import TransformersBackend
from agent.errors import VlagentError
from agent.run.history import build_messages

FILL_FORM = Allow(actions=["left_click", "type", "key", "scroll", "wait", "terminate"],
                  keys=["tab", "enter", "ctrl+a", "backspace"], max_text_len=200, deny_text=["(?i)password"])
SMALL = (640, 400)  # 250 image tokens: keeps the CPU prefill short


@pytest.fixture(scope="module")
def backend():
    return load_backend("tiny-random")


def form_screenshot(size=(1280, 800), seed=0) -> Image.Image:
    """Something form-like: a title bar, labelled boxes, a button; placed by `seed`."""
    rng = random.Random(seed)
    img = Image.new("RGB", size, "#d9d9d9")
    d = ImageDraw.Draw(img)
    d.rectangle((0, 0, size[0], 24), fill="#3c6eb4")
    d.text((8, 6), "Registration", fill="white")
    x, y = rng.randrange(20, size[0] // 3), rng.randrange(40, size[1] // 3)
    for label in ("Name", "Email"):
        d.text((x, y), label, fill="black")
        d.rectangle((x + 60, y - 4, x + 260, y + 16), fill="white", outline="black")
        y += 40
    d.rectangle((x + 60, y, x + 140, y + 24), fill="#e0e0e0", outline="black")
    d.text((x + 78, y + 6), "Submit", fill="black")
    return img


def noise(size, seed) -> Image.Image:
    rng = random.Random(seed)
    return Image.frombytes("RGB", size, bytes(rng.getrandbits(8) for _ in range(size[0] * size[1] * 3)))


def messages(image, policy, goal="Fill in the registration form for Ada Lovelace and submit it."):
    return build_messages(goal, [], image, policy, load_image=lambda step: image)


def check(reply: str, policy: Policy):
    assert reply.startswith("<tool_call>\n") and reply.endswith("\n</tool_call>"), reply
    return policy.check(parse_action(reply))


@pytest.mark.slow
@pytest.mark.parametrize("allow,image", [
    (Allow(actions=["left_click"]), lambda: form_screenshot()),
    (Allow(actions=["key"], keys=["ctrl+a", "enter"]), lambda: noise(SMALL, 1)),
    (FILL_FORM, lambda: form_screenshot(SMALL, seed=2)),
    (Allow(actions=["type"], max_text_len=20), lambda: noise(SMALL, 3)),
    (None, lambda: form_screenshot(SMALL, seed=4)),
], ids=["left_click_only", "two_chords", "fill_form", "short_text", "default"])
def test_random_model_replies_are_valid_under_each_policy(backend, allow, image):
    policy = Policy(allow)
    action = check(backend.generate(messages(image(), policy), policy), policy)
    assert action.action in policy.actions
    if action.action == "key":
        assert normalize_chord(action.keys) in {("ctrl", "a"), ("enter",)}
    if action.action == "type":
        assert len(action.text) <= policy.allow.max_text_len


def test_greedy_decoding_is_deterministic(backend):
    policy = Policy(FILL_FORM)
    msgs = messages(form_screenshot(SMALL, seed=5), policy)
    assert backend.generate(msgs, policy) == backend.generate(msgs, policy)


def test_a_multi_step_history_with_past_replies(backend):
    """Steps with earlier screenshots and replies, as the loop sends them."""
    from agent.trace import Step

    policy = Policy(FILL_FORM)
    reply = '<tool_call>\n{"name": "computer_use", "arguments": {"action": "left_click", "coordinate": [100, 200]}}\n</tool_call>'
    steps = [Step(step=i, raw=reply, action={"action": "left_click", "coordinate": [100, 200]}) for i in (1, 2)]
    shot = form_screenshot((320, 200), seed=6)
    msgs = build_messages("Fill in the form.", steps, shot, policy, load_image=lambda s: shot)
    assert sum(p["type"] == "image" for m in msgs for p in m["content"]) == 3
    check(backend.generate(msgs, policy), policy)


def test_count_tokens_is_exact_and_counts_the_screenshot(backend):
    policy = Policy(FILL_FORM)
    with_image = messages(form_screenshot((1280, 800)), policy)
    text_only = [m for m in with_image if not any(p["type"] == "image" for p in m["content"])]
    n = backend.count_tokens(with_image)
    assert n == backend.encode(with_image)["input_ids"].shape[-1]
    # the image turn holds 1000 image tokens + vision start/end + its text and turn markers
    image_turn = with_image[-1]
    text_turn = {"role": "user", "content": [p for p in image_turn["content"] if p["type"] == "text"]}
    assert n - backend.count_tokens(text_only + [text_turn]) == 1002


def test_encode_equals_the_processor_and_renders_once(backend, monkeypatch):
    """One template render per step (fits, then generate), pieces tokenized apart: the ids and
    patches are exactly the processor's own for a history of several screenshots."""
    import torch
    from agent.trace import Step

    policy = Policy(FILL_FORM)
    shots = [form_screenshot((320, 200), seed=i) for i in range(3)]
    steps = [Step(step=i + 1, raw='<tool_call>\n{"name": "computer_use", "arguments": {"action": "key", "keys": ["tab"]}}\n</tool_call>')
             for i in range(2)]
    msgs = build_messages("Fill in the form.", steps, shots[2], policy, load_image=lambda s: shots[s.step - 1])
    ref = backend.processor.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True,
                                                return_dict=True, return_tensors="pt")
    renders = []
    real = backend.processor.apply_chat_template
    monkeypatch.setattr(backend.processor, "apply_chat_template", lambda *a, **k: renders.append(1) or real(*a, **k))
    assert backend.prompt_tokens(msgs) == ref["input_ids"].shape[-1]
    mine = backend.encode(msgs)
    assert len(renders) == 1
    assert torch.equal(mine["input_ids"], ref["input_ids"])
    assert torch.equal(mine["pixel_values"], ref["pixel_values"])
    assert torch.equal(mine["image_grid_thw"], ref["image_grid_thw"])
    ids, images = backend.engine_inputs(msgs)
    assert ids == ref["input_ids"][0].tolist() and [im.grid_thw for im in images] == [tuple(g) for g in ref["image_grid_thw"].tolist()]


def test_budget_follows_the_grammar(backend):
    from agent.backends.grammar import max_reply_bytes

    assert backend.token_budget(Policy(FILL_FORM)) == max_reply_bytes(Policy(FILL_FORM)) + 1
    assert backend.token_budget(Policy(Allow(actions=["left_click"]))) < 200


def test_unconstrained_decoding_returns_text(backend):
    raw = TransformersBackend.__new__(TransformersBackend)
    raw.__dict__.update(backend.__dict__, constrainer=None, max_new_tokens=8)
    policy = Policy(FILL_FORM)
    reply = raw.generate(messages(noise((64, 64), 7), policy), policy)
    assert isinstance(reply, str)
    assert len(raw.tokenizer.encode(reply, add_special_tokens=False)) <= 8 * 2  # bytes may regroup


def test_constrained_false_skips_the_grammar():
    from agent.backends.tiny import tiny_checkpoint

    b = TransformersBackend(tiny_checkpoint(), constrained=False, max_new_tokens=4)
    assert b.constrainer is None and b.token_budget() == 4
    assert isinstance(b.generate(messages(noise((64, 64), 8), Policy()), Policy()), str)


@pytest.mark.parametrize("make_model", [
    lambda tmp: str(tmp / "missing"),
    lambda tmp: str(tmp),  # a folder without a model
    lambda tmp: "Qwen/Qwen3-VL-2B-Instruct-not-cached",
], ids=["missing_folder", "empty_folder", "hub_id_offline"])
def test_a_missing_model_is_one_clear_line(tmp_path, monkeypatch, make_model):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # never reach the network
    model = make_model(tmp_path)
    with pytest.raises(VlagentError) as e:
        TransformersBackend(model)
    msg = str(e.value)
    assert "\n" not in msg and len(msg) < 300
    assert msg.startswith(f"cannot load model {model}: ")


def test_load_backend_choices(tmp_path):
    script = tmp_path / "replies.yaml"
    script.write_text('- "<tool_call>{}</tool_call>"\n')
    assert isinstance(load_backend(f"script:{script}"), ScriptBackend)
    with pytest.raises(VlagentError, match="unknown backend"):
        load_backend("tiny-random", backend="nonsense")


def test_tiny_random_goes_through_the_transformers_backend(backend):
    assert isinstance(backend, TransformersBackend)
    assert backend.name == "transformers:tiny-random"
    assert backend.model.__class__.__name__ == "Qwen3VLForConditionalGeneration"


def test_bench_generate_tiny_1280x800(benchmark, backend):
    """CPU cost of one constrained step with the tiny model (run with --benchmark-only)."""
    policy = Policy(FILL_FORM)
    msgs = messages(form_screenshot((1280, 800)), policy)
    reply = benchmark.pedantic(backend.generate, args=(msgs, policy), rounds=5, warmup_rounds=1)
    check(reply, policy)
