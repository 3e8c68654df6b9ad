"""Evaluation prompts, built by the same functions that laid out the training rows.

The model sees at evaluation exactly the prompt it was trained on; with ``keep_position`` the
no-CoT prompt's positions are numbered as training numbered them.
"""

from __future__ import annotations

from collections.abc import Sequence

from axolotl_maskthought.data.formats import (
    CoTExample,
    gsm8k_prompt_ids,
    icot_prompt_ids,
    tokenize_gsm8k,
    tokenize_icot,
)
from axolotl_maskthought.eval.scoring import check_format


def build_prompts(
    tokenizer, examples: Sequence[CoTExample], fmt: str, template: str | None = None, no_cot: bool = False
) -> list[list[int]]:
    """Prompt token ids, built by the training layout's own functions."""
    if check_format(fmt) == "icot":
        return [icot_prompt_ids(tokenizer, example.question, no_cot=no_cot) for example in examples]
    if template is None:
        from axolotl_maskthought.config import CoTFormatConfig

        template = CoTFormatConfig().template()
    return [gsm8k_prompt_ids(tokenizer, example.question, template, no_cot=no_cot) for example in examples]


def kept_position_shifts(
    tokenizer, examples: Sequence[CoTExample], fmt: str, template: str | None = None
) -> list[tuple[int, int]]:
    """Per no-CoT prompt: (first prompt index after the CoT's place, CoT token count).

    A model trained with ``cot_removal.keep_position`` saw the tokens after a removed
    CoT at their original positions (arXiv 2405.14838, official ``keep_position``):
    once all CoT is gone, the second separator and the answer sit ``len(cot)``
    positions further on than their index. No-CoT generation must number them the
    same way. Both values come from the training layout (``tokenize_icot`` /
    ``tokenize_gsm8k``) of each example's own CoT, so they match what training removed.
    """
    if check_format(fmt) == "gsm8k" and template is None:
        from axolotl_maskthought.config import CoTFormatConfig

        template = CoTFormatConfig().template()
    shifts = []
    for example in examples:
        row = tokenize_icot(tokenizer, example) if fmt == "icot" else tokenize_gsm8k(tokenizer, example, template)
        cot = row["cot_mask"]
        shifts.append((cot.index(1), sum(cot)) if any(cot) else (0, 0))
    return shifts


def eos_stop_count(fmt: str, no_cot: bool = False) -> int:
    """Generated EOS tokens after which a row is done: ICoT with CoT generates
    ``cot EOS #### answer EOS``; everything else ends at its first EOS."""
    return 2 if (check_format(fmt) == "icot" and not no_cot) else 1
