"""The tiny random Qwen3-VL checkpoint: built offline, atomically, loaded by the real from_pretrained."""
from __future__ import annotations

import hashlib
import json
import threading

import pytest
from PIL import Image

from agent.backends import tiny
from agent.backends.tiny import tiny_checkpoint, tiny_name
from agent.backends.transformers import load_processor

QWEN3VL_TEMPLATE_SHA256 = "3636d0f0bd6bef02654cdffdc447b79cb2cef8ab02cc75267345946291a489e4"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A fresh build in a private cache (the other tests use the shared cache)."""
    return tiny_checkpoint(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def processor(built):
    return load_processor(str(built))


def test_build_writes_a_complete_versioned_checkpoint(built):
    assert built.name == tiny_name() and "-v" in built.name
    for name in ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                 "tokenizer_config.json", "preprocessor_config.json", "video_preprocessor_config.json",
                 "chat_template.jinja"):
        assert (built / name).is_file(), name
    leftovers = [p.name for p in built.parent.iterdir() if p.name != tiny_name()]
    assert leftovers == []  # the temp build folder was renamed, not copied


def test_config_has_the_shapes_the_code_path_and_vllm_cpu_need(built):
    cfg = json.loads((built / "config.json").read_text())
    text, vision = cfg["text_config"], cfg["vision_config"]
    assert cfg["model_type"] == "qwen3_vl" and cfg["architectures"] == ["Qwen3VLForConditionalGeneration"]
    assert text["head_dim"] == 32  # vLLM's CPU attention has no head_dim 16
    rope = text["rope_parameters"]
    assert sum(rope["mrope_section"]) == text["head_dim"] // 2 and rope["mrope_interleaved"] is True
    assert vision["patch_size"] == 16 and vision["spatial_merge_size"] == 2 and vision["temporal_patch_size"] == 2
    assert vision["out_hidden_size"] == text["hidden_size"]
    assert all(0 <= i < vision["depth"] for i in vision["deepstack_visual_indexes"])
    assert cfg["tie_word_embeddings"] is True


def test_token_ids_in_config_match_the_tokenizer(built, processor):
    cfg = json.loads((built / "config.json").read_text())
    tok = processor.tokenizer
    ids = {t: tok.convert_tokens_to_ids(t) for t in ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>",
                                                      "<|vision_end|>", "<|im_end|>", "<|endoftext|>")}
    assert cfg["image_token_id"] == ids["<|image_pad|>"]
    assert cfg["video_token_id"] == ids["<|video_pad|>"]
    assert cfg["vision_start_token_id"] == ids["<|vision_start|>"]
    assert cfg["vision_end_token_id"] == ids["<|vision_end|>"]
    assert cfg["text_config"]["eos_token_id"] == ids["<|im_end|>"]
    gen = json.loads((built / "generation_config.json").read_text())
    assert ids["<|im_end|>"] in gen["eos_token_id"]
    assert len(tok) <= cfg["text_config"]["vocab_size"]
    # Qwen's layout: the added tokens follow the BPE vocabulary in Qwen's order
    order = [tok.convert_tokens_to_ids(t) for t, _ in tiny.ADDED_TOKENS]
    assert order == list(range(order[0], order[0] + len(order)))


def test_tokenizer_round_trips_any_text_and_keeps_tool_call_tags(processor):
    tok = processor.tokenizer
    reply = '<tool_call>\n{"name": "computer_use", "arguments": {"action": "type", "text": "Zoë 世界 😀 \\"q\\""}}\n</tool_call>'
    ids = tok.encode(reply, add_special_tokens=False)
    assert tok.decode(ids, skip_special_tokens=True) == reply
    assert ids[0] == tok.convert_tokens_to_ids("<tool_call>")  # one token, like Qwen's
    end = tok.convert_tokens_to_ids("<|im_end|>")
    assert tok.decode(ids + [end], skip_special_tokens=True) == reply  # special tokens dropped, tags kept


def test_chat_template_is_qwen3vl_instruct(built, processor):
    assert hashlib.sha256((built / "chat_template.jinja").read_bytes()).hexdigest() == QWEN3VL_TEMPLATE_SHA256
    messages = [{"role": "system", "content": [{"type": "text", "text": "SYS"}]},
                {"role": "user", "content": [{"type": "image", "image": Image.new("RGB", (64, 64))},
                                             {"type": "text", "text": "GOAL"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text == ("<|im_start|>system\nSYS<|im_end|>\n<|im_start|>user\n"
                    "<|vision_start|><|image_pad|><|vision_end|>GOAL<|im_end|>\n<|im_start|>assistant\n")


# 720 / 32 = 22.5 rounds (to even) to 22 rows in transformers' smart_resize: 40 x 22 = 880
@pytest.mark.parametrize("size,tokens", [((1280, 800), 1000), ((1280, 720), 880), ((1920, 1080), 2040)])
def test_processor_makes_one_token_per_32px_like_the_real_model(processor, size, tokens):
    messages = [{"role": "user", "content": [{"type": "image", "image": Image.new("RGB", size, "white")},
                                             {"type": "text", "text": "x"}]}]
    inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                           return_dict=True, return_tensors="pt")
    ids = inputs["input_ids"][0].tolist()
    tok = processor.tokenizer
    assert ids.count(tok.convert_tokens_to_ids("<|image_pad|>")) == tokens
    assert ids.count(tok.convert_tokens_to_ids("<|vision_start|>")) == 1
    assert ids.count(tok.convert_tokens_to_ids("<|vision_end|>")) == 1
    text_only = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "text", "text": "x"}]}], add_generation_prompt=True,
        tokenize=True, return_dict=True, return_tensors="pt")
    assert len(ids) - text_only["input_ids"].shape[-1] == tokens + 2


def test_loads_through_from_pretrained(built):
    import torch
    from transformers import Qwen3VLForConditionalGeneration

    model = Qwen3VLForConditionalGeneration.from_pretrained(built, dtype=torch.float32)
    assert model.config.text_config.head_dim == 32
    params = sum(p.numel() for p in model.parameters())
    assert params < 2_000_000  # tiny: builds and loads in seconds on a CPU


def test_second_call_reuses_the_cache(built, monkeypatch):
    monkeypatch.setattr(tiny, "build", lambda folder: pytest.fail("rebuilt a cached checkpoint"))
    assert tiny_checkpoint(built.parent) == built


def test_parallel_builders_never_expose_a_half_checkpoint(tmp_path):
    """Two builders race into one cache: both get the same complete folder, no temp folder stays."""
    results, errors = [], []

    def builder():
        try:
            results.append(tiny_checkpoint(tmp_path))
        except Exception as e:  # surfaced by the assert below
            errors.append(e)

    threads = [threading.Thread(target=builder) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert results == [tmp_path / tiny_name()] * 2
    assert [p.name for p in tmp_path.iterdir()] == [tiny_name()]
    assert (tmp_path / tiny_name() / "model.safetensors").is_file()


def test_cache_location_follows_vlagent_cache_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("VLAGENT_CACHE", raising=False)
    monkeypatch.setenv("VLAGENT_CACHE_DIR", str(tmp_path))
    assert tiny.cache_root() == tmp_path
    monkeypatch.delenv("VLAGENT_CACHE_DIR")
    assert tiny.cache_root().parts[-2:] == (".cache", "vlagent")
    monkeypatch.setenv("VLAGENT_CACHE", "read-only")  # the flow cache's mode is not a folder
    assert tiny.cache_root().parts[-2:] == (".cache", "vlagent")
    monkeypatch.setenv("VLAGENT_CACHE", str(tmp_path))  # the old name still names the folder
    assert tiny.cache_root() == tmp_path


def test_the_folder_name_pins_what_the_build_depends_on(monkeypatch):
    """A cache built by other library versions or from other prompts is never reused (issue 19 item 8)."""
    from importlib import metadata

    name = tiny_name()
    assert name.startswith(f"tiny-qwen3-vl-v{tiny.TINY_VERSION}-") and tiny_name() == name
    real = metadata.version
    monkeypatch.setattr(metadata, "version", lambda lib: "0.0" if lib == "tokenizers" else real(lib))
    assert tiny_name() != name
    monkeypatch.setattr(metadata, "version", real)
    monkeypatch.setattr(tiny, "_corpus", lambda: ["other prompts"])
    assert tiny_name() != name
