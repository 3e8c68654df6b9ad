"""Recovery from an error in the chain of thought (Masked Thought's own argument, arXiv 2403.02178).

Masked Thought argues that "even a minor error can cascade into inaccurate results" and that
training with masked CoT inputs makes the model lean on the question and the earlier steps. This
measures it: the model is fed the gold CoT up to a seeded position in its first half, the token
at that position replaced by a wrong one, then continues greedily; the answer is scored as
``eval`` scores it. Prefixes are cut from the training layout itself (``tokenize_icot`` /
``tokenize_gsm8k``): the same tokens and positions the model was trained on.

Which token is wrong (``rule``):

* ``digit`` (default): a CoT token in the first half that holds one digit d becomes the same
  token with d -> (d + 1) mod 10 (``3`` -> ``4``, ``Ġ9`` -> ``Ġ0``), as in the ICoT probe of
  issue 16. The position is drawn among such tokens only; an example whose first half has none
  falls back to the ``token`` rule (its row says which rule was used).
* ``token``: any CoT token in the first half, replaced by a token drawn uniformly from the base
  vocabulary (``tokenizer.vocab_size``, no added tokens), never the gold token nor a special token.

The draw is seeded per example by ``seed`` and the example's question, so a row gets the same
error whatever the order or ``--limit``.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import dataclass

from axolotl_maskthought.data.formats import CoTExample, tokenize_gsm8k, tokenize_icot
from axolotl_maskthought.eval.scoring import check_format, has_answer, score_generation, summarize

RULES = ("digit", "token")


@dataclass(frozen=True)
class InjectedError:
    """One example's corrupted prefix: prompt + gold CoT[:position] + ``wrong_id``."""

    prefix: list[int]
    position: int  # index inside the CoT span (0 = its first token)
    cot_length: int
    gold_id: int
    wrong_id: int
    rule: str  # the rule actually used: "digit", or "token" (asked for, or the digit rule's fallback)


def _digit_swap(tokenizer, token_id: int) -> int | None:
    """The id of ``token_id``'s vocabulary string with its single digit d set to (d + 1) mod 10, or None."""
    text = tokenizer.convert_ids_to_tokens(token_id)
    digits = [index for index, char in enumerate(text or "") if char.isdigit() and char.isascii()]
    if len(digits) != 1:
        return None
    index = digits[0]
    swapped = text[:index] + str((int(text[index]) + 1) % 10) + text[index + 1 :]
    vocab = tokenizer.get_vocab()
    return vocab.get(swapped)


def injection_site(
    tokenizer, cot_ids: Sequence[int], rng: random.Random, rule: str = "digit"
) -> tuple[int, int, str] | None:
    """(position in the CoT, wrong token id, rule used) for one CoT, or None for an empty CoT.

    The position is drawn uniformly from the first half, ``range(ceil(len / 2))``; see the module
    docstring for the rules. Raises ValueError for an unknown rule.
    """
    if rule not in RULES:
        raise ValueError(f"unknown error rule {rule!r}: expected one of {', '.join(RULES)}")
    half = -(-len(cot_ids) // 2)
    if half == 0:
        return None
    if rule == "digit":
        swaps = [(position, _digit_swap(tokenizer, cot_ids[position])) for position in range(half)]
        candidates = [(position, wrong) for position, wrong in swaps if wrong is not None]
        if candidates:
            position, wrong = candidates[rng.randrange(len(candidates))]
            return position, wrong, "digit"
    position = rng.randrange(half)
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    vocab_size = tokenizer.vocab_size
    if vocab_size - len(special & set(range(vocab_size))) < 2:
        raise ValueError("the vocabulary has no token to inject besides the gold one")
    while True:
        wrong = rng.randrange(vocab_size)
        if wrong != cot_ids[position] and wrong not in special:
            return position, wrong, "token"


def error_prefixes(
    tokenizer,
    examples: Sequence[CoTExample],
    fmt: str,
    template: str | None = None,
    seed: int = 0,
    rule: str = "digit",
) -> list[InjectedError | None]:
    """Per example, the corrupted prefix built from its training layout (None: the CoT is empty)."""
    if check_format(fmt) == "gsm8k" and template is None:
        from axolotl_maskthought.config import CoTFormatConfig

        template = CoTFormatConfig().template()
    sites: list[InjectedError | None] = []
    for example in examples:
        row = tokenize_icot(tokenizer, example) if fmt == "icot" else tokenize_gsm8k(tokenizer, example, template)
        span = [index for index, flag in enumerate(row["cot_mask"]) if flag]
        cot_ids = [row["input_ids"][index] for index in span]
        site = injection_site(tokenizer, cot_ids, random.Random(f"{seed}\x00{example.question}"), rule)
        if site is None:
            sites.append(None)
            continue
        position, wrong, used = site
        prefix = list(row["input_ids"][: span[0] + position]) + [wrong]
        sites.append(InjectedError(prefix, position, len(cot_ids), cot_ids[position], wrong, used))
    return sites


def evaluate_error_recovery(
    model,
    tokenizer,
    examples: Sequence[CoTExample],
    fmt: str,
    template: str | None = None,
    seed: int = 0,
    rule: str = "digit",
    batch_size: int = 8,
    max_new_tokens: int = 512,
    progress: bool = True,
) -> dict:
    """Answer accuracy after one injected CoT error (transformers backend, greedy).

    Returns ``accuracy`` (over the examples with an injection site), ``correct``, ``n``,
    ``wrong``, ``no_answer``, ``skipped`` (empty CoTs), ``rules`` (count per rule used), the
    timing keys of :func:`~axolotl_maskthought.eval.scoring.summarize`, and ``predictions``: per
    example ``prefix`` (decoded), ``position``, ``gold_token`` / ``wrong_token``, ``rule``,
    ``generation``, ``extracted``, ``gold``, ``correct``, ``finished``.
    """
    from axolotl_maskthought.eval.generation import generate_greedy
    from axolotl_maskthought.eval.prompts import eos_stop_count

    fmt = check_format(fmt)
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no eos_token; generation could never stop")
    sites = error_prefixes(tokenizer, examples, fmt, template, seed, rule)
    kept = [(example, site) for example, site in zip(examples, sites) if site is not None]
    started = time.perf_counter()
    outputs = generate_greedy(
        model,
        [site.prefix for _, site in kept],
        tokenizer.eos_token_id,
        tokenizer.pad_token_id,
        eos_stop_count(fmt, no_cot=False),  # the prefix stops inside the CoT: the rest is as with CoT
        batch_size,
        max_new_tokens,
        progress,
    )
    seconds = time.perf_counter() - started
    predictions = []
    for (example, site), (generated, finished) in zip(kept, outputs):
        generation = tokenizer.decode(generated, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        extracted, correct = score_generation(generation, example.answer, fmt, no_cot=False)
        predictions.append(
            {
                "prefix": tokenizer.decode(site.prefix, skip_special_tokens=False, clean_up_tokenization_spaces=False),
                "position": site.position,
                "gold_token": tokenizer.convert_ids_to_tokens(site.gold_id),
                "wrong_token": tokenizer.convert_ids_to_tokens(site.wrong_id),
                "rule": site.rule,
                "generation": generation,
                "extracted": extracted,
                "gold": example.answer,
                "correct": correct,
                "finished": finished,
            }
        )
    answered = [has_answer(row["extracted"], fmt) for row in predictions]
    summary = summarize([row["correct"] for row in predictions], answered, seconds)
    rules = {name: sum(1 for row in predictions if row["rule"] == name) for name in RULES}
    return {**summary, "skipped": len(sites) - len(kept), "rules": rules, "predictions": predictions}
