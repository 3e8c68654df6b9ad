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


# ICoT layout (arXiv 2405.14838, official code): ONE string
#   ' {question} {eos} {cot} {eos} {answer} {eos}'   answer = '#### ...' without commas
# tokenized in one call with the tokenizer's special tokens. On a byte-level BPE
# (GPT-2) the space before each EOS is then a token of its own, and the one before
# the second EOS belongs to the CoT span.
def icot_text(example: CoTExample, eos_token: str) -> str:
    """The official ICoT-SI training string of ``example``, ``eos_token`` being the
    tokenizer's EOS text. An empty CoT gives the layout of a fully removed one,
    ``' {question} {eos}{eos} {answer} {eos}'`` (no whitespace token between the
    separators), which is what ``--no-cot`` evaluation prompts."""
    answer = f"{ANSWER_MARK} {example.answer}".replace(",", "")
    cot = f" {example.cot} {eos_token}" if example.cot else eos_token
    return f" {example.question} {eos_token}{cot} {answer} {eos_token}"


def _icot_eos(tokenizer) -> tuple[int, str]:
    if tokenizer.eos_token_id is None or not tokenizer.eos_token:
        raise ValueError("the tokenizer has no eos_token, which the ICoT layout uses as separator")
    return tokenizer.eos_token_id, tokenizer.eos_token


def _eos_positions(ids: list[int], eos: int) -> list[int]:
    # Position 0 is never a separator (the text starts with a space): an EOS there is
    # a BOS that is also the EOS token (GPT-2 tokenizers with add_bos_token).
    return [i for i, token in enumerate(ids) if token == eos and i > 0]


def icot_prompt_ids(tokenizer, question: str, no_cot: bool = False) -> list[int]:
    """The training sequence up to and including the first EOS (the official prompt);
    ``no_cot`` adds the second EOS, as in training once the whole CoT is removed.

    Tokenized as the string ``' {question} {eos}'``: the EOS splits the text, so
    these are exactly the first tokens of :func:`tokenize_icot`'s sequence.
    """
    eos, eos_token = _icot_eos(tokenizer)
    ids = list(tokenizer(f" {question} {eos_token}", add_special_tokens=True)["input_ids"])
    positions = _eos_positions(ids, eos)
    if not positions:
        raise ValueError(f"{eos_token!r} did not tokenize to the eos id {eos}")
    prompt = ids[: positions[0] + 1]
    return prompt + [eos] if no_cot else prompt


def tokenize_icot(tokenizer, example: CoTExample, train_on_inputs: bool = False) -> dict:
    """The official layout: :func:`icot_text` tokenized in one call.

    Labels are -100 up to and including the first EOS; the CoT span is every token
    strictly between the first two EOS (both stay when it is removed).

    Raises:
        ValueError: the tokenizer has no EOS, or the text holds the EOS text itself.
    """
    eos, eos_token = _icot_eos(tokenizer)
    ids = list(tokenizer(icot_text(example, eos_token), add_special_tokens=True)["input_ids"])
    positions = _eos_positions(ids, eos)
    appended = len(positions) == 4 and positions[3] == positions[2] + 1 == len(ids) - 1  # a post-processor's EOS
    if len(positions) != 3 and not appended:
        raise ValueError(
            f"expected 3 EOS separators in the ICoT sequence, found {len(positions)}: "
            f"does the question, CoT or answer contain {eos_token!r}?"
        )
    first, second = positions[0], positions[1]
    return _example(ids[: first + 1], ids[first + 1 : second], ids[second:], train_on_inputs)


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
