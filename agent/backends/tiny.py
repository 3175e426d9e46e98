"""`--model tiny-random`: a tiny randomly initialised Qwen3-VL checkpoint, built offline and cached.

It has the real model's shapes where they matter to the code path (special tokens and their ids,
chat template, image preprocessing: 16 px patches, 2x2 merge, so 1280x800 is 1000 image tokens;
interleaved M-RoPE; deepstack; tied embeddings) and is loaded by `from_pretrained` exactly like real
weights. head_dim is 32 because vLLM's CPU attention kernel has no head_dim 16. Its replies are
noise: it exists to exercise the code, never to solve tasks.

The chat template is Qwen3-VL Instruct's own (qwen3vl_chat_template.jinja: 5292 bytes, sha256
3636d0f0...89e4, as shipped with the Qwen3-VL Instruct checkpoints).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from importlib import metadata
from pathlib import Path

from agent.backends.options import cache_dir

# Bump when anything below changes what is built: old caches are then simply not used.
TINY_VERSION = 2
# What the build depends on besides this file: the tokenizer is trained and the weights initialised
# by these libraries, so a checkpoint built by other versions may answer differently (issue 19
# item 8: a cache built by older versions made a test pass on CI and fail on a fresh machine).
BUILD_LIBRARIES = ("torch", "transformers", "tokenizers")
SEED = 1234
BPE_VOCAB = 1024  # byte-level BPE base vocabulary (256 bytes + merges), before the special tokens
VOCAB_MULTIPLE = 64  # the embedding is padded past the tokenizer like Qwen's (151936 > 151669)
CHAT_TEMPLATE = Path(__file__).with_name("qwen3vl_chat_template.jinja")

from agent.backends.qwen_vocab import ADDED_TOKENS  # noqa: E402  (Qwen's, in id order; ids here follow the small BPE)

TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
            num_key_value_heads=1, head_dim=32, hidden_act="silu", rms_norm_eps=1e-6,
            max_position_embeddings=262144, tie_word_embeddings=True,
            # mrope_section sums to head_dim / 2; interleaved like the real model
            rope_parameters={"rope_type": "default", "rope_theta": 5_000_000.0,
                             "mrope_section": [4, 6, 6], "mrope_interleaved": True})
VISION = dict(depth=2, hidden_size=64, intermediate_size=128, num_heads=2, hidden_act="gelu_pytorch_tanh",
              patch_size=16, spatial_merge_size=2, temporal_patch_size=2, in_channels=3,
              out_hidden_size=64, num_position_embeddings=2304, deepstack_visual_indexes=[0, 1])
# The real model's preprocessor_config.json values (the class defaults are Qwen2-VL's patch 14).
IMAGE_PROCESSOR = dict(patch_size=16, merge_size=2, temporal_patch_size=2,
                       image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5],
                       size={"shortest_edge": 65536, "longest_edge": 16777216})
# video_preprocessor_config.json of the real model, written as JSON because its class needs
# torchvision, which CPU installs lack (the backend then loads an image-only processor).
VIDEO_PROCESSOR = dict(
    video_processor_type="Qwen3VLVideoProcessor", processor_class="Qwen3VLProcessor",
    do_convert_rgb=True, do_normalize=True, do_rescale=True, do_resize=True, do_sample_frames=True,
    fps=2, min_frames=4, max_frames=768, image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5],
    merge_size=2, patch_size=16, temporal_patch_size=2, resample=3, rescale_factor=1 / 255,
    return_metadata=False, size={"shortest_edge": 4096, "longest_edge": 25165824})


def cache_root() -> Path:
    return cache_dir()


def fingerprint() -> str:
    """A short hash of everything the build depends on: this module's settings, the tokenizer's
    training text (the prompts, the chat template) and the library versions. It is part of the
    folder name, so a cache never serves a checkpoint that this code and these libraries would not
    build; the same inputs build the same checkpoint (seeded weights, deterministic BPE training)."""
    h = hashlib.sha256()
    h.update(json.dumps([TINY_VERSION, SEED, BPE_VOCAB, VOCAB_MULTIPLE, TEXT, VISION, IMAGE_PROCESSOR,
                         VIDEO_PROCESSOR, ADDED_TOKENS], sort_keys=True).encode())
    for text in _corpus():
        h.update(text.encode())
    for lib in BUILD_LIBRARIES:
        try:
            h.update(f"{lib}={metadata.version(lib)}".encode())
        except metadata.PackageNotFoundError:
            h.update(f"{lib}=none".encode())
    return h.hexdigest()[:12]


def tiny_name() -> str:
    return f"tiny-qwen3-vl-v{TINY_VERSION}-{fingerprint()}"


def tiny_checkpoint(folder: str | Path | None = None, family: str | None = None) -> Path:
    """The folder of the tiny checkpoint, built on first use. Safe with parallel processes: each
    builds into its own temp folder and renames it into place; the first rename wins.
    `family` (a format name of agent/backends/families.py): the same weights saved as that model
    family's checkpoint (its hub id as `_name_or_path`, its name in the folder), as a user's copy of
    MAI-UI-2B or UI-Venus-1.5-2B would be recognised."""
    root = Path(folder) if folder else cache_root()
    base = _built(root, tiny_name(), build)
    if family is None or family == "qwen3-vl":
        return base
    from agent.backends.families import family as lookup

    fam = lookup(family)
    return _built(root, f"{base.name}-{fam.name}", lambda tmp: _as_family(base, tmp, fam))


def _as_family(base: Path, tmp: Path, fam) -> None:
    for item in base.iterdir():
        shutil.copy2(item, tmp / item.name)
    config = json.loads((tmp / "config.json").read_text(encoding="utf-8"))
    config["_name_or_path"] = fam.hub_ids[0]
    (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def _built(root: Path, name: str, make) -> Path:
    final = root / name
    if (final / "config.json").exists():
        return final
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
    try:
        make(tmp)
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / "config.json").exists():  # not a lost race: a real failure
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def _corpus() -> list[str]:
    """Text the tokenizer's merges are learned from: native replies, key names, prompt words (an
    edit to a prompt changes the fingerprint, so a new checkpoint is built)."""
    from actions.keys import NAMED_KEYS

    prompts = Path(__file__).resolve().parents[2] / "prompts"
    texts = [p.read_text(encoding="utf-8") for p in sorted(prompts.glob("*")) if p.is_file()]
    texts.append(CHAT_TEMPLATE.read_text(encoding="utf-8"))
    texts.append(" ".join(sorted(NAMED_KEYS)))
    for i in range(0, 1001, 37):
        args = [{"action": "left_click", "coordinate": [i, 1000 - i]},
                {"action": "key", "keys": ["ctrl", chr(97 + i % 26)]},
                {"action": "type", "text": f"Ada Lovelace {i} ada@example.com"},
                {"action": "scroll", "pixels": -i}, {"action": "wait", "time": i % 60},
                {"action": "terminate", "status": "success" if i % 2 else "failure"}]
        texts += [f'<tool_call>\n{json.dumps({"name": "computer_use", "arguments": a})}\n</tool_call>' for a in args]
    return texts


def _tokenizer():
    """Qwen2's byte-level BPE (same normalizer, pre-tokenizer regex and decoder) over a small vocabulary."""
    from tokenizers import Tokenizer, models, trainers
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import AddedToken, Qwen2Tokenizer

    probe = Qwen2Tokenizer()  # only for its pre-tokenizer and normalizer
    bpe = Tokenizer(models.BPE())
    bpe.normalizer = probe.backend_tokenizer.normalizer
    bpe.pre_tokenizer = probe.backend_tokenizer.pre_tokenizer
    trainer = trainers.BpeTrainer(vocab_size=BPE_VOCAB, initial_alphabet=ByteLevel.alphabet(),
                                  show_progress=False, special_tokens=[])
    bpe.train_from_iterator(_corpus(), trainer=trainer)
    data = json.loads(bpe.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in data["merges"]]
    tok = Qwen2Tokenizer(vocab=data["vocab"], merges=merges, model_max_length=262144)
    tok.add_tokens([AddedToken(t, special=s, normalized=False) for t, s in ADDED_TOKENS if t != "<|endoftext|>"])
    tok.add_special_tokens({"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"})
    return tok


