"""A tiny byte-level BPE tokenizer with Qwen's pre-tokenizer, built on the spot.

Qwen's pre-tokenizer glues punctuation to the newlines after it (``.\\n``) and makes a run
of newlines one token (``\\n\\n``): the two behaviours that decide how a think block is
tokenized. Markup (``<|im_start|>``, ``<think>``, …) is added as special tokens.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

QWEN_PRETOKENIZE = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def template_markup(templates: Iterable[str]) -> list[str]:
    """Every ``<|…|>``, ``<…>`` and ``[|…|]`` marker written in the templates' text."""
    found: set[str] = set()
    for text in templates:
        found |= set(re.findall(r"<\|?[A-Za-z_/][A-Za-z0-9_/\-]*\|?>|\[\|[a-z_]+\|\]", text))
    return sorted(found)


def qwen_like_tokenizer(corpus: Iterable[str], markup: Iterable[str], vocab_size: int = 400):
    """``PreTrainedTokenizerFast`` (bos ``<s>``, eos ``</s>``, pad ``<pad>``) trained on ``corpus``."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_PRETOKENIZE), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    backend.train_from_iterator(
        list(corpus) + ["x\n\ny", "\n\n", "done.\n"] * 30,
        trainer=trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=["<s>", "</s>", "<pad>", "<unk>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        ),
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    tokenizer.add_special_tokens({"additional_special_tokens": list(markup)})
    return tokenizer
