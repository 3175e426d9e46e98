"""Save the random-weight 2B model as a local checkpoint: bf16 safetensors, the real image-processor
config, Qwen's real vocabulary (agent/backends/qwen_vocab.py: the same token ids as Qwen3-VL, so the
config's image token 151655 is what the tokenizer emits), the chat template and a generation config
that stops at <|im_end|>. `vlagent run/bench --model DIR` then takes the path real weights take.

Usage: python benchmarks/save_random_2b.py DIR [--device cpu] [--small]
--small: the tiny checkpoint's layer sizes with the real vocabulary and ids (CPU profiling of the
product path: real tokenizer, grammar and prompt lengths, small matrices)."""
import argparse
from pathlib import Path

import torch
from transformers import GenerationConfig, Qwen3VLConfig, Qwen3VLForConditionalGeneration

from agent.backends.bench import build_model
from agent.backends.budget import QWEN3_VL_2B_IDS
from agent.backends.qwen_vocab import CONFIG_VOCAB, qwen_tokenizer, token_ids
from agent.backends.tiny import TEXT, VISION, write_processor

ap = argparse.ArgumentParser()
ap.add_argument("folder")
ap.add_argument("--device", default="cuda")
ap.add_argument("--small", action="store_true")
args = ap.parse_args()
ids = token_ids()
if args.small:
    cfg = Qwen3VLConfig(text_config=dict(TEXT, vocab_size=CONFIG_VOCAB), vision_config=dict(VISION),
                        tie_word_embeddings=True, **QWEN3_VL_2B_IDS)
    torch.manual_seed(0)
    model = Qwen3VLForConditionalGeneration(cfg).eval()
else:
    model = build_model(None, False, args.device)[0]
cfg = model.config
assert (cfg.image_token_id, cfg.vision_start_token_id, cfg.vision_end_token_id) == \
    (ids["<|image_pad|>"], ids["<|vision_start|>"], ids["<|vision_end|>"]), "config and tokenizer disagree"
assert cfg.text_config.vocab_size >= len(ids) + min(ids.values())
model.generation_config = GenerationConfig(bos_token_id=ids["<|endoftext|>"], pad_token_id=ids["<|endoftext|>"],
                                           eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]], do_sample=False)
model.save_pretrained(args.folder)
qwen_tokenizer().save_pretrained(args.folder)
write_processor(Path(args.folder))
print("saved", args.folder)