def build(folder: Path) -> None:
    """Write the checkpoint (config, random weights, tokenizer, processor) into `folder`."""
    import torch
    from transformers import GenerationConfig, Qwen3VLConfig, Qwen3VLForConditionalGeneration
    from transformers.utils import logging as hf_logging

    tok = _tokenizer()
    ids = {t: tok.convert_tokens_to_ids(t) for t, _ in ADDED_TOKENS}
    vocab = -(-len(tok) // VOCAB_MULTIPLE) * VOCAB_MULTIPLE
    config = Qwen3VLConfig(
        text_config=dict(TEXT, vocab_size=vocab, bos_token_id=ids["<|endoftext|>"],
                         eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"]),
        vision_config=dict(VISION),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
    )
    torch.manual_seed(SEED)
    model = Qwen3VLForConditionalGeneration(config).eval()
    model.generation_config = GenerationConfig(
        bos_token_id=ids["<|endoftext|>"], pad_token_id=ids["<|endoftext|>"],
        eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]], do_sample=False)
    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a bar for a 3 MB file is noise
    try:
        model.save_pretrained(folder)
    finally:
        if bar:
            hf_logging.enable_progress_bar()
    tok.save_pretrained(folder)
    write_processor(folder)


def write_processor(folder: Path) -> None:
    """The real model's image and video processor configs and chat template (shared with
    benchmarks/save_random_2b.py), so load_processor builds the processor real weights get."""
    from transformers import Qwen2VLImageProcessorPil

    image = Qwen2VLImageProcessorPil(**IMAGE_PROCESSOR).to_dict()
    image.update(image_processor_type="Qwen2VLImageProcessor", processor_class="Qwen3VLProcessor")
    (folder / "preprocessor_config.json").write_text(json.dumps(image, indent=2) + "\n")
    (folder / "video_preprocessor_config.json").write_text(json.dumps(VIDEO_PROCESSOR, indent=2) + "\n")
    shutil.copyfile(CHAT_TEMPLATE, folder / "chat_template.jinja")
