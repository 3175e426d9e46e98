"""Save the random-weight 2B model as a local checkpoint (bf16 safetensors, the real image-processor
config, the tiny tokenizer as a stand-in), so `vlagent bench --model DIR` measures a cold start
with weights on local disk. Usage: python benchmarks/save_random_2b.py DIR"""
import sys

from transformers import AutoTokenizer

from agent.backends.tiny import tiny_checkpoint
from agent.backends.bench import build_model

folder = sys.argv[1]
model, improc, _, _ = build_model(None, False, "cuda")
model.save_pretrained(folder)
improc.save_pretrained(folder)
AutoTokenizer.from_pretrained(tiny_checkpoint()).save_pretrained(folder)
print("saved", folder)
