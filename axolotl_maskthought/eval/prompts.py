"""Evaluation prompts, built by the same functions that laid out the training rows.

The model sees at evaluation exactly the prompt it was trained on; with ``keep_position`` the
no-CoT prompt's positions are numbered as training numbered them. ``template`` is the gsm8k
prompt template (a string) or, for chat, the :class:`~axolotl_maskthought.eval.chat.ChatSettings`
whose chat template and options the training strategy used.
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
    """Prompt token ids, built by the training layout's own functions (chat: the
    ``chat_template`` strategy's :meth:`turns_prompt`, see :mod:`axolotl_maskthought.eval.chat`)."""
    if check_format(fmt) == "chat":
        from axolotl_maskthought.eval.chat import chat_prompts

        return [ids for ids, _ in chat_prompts(chat_strategy(tokenizer, template), examples, no_cot)]
    if fmt == "icot":
        return [icot_prompt_ids(tokenizer, example.question, no_cot=no_cot) for example in examples]
    if template is None:
        from axolotl_maskthought.config import CoTFormatConfig

        template = CoTFormatConfig().template()
    return [gsm8k_prompt_ids(tokenizer, example.question, template, no_cot=no_cot) for example in examples]


def kept_position_shifts(
    tokenizer, examples: Sequence[CoTExample], fmt: str, template: str | None = None
) -> list[tuple[int, int]]:
    """Per no-CoT prompt: (first prompt index to shift, CoT token count).

    A model trained with ``cot_removal.keep_position`` saw the tokens after a removed
    CoT at their original positions, and the token just before the CoT (the first
    separator) moved onto the last removed token's place (arXiv 2405.14838, official
    ``keep_position``): once all CoT is gone, that token, the second separator and the
    answer sit ``len(cot)`` positions further on than their index. No-CoT generation
    must number them the same way. Both values come from the training layout (``tokenize_icot`` /
    ``tokenize_gsm8k``; chat: the strategy's ``turns_prompt`` positions) of each example's own
    CoT, so they match what training removed. Chat raises ValueError for a template whose
    no-CoT prompt one shift cannot number (:func:`~axolotl_maskthought.eval.chat.kept_position_shift`).
    """
    if check_format(fmt) == "chat":
        from axolotl_maskthought.eval.chat import chat_prompts, kept_position_shift

        prompts = chat_prompts(chat_strategy(tokenizer, template), examples, no_cot=True)
        return [kept_position_shift(positions) for _, positions in prompts]
    if fmt == "gsm8k" and template is None:
        from axolotl_maskthought.config import CoTFormatConfig

        template = CoTFormatConfig().template()
    shifts = []
    for example in examples:
        row = tokenize_icot(tokenizer, example) if fmt == "icot" else tokenize_gsm8k(tokenizer, example, template)
        cot = row["cot_mask"]
        # from the token before the CoT (the first separator for ICoT) on: training moved it onto
        # the last removed token's place (``ops.removal.remove_cot`` with ``keep_position``)
        shifts.append((max(cot.index(1) - 1, 0), sum(cot)) if any(cot) else (0, 0))
    return shifts


def chat_strategy(tokenizer, template=None):
    """The chat strategy for ``tokenizer`` from ``template`` (a ``ChatSettings``; None: the
    tokenizer's own chat template)."""
    from axolotl_maskthought.eval.chat import ChatSettings

    if template is None:
        template = ChatSettings()
    if not isinstance(template, ChatSettings):
        raise ValueError(f"chat prompts need a ChatSettings template, got {type(template).__name__}")
    return template.strategy(tokenizer)


def eos_stop_count(fmt: str, no_cot: bool = False) -> int:
    """Generated EOS tokens after which a row is done: ICoT with CoT generates
    ``cot EOS #### answer EOS``; everything else ends at its first EOS."""
    return 2 if (check_format(fmt) == "icot" and not no_cot) else 1
