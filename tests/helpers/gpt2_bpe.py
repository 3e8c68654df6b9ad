"""GPT-2's real byte-level BPE tokenizer, built offline for the tests.

GPT-2's BPE ranks ship in the PyPI package ``openai-whisper``
(``whisper/assets/gpt2.tiktoken``, part of the ``tests`` extra); transformers'
tiktoken converter turns them into a fast tokenizer with GPT-2's own ids
(``<|endoftext|>`` = 50256). The package is located, never imported (importing
whisper would load its audio stack).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

# GPT-2's pre-tokenizer regex (the one its encoder splits text with before BPE).
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
GPT2_EOS = "<|endoftext|>"


def gpt2_ranks() -> Path:
    spec = importlib.util.find_spec("whisper")
    ranks = Path(spec.origin).parent / "assets" / "gpt2.tiktoken" if spec and spec.origin else None
    if ranks is None or not ranks.is_file():
        raise RuntimeError(
            "GPT-2's BPE ranks not found: install the tests extra (`pip install -e '.[tests]'`, "
            "or `pip install --no-deps openai-whisper`)"
        )
    return ranks


def gpt2_tokenizer():
    """A ``PreTrainedTokenizerFast`` equal to GPT-2's (50257 tokens, EOS = BOS = 50256)."""
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    backend = TikTokenConverter(vocab_file=str(gpt2_ranks()), pattern=GPT2_PATTERN).converted()
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=GPT2_EOS, bos_token=GPT2_EOS, unk_token=GPT2_EOS)
