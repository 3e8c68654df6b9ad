"""``eval`` and ``score``: greedy generation on a test file, then the papers' scoring.

Prompts come from :mod:`axolotl_maskthought.data.formats`, the code that built the
training sequences, so the model sees at eval exactly the prompt it was trained
on (chat: the ``chat_template`` strategy, see :mod:`axolotl_maskthought.eval.chat`).
Generation is greedy and batched with left padding; each row stops on its
own (gsm8k and ICoT no-CoT: the first EOS; ICoT with CoT: the second EOS, the
one after the answer; chat: the first EOS or end-of-turn token). Scoring rules
live in :mod:`axolotl_maskthought.eval.scoring`.

Python API (used by the quickstart and the in-training accuracy callback):
:func:`evaluate_model`, :func:`load_examples`, :func:`load_model_and_tokenizer`,
:func:`generate_greedy`. torch, transformers, peft and vllm are imported inside
the functions that use them.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from axolotl_maskthought.data.formats import CoTExample
from axolotl_maskthought.eval.generation import generate_greedy
from axolotl_maskthought.eval.prompts import build_prompts, chat_strategy, eos_stop_count, kept_position_shifts
from axolotl_maskthought.eval.scoring import CLOSE_TAG, check_format, has_answer, score_generation, summarize
from axolotl_maskthought.eval.vllm import _is_vllm, generate_vllm

# ---------------------------------------------------------------- transformers backend


# ---------------------------------------------------------------- vLLM backend


# ---------------------------------------------------------------- evaluation


def evaluate_model(
    model,
    tokenizer,
    examples: Sequence[CoTExample],
    fmt: str,
    template: str | None = None,
    no_cot: bool = False,
    batch_size: int = 8,
    max_new_tokens: int = 512,
    progress: bool = True,
    lora_request=None,
    keep_position: bool = False,
) -> dict:
    """Generate greedily for ``examples`` and score the answers.

    ``model``: a transformers causal LM (any mode, any device; restored after) or a
    ``vllm.LLM`` (then ``lora_request`` may name an adapter). ``template``: the
    gsm8k prompt template (default Alpaca), or for ``fmt="chat"`` the
    :class:`~axolotl_maskthought.eval.chat.ChatSettings` (default: the tokenizer's chat
    template); chat ``examples`` are :class:`~axolotl_maskthought.eval.chat.ChatExample`.
    Returns ``accuracy``, ``correct``, ``n``, ``wrong``, ``no_answer`` (generations with no answer to read, counted
    apart from wrong ones), ``seconds``, ``examples_per_second`` (generation only) and
    ``predictions``: per example ``prompt`` (decoded, special tokens shown),
    ``generation`` (decoded without special tokens; chat: with them, less the final stop
    token, so think tags stay readable; what is scored), ``extracted``,
    ``gold``, ``correct`` and ``finished`` (False when max_new_tokens cut it off).
    ``keep_position`` (for a model trained with ``cot_removal.keep_position``, only
    with ``no_cot``): positions after the prompt's CoT place are shifted by the
    example's CoT length, as in training (:func:`kept_position_shifts`); raises
    ``ValueError`` with vLLM, which takes no position ids.
    """
    fmt = check_format(fmt)
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no eos_token; generation could never stop")
    prompts = build_prompts(tokenizer, examples, fmt, template, no_cot)
    stop_after_eos = eos_stop_count(fmt, no_cot)
    shifts = kept_position_shifts(tokenizer, examples, fmt, template) if keep_position and no_cot else None
    stop_ids: int | list[int] = eos
    close_tag = CLOSE_TAG
    if fmt == "chat":
        from axolotl_maskthought.eval.chat import stop_token_ids

        strategy = chat_strategy(tokenizer, template)
        stop_ids, close_tag = stop_token_ids(tokenizer, strategy), strategy.think_tags[1]
    started = time.perf_counter()
    if _is_vllm(model):
        if shifts:
            raise ValueError("keep_position generation needs explicit position ids: use the transformers backend")
        outputs = generate_vllm(model, prompts, stop_ids, stop_after_eos, max_new_tokens, lora_request, progress)
    else:
        outputs = generate_greedy(
            model,
            prompts,
            stop_ids,
            tokenizer.pad_token_id,
            stop_after_eos,
            batch_size,
            max_new_tokens,
            progress,
            shifts,
        )
    seconds = time.perf_counter() - started
    predictions = []
    for example, prompt, (generated_ids, finished) in zip(examples, prompts, outputs):
        if fmt == "chat":
            text_ids = generated_ids[:-1] if finished else generated_ids  # a finished row ends with its stop token
            generation = tokenizer.decode(text_ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        else:
            generation = tokenizer.decode(generated_ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        extracted, correct = score_generation(generation, example.answer, fmt, no_cot, close_tag)
        predictions.append(
            {
                "prompt": tokenizer.decode(prompt, skip_special_tokens=False, clean_up_tokenization_spaces=False),
                "generation": generation,
                "extracted": extracted,
                "gold": example.answer,
                "correct": correct,
                "finished": finished,
            }
        )
    answered = [has_answer(row["extracted"], fmt) for row in predictions]
    summary = summarize([row["correct"] for row in predictions], answered, seconds)
    return {**summary, "predictions": predictions}


# ---------------------------------------------------------------- config and CLI
