"""The CoT span of already tokenized rows, found from the think tags' token ids.

For rows that a trainer tokenized itself (TRL's ``SFTTrainer`` on conversational rows with
``reasoning_content`` or ``<think>…</think>`` in the assistant content, or on
prompt/completion rows whose completion holds such a block): no ``cot_mask`` column was
recorded, so it is derived from the tokens. Step-independent, so it may run anywhere (a
dataset map, a collator).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from axolotl_maskthought.ops.removal import COT, LAYOUT_DROP, layout_code

LOG = logging.getLogger("axolotl.maskthought")
DEFAULT_THINK_TAGS = ("<think>", "</think>")


def tag_ids(tokenizer, think_tags: Sequence[str] = DEFAULT_THINK_TAGS) -> tuple[int, int]:
    """The single token ids of the opening and closing tag.

    Raises ValueError naming ``think_tags`` when a tag is not one token of ``tokenizer``.
    """
    ids = []
    for tag in think_tags:
        encoded = tokenizer.encode(tag, add_special_tokens=False)
        if len(encoded) != 1:
            raise ValueError(
                f"`think_tags`: {tag!r} is {len(encoded)} tokens of this tokenizer, not one; add it "
                "(`tokenizer.add_tokens`) or name the tags your model uses"
            )
        ids.append(encoded[0])
    return ids[0], ids[1]


def _blank(tokenizer, ids: Sequence[int]) -> bool:
    return not tokenizer.decode(list(ids), clean_up_tokenization_spaces=False).strip()


def think_span_cot_mask(
    input_ids: Sequence[int], tokenizer, think_tags: Sequence[str] = DEFAULT_THINK_TAGS
) -> list[int]:
    """``cot_mask`` codes (see ``ops.removal``) for one tokenized row (or packed rows).

    In each ``open … close`` block, the tokens between the tags are the CoT (code 1),
    except whitespace-only tokens right after the opening tag and right before the closing
    one: they are the layout and stay while any reasoning is left. Once the whole CoT is
    removed the block becomes ``open`` + (leading + trailing whitespace of the reasoning) +
    ``close``, tokenized: for Qwen3-style ``<think>\\nR\\n</think>`` that is
    ``<think>`` ``\\n\\n`` ``</think>``, the template's render of an empty reasoning. A block
    with only whitespace inside is left alone (no CoT). Tokens outside blocks: 0.
    """
    open_id, close_id = tag_ids(tokenizer, think_tags)
    ids = list(input_ids)
    codes = [0] * len(ids)
    position = 0
    while True:
        try:
            start = ids.index(open_id, position)
            end = ids.index(close_id, start + 1)
        except ValueError:
            return codes
        position = end + 1
        inner = list(range(start + 1, end))
        lead = []
        for i in inner:
            if not _blank(tokenizer, [ids[i]]):
                break
            lead.append(i)
        if len(lead) == len(inner):
            continue  # empty block
        trail = []
        for i in reversed(inner[len(lead) :]):
            if not _blank(tokenizer, [ids[i]]):
                break
            trail.insert(0, i)
        for i in inner:
            codes[i] = COT
        text = tokenizer.decode([ids[i] for i in inner], clean_up_tokenization_spaces=False)
        empty = text[: len(text) - len(text.lstrip())] + text[len(text.rstrip()) :]
        substitutes = tokenizer.encode(empty, add_special_tokens=False) if empty else []
        carriers = lead + trail
        if len(substitutes) > len(carriers):
            LOG.warning(
                "a think block's empty layout %r needs %d tokens but only %d whitespace tokens surround "
                "the reasoning: with the whole CoT removed the block keeps %d of them",
                empty,
                len(substitutes),
                len(carriers),
                len(carriers),
            )
        for i in carriers:
            codes[i] = LAYOUT_DROP
        for i, token in zip(carriers, substitutes):
            codes[i] = layout_code(token)


def add_think_spans(dataset, tokenizer, think_tags: Sequence[str] = DEFAULT_THINK_TAGS):
    """``dataset`` (rows with ``input_ids``) with a derived ``cot_mask`` column.

    Raises ValueError naming ``think_tags`` when the tags are not single tokens, or when
    no row of a sized dataset has a non-empty think block.
    """
    tag_ids(tokenizer, think_tags)
    mapped = dataset.map(lambda row: {"cot_mask": think_span_cot_mask(row["input_ids"], tokenizer, think_tags)})
    column = getattr(mapped, "column_names", None)
    if column is not None and hasattr(mapped, "__len__"):
        if not any(code > 0 for row in mapped["cot_mask"] for code in row):
            raise ValueError(
                f"no row holds a `{think_tags[0]}…{think_tags[1]}` block with reasoning after tokenization: "
                "`cot_removal` and `masked_thought.scope: reasoning` need the reasoning in the rows "
                "(`reasoning_content` rendered by the chat template, the tags in the text, or `cot_mask` rows)"
            )
    return mapped
