"""Example formats and their token layouts, shared by the strategies and `eval`.

No axolotl imports: a tokenizer in, token lists out, so that evaluation prompts
are built by exactly the code that built the training sequences.

Every tokenized example is a dict of equal-length lists: ``input_ids``,
``attention_mask``, ``labels`` (-100 where not trained) and ``cot_mask`` (1 on
the CoT tokens that Masked Thought's ``scope: reasoning`` and CoT removal act on).
"""

from __future__ import annotations

from dataclasses import dataclass

ANSWER_MARK = "####"
IGNORE_INDEX = -100


@dataclass(frozen=True)
class CoTExample:
    """A question, its chain of thought and its final answer (text after ``####``)."""

    question: str
    cot: str
    answer: str


def parse_icot_line(line: str) -> CoTExample:
    """``question||cot #### answer`` (the official ICoT-SI files)."""
    line = line.rstrip("\n")
    if "||" not in line:
        raise ValueError("no `||` between question and solution")
    question, solution = line.split("||", 1)
    if not question.strip():
        raise ValueError("empty question")
    if ANSWER_MARK not in solution:
        raise ValueError(f"no `{ANSWER_MARK}` before the answer")
    cot, answer = solution.split(ANSWER_MARK, 1)
    if not answer.strip():
        raise ValueError(f"empty answer after `{ANSWER_MARK}`")
    return CoTExample(question.strip(), cot.strip(), answer.strip())


def parse_gsm8k_row(row: dict, question_field: str = "question", answer_field: str = "answer") -> CoTExample:
    """A GSM8K-style row: the solution is the CoT, then ``#### answer`` on the last line.

    The CoT keeps its text exactly (calculator notes included), up to ``####``.
    """
    question = row.get(question_field)
    solution = row.get(answer_field)
    if not isinstance(question, str) or not question.strip():
        raise ValueError(f"empty or missing question field `{question_field}`")
    if not isinstance(solution, str) or ANSWER_MARK not in solution:
        raise ValueError(f"field `{answer_field}` has no `{ANSWER_MARK}` answer")
    cot, answer = solution.rsplit(ANSWER_MARK, 1)
    if not answer.strip():
        raise ValueError(f"empty answer after `{ANSWER_MARK}`")
    return CoTExample(question.strip(), cot, answer.strip())


def _ids(tokenizer, text: str, special: bool = False) -> list[int]:
    if not text:
        return []
    return list(tokenizer(text, add_special_tokens=special)["input_ids"])


def _ids_batch(tokenizer, texts: list[str]) -> list[list[int]]:
    """Like ``[_ids(tokenizer, t) for t in texts]`` in one tokenizer call: the
    per-call overhead of ``transformers`` is a large part of tokenizing a row."""
    present = [text for text in texts if text]
    encoded = iter(tokenizer(present, add_special_tokens=False)["input_ids"] if present else [])
    return [list(next(encoded)) if text else [] for text in texts]


def _prompt_ids(tokenizer, text: str) -> list[int]:
    """``text`` with the tokenizer's own special tokens (BOS), minus an auto-appended EOS."""
    ids = _ids(tokenizer, text, special=True)
    if ids and tokenizer.eos_token_id is not None and ids[-1] == tokenizer.eos_token_id:
        ids = ids[:-1]
    return ids


def _example(prompt: list[int], cot: list[int], rest: list[int], train_on_inputs: bool) -> dict:
    input_ids = prompt + cot + rest
    labels = (list(prompt) if train_on_inputs else [IGNORE_INDEX] * len(prompt)) + cot + rest
    return {
        "input_ids": input_ids,
        "attention_mask": [1] * len(input_ids),
        "labels": labels,
        "cot_mask": [0] * len(prompt) + [1] * len(cot) + [0] * len(rest),
    }


# ICoT layout: ' {question} {eos} {cot} {eos} {answer} {eos}', answer = '#### ...'.
def icot_prompt_ids(tokenizer, question: str, no_cot: bool = False) -> list[int]:
    """Everything up to and including the first EOS; ``no_cot`` adds the second EOS."""
    eos = tokenizer.eos_token_id
    ids = _prompt_ids(tokenizer, f" {question}") + [eos]
    return ids + [eos] if no_cot else ids


def tokenize_icot(tokenizer, example: CoTExample, train_on_inputs: bool = False) -> dict:
    """The official layout. Loss from the first CoT token on; the CoT is what lies
    strictly between the two separators, which both stay when it is removed."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no eos_token, which the ICoT layout uses as separator")
    prompt = icot_prompt_ids(tokenizer, example.question)
    # An empty CoT (no-CoT training data, `q|| #### a`) has no tokens: `q eos eos #### a eos`.
    cot = _ids(tokenizer, f" {example.cot}") if example.cot else []
    rest = [eos] + _ids(tokenizer, f" {ANSWER_MARK} {example.answer}") + [eos]
    return _example(prompt, cot, rest, train_on_inputs)


def gsm8k_prompt_ids(tokenizer, question: str, template: str, no_cot: bool = False) -> list[int]:
    """The templated question (with the tokenizer's BOS); ``no_cot`` appends ``####``
    so the model must answer at once."""
    ids = _prompt_ids(tokenizer, template.format(question=question))
    return ids + _ids(tokenizer, ANSWER_MARK) if no_cot else ids


def tokenize_gsm8k(tokenizer, example: CoTExample, template: str, train_on_inputs: bool = False) -> dict:
    """Prompt, then the solution text up to ``####`` (the CoT), then ``#### answer`` and EOS."""
    prompt = gsm8k_prompt_ids(tokenizer, example.question, template)
    cot, rest = _ids_batch(tokenizer, [example.cot, f"{ANSWER_MARK} {example.answer}"])
    rest = rest + [tokenizer.eos_token_id]
    return _example(prompt, cot, rest, train_on_inputs)


def tokenize_cot(tokenizer, prompt: str, cot: str, answer: str, train_on_inputs: bool = False) -> dict:
    """One training row from your own text, with the CoT span recorded for the engine.

    ``prompt`` is tokenized with the tokenizer's special tokens (BOS, no EOS),
    ``cot`` (the reasoning) and ``answer`` (what follows it, e.g. ``"#### 72"``)
    without; EOS is appended. Returns lists of equal length: ``input_ids``,
    ``attention_mask``, ``labels`` (-100 on the prompt unless ``train_on_inputs``)
    and ``cot_mask`` (1 on the CoT tokens, which Stepwise Internalization removes
    and ``masked_thought.scope: reasoning`` masks; 0 elsewhere).
    """
    prompt_ids = _prompt_ids(tokenizer, prompt)
    cot_ids, answer_ids = _ids_batch(tokenizer, [cot, answer])
    if tokenizer.eos_token_id is not None:
        answer_ids = answer_ids + [tokenizer.eos_token_id]
    return _example(prompt_ids, cot_ids, answer_ids, train_on_inputs)
