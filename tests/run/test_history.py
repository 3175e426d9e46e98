"""The prompt rendered from the step log: image window, text history, chunked eviction, token budget."""
import pytest
from PIL import Image

from actions import Policy
from agent.errors import BackendError
from agent.run.history import HistoryConfig, build_messages, first_image_step, system_prompt
from agent.trace import Step

FRAME = Image.new("RGB", (320, 200), "gray")


def steps(n):
    out = []
    for i in range(1, n + 1):
        raw = f'<tool_call>{{"name": "computer_use", "arguments": {{"action": "wait", "time": {i}}}}}</tool_call>'
        out.append(Step(step=i, raw=raw, action={"action": "wait", "time": i}, screenshot=f"screens/{i:04d}.png"))
    out[1] = Step(step=2, raw="garbage", error="no <tool_call> block", screenshot="screens/0002.png")
    return out


def images(messages):
    return sum(1 for m in messages for p in m["content"] if p["type"] == "image")


def test_window_keeps_the_newest_screenshots_and_evicts_in_chunks():
    cfg = HistoryConfig(max_images=4, evict_chunk=2)
    assert [first_image_step(n, cfg) for n in range(8)] == [0, 0, 0, 0, 2, 2, 4, 4]
    msgs = build_messages("Do it", steps(5), FRAME, Policy(), lambda s: FRAME, cfg)
    assert images(msgs) == 4  # steps 3, 4, 5 and the current screen
    task_text = msgs[1]["content"][0]["text"]
    assert "Do it" in task_text and "Step 1:" in task_text and "Step 2: (no valid action) -> rejected" in task_text
    assert msgs[-1]["role"] == "user" and "step 6" in msgs[-1]["content"][-1]["text"]


def test_prefix_is_stable_between_evictions():
    """Append-only between evictions: step 5's prompt starts with step 4's prompt minus its last turn."""
    cfg = HistoryConfig()
    before = build_messages("g", steps(4), FRAME, Policy(), lambda s: FRAME, cfg)
    after = build_messages("g", steps(5), FRAME, Policy(), lambda s: FRAME, cfg)
    assert after[:len(before) - 1] == before[:-1]


def test_rejected_reply_is_fed_back_with_its_reason():
    msgs = build_messages("g", steps(2), FRAME, Policy(), lambda s: FRAME)
    assert "rejected: no <tool_call> block" in msgs[-1]["content"][-1]["text"]


def test_tools_list_only_the_allowed_actions():
    from actions import Allow

    text = system_prompt(Policy(Allow(actions=["left_click", "terminate"])))
    assert '"enum": ["left_click", "terminate"]' in text and "<tools>" in text


def test_token_budget_gives_up_screenshots_then_text():
    def cost(msgs):  # a stand-in for the backend's exact count: 1000 per image, 50 per history line
        text = " ".join(p["text"] for m in msgs for p in m["content"] if p["type"] == "text")
        return images(msgs) * 1000 + text.count("Step ") * 50

    many = steps(11)
    full = build_messages("g", many, FRAME, Policy(), lambda s: FRAME)
    assert images(full) == 4 and cost(full) == 4400
    small = build_messages("g", many, FRAME, Policy(), lambda s: FRAME, fits=lambda m: cost(m) <= 2600)
    assert images(small) == 2 and cost(small) == 2500
    only_now = build_messages("g", many, FRAME, Policy(), lambda s: FRAME, fits=lambda m: cost(m) <= 1300)
    assert images(only_now) == 1 and "earlier steps omitted" in only_now[1]["content"][0]["text"]
    assert cost(only_now) <= 1300
    with pytest.raises(BackendError, match="does not fit"):
        build_messages("g", many, FRAME, Policy(), lambda s: FRAME, fits=lambda m: False)


def test_pixel_budget_downscales_screenshots():
    big = Image.new("RGB", (1920, 1080))
    msgs = build_messages("g", [], big, Policy(), lambda s: big, HistoryConfig(max_pixels=1280 * 720))
    img = msgs[-1]["content"][0]["image"]
    assert img.width * img.height <= 1280 * 720 and abs(img.width / img.height - 16 / 9) < 0.01


@pytest.mark.slow
def test_backend_budget_count_is_exact_on_the_tiny_qwen3vl():
    """The cheap per-step count (template text + resize arithmetic) equals the processor's real count."""
    from agent.backends import load_backend

    backend = load_backend("tiny-random")
    shots = {i: Image.new("RGB", size, "white") for i, size in enumerate([(1280, 800), (1920, 1080), (1000, 700), (333, 517)], 1)}
    log = steps(3)
    msgs = build_messages("Fill in the form", log, shots[4], Policy(), lambda s: shots[s.step])
    assert backend.prompt_tokens(msgs) == backend.count_tokens(msgs)
    assert backend.fits(msgs, Policy()) and backend.context_budget(Policy()) > backend.prompt_tokens(msgs)


@pytest.mark.slow
def test_backend_encode_with_cached_screenshots_equals_the_processor():
    """encode() preprocesses each screenshot once and reuses it while it stays in the history; its
    tensors must be exactly the processor's own, step after step."""
    import numpy as np
    import torch

    from agent.backends import load_backend

    backend = load_backend("tiny-random")
    rng = np.random.default_rng(0)
    shots = {i: Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
             for i, (w, h) in enumerate([(1280, 800), (1920, 1080), (1000, 700), (333, 517), (640, 480)], 1)}
    for n in (0, 2, 3, 4):  # growing history: later calls hit the cache for older screenshots
        msgs = build_messages("Fill in the form", steps(n) if n else [], shots[n + 1], Policy(), lambda s: shots[s.step])
        ours = backend.encode(msgs)
        ref = backend.processor.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True,
                                                    return_dict=True, return_tensors="pt")
        assert set(ours) == set(ref)
        for key in ref:
            assert torch.equal(ours[key].cpu(), ref[key]), key
