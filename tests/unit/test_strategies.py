"""The gsm8k and icot dataset strategies produce the token layouts documented in formats.py.

Strategies are loaded through axolotl's own ``prompt_strategies.load`` (the code path
``type: axolotl_maskthought.strategies.<name>`` takes), with tokenizers trained on
the data by ``tiny.build_tokenizer``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from axolotl.prompt_strategies import load as load_strategy
from axolotl.utils.dict import DictDefault

from axolotl_maskthought.config import PROMPT_TEMPLATES
from axolotl_maskthought.data.formats import gsm8k_prompt_ids
from axolotl_maskthought.toy.tiny import build_tokenizer

IGNORE = -100
ICOT_FILES = ["4_by_4_mult/valid.txt", "gsm8k/valid.txt"]


def _icot_lines(shared_data: Path, name: str) -> list[str]:
    return (shared_data / "icot" / name).read_text(encoding="utf-8").splitlines()


def _gsm8k_rows(shared_data: Path, count: int = 100) -> list[dict]:
    with open(shared_data / "gsm8k" / "train.jsonl", encoding="utf-8") as handle:
        return [json.loads(next(handle)) for _ in range(count)]


def _strategy(name: str, tokenizer, cfg: dict | None = None, ds_cfg: dict | None = None):
    strategy = load_strategy(
        f"axolotl_maskthought.strategies.{name}", tokenizer, DictDefault(cfg or {}), DictDefault(ds_cfg or {})
    )
    assert strategy is not None, f"axolotl could not resolve the {name} strategy"
    return strategy


def _spans(example: dict) -> tuple[list[int], list[int], list[int]]:
    """(prompt, cot, rest) token lists, split by labels and cot_mask."""
    ids, labels, cot_mask = example["input_ids"], example["labels"], example["cot_mask"]
    assert len(ids) == len(labels) == len(cot_mask) == len(example["attention_mask"])
    prompt_end = next(i for i, label in enumerate(labels) if label != IGNORE)
    cot_positions = [i for i, flag in enumerate(cot_mask) if flag]
    expected = list(range(prompt_end, prompt_end + len(cot_positions)))
    assert cot_positions == expected, "CoT not contiguous after the prompt"
    cot_end = prompt_end + len(cot_positions)
    return ids[:prompt_end], ids[prompt_end:cot_end], ids[cot_end:]


@pytest.fixture(scope="module")
def icot_tokenizers(shared_data: Path) -> dict:
    """A tokenizer per ICoT file, trained on that file's lines (no BOS, as GPT-2)."""
    return {name: build_tokenizer(_icot_lines(shared_data, name), vocab_size=300, add_bos=False) for name in ICOT_FILES}


# The ICoT layout against the official procedure: tests/test_icot_layout.py.


def test_icot_with_bos_keeps_bos_in_the_prompt(shared_data: Path) -> None:
    lines = _icot_lines(shared_data, "4_by_4_mult/valid.txt")[:50]
    tokenizer = build_tokenizer(lines, vocab_size=300, add_bos=True)
    example = _strategy("icot", tokenizer).tokenize_prompt({"text": lines[0]})
    assert example["input_ids"][0] == tokenizer.bos_token_id
    assert example["labels"][0] == IGNORE
    assert example["input_ids"].count(tokenizer.eos_token_id) == 3


@pytest.fixture(scope="module")
def gsm8k_tokenizer(shared_data: Path):
    rows = _gsm8k_rows(shared_data, 300)
    texts = [row["question"] + "\n" + row["answer"] for row in rows] + list(PROMPT_TEMPLATES.values())
    return build_tokenizer(texts, vocab_size=600, add_bos=True)


@pytest.mark.parametrize("template_name", ["alpaca", "plain"])
def test_gsm8k_layout(shared_data: Path, gsm8k_tokenizer, template_name: str) -> None:
    tokenizer = gsm8k_tokenizer
    template = PROMPT_TEMPLATES[template_name]
    strategy = _strategy("gsm8k", tokenizer, {"cot_format": {"prompt_template": template_name}})
    for number, row in enumerate(_gsm8k_rows(shared_data), start=1):
        where = f"train.jsonl row {number}"
        cot, answer = row["answer"].rsplit("####", 1)
        example = strategy.tokenize_prompt(row)
        prompt, cot_ids, rest = _spans(example)
        ids, labels = example["input_ids"], example["labels"]

        assert prompt == gsm8k_prompt_ids(tokenizer, row["question"].strip(), template), where
        assert prompt[0] == tokenizer.bos_token_id, where
        assert tokenizer.decode(prompt[1:]) == template.format(question=row["question"].strip()), where
        assert labels == [IGNORE] * len(prompt) + cot_ids + rest, where
        # the CoT keeps its text exactly, calculator notes and newlines included
        assert tokenizer.decode(cot_ids) == cot, where
        assert rest[-1] == tokenizer.eos_token_id and tokenizer.eos_token_id not in ids[:-1], where
        assert tokenizer.decode(rest[:-1]) == f"#### {answer.strip()}", where
        # the CoT and the answer are encoded in one batched call: the same ids as one call each
        assert cot_ids == tokenizer(cot, add_special_tokens=False)["input_ids"], where
        assert rest[:-1] == tokenizer(f"#### {answer.strip()}", add_special_tokens=False)["input_ids"], where
        # round trip: prompt + the original solution
        assert tokenizer.decode(ids, skip_special_tokens=True) == (
            template.format(question=row["question"].strip()) + cot + f"#### {answer.strip()}"
        ), where


def test_gsm8k_no_cot_prompt_appends_the_answer_mark(gsm8k_tokenizer) -> None:
    template = PROMPT_TEMPLATES["plain"]
    prompt = gsm8k_prompt_ids(gsm8k_tokenizer, "What is 2+3?", template)
    no_cot = gsm8k_prompt_ids(gsm8k_tokenizer, "What is 2+3?", template, no_cot=True)
    assert no_cot[: len(prompt)] == prompt
    assert gsm8k_tokenizer.decode(no_cot[len(prompt) :]) == "####"


def test_gsm8k_custom_template_fields_and_train_on_inputs(gsm8k_tokenizer) -> None:
    cfg = {
        "train_on_inputs": True,
        "cot_format": {"prompt_template": "Q: {question}\nA:", "question_field": "q", "answer_field": "a"},
    }
    strategy = _strategy("gsm8k", gsm8k_tokenizer, cfg)
    example = strategy.tokenize_prompt({"q": "How many?", "a": " 2 + 3 = 5\n#### 5"})
    text = gsm8k_tokenizer.decode(example["input_ids"], skip_special_tokens=True)
    assert text == "Q: How many?\nA: 2 + 3 = 5\n#### 5"
    assert example["labels"] == example["input_ids"]  # train_on_inputs: the prompt is trained too
    cot = [t for t, flag in zip(example["input_ids"], example["cot_mask"]) if flag]
    assert gsm8k_tokenizer.decode(cot) == " 2 + 3 = 5\n"


@pytest.mark.parametrize(
    "row, message",
    [
        ({"question": "How many?", "answer": "5"}, "has no `####`"),
        ({"question": "  ", "answer": "#### 5"}, "empty or missing question"),
        ({"question": "How many?", "answer": "2+3 #### "}, "empty answer"),
    ],
)
def test_gsm8k_invalid_rows_are_rejected(gsm8k_tokenizer, row: dict, message: str) -> None:
    strategy = _strategy("gsm8k", gsm8k_tokenizer)
    with pytest.raises(ValueError, match=message):
        strategy.tokenize_prompt(row)


def test_icot_invalid_lines_are_rejected(icot_tokenizers: dict) -> None:
    strategy = _strategy("icot", icot_tokenizers["4_by_4_mult/valid.txt"])
    cases = [("1 2 * 3 4 #### 5", "no `\\|\\|`"), ("1 2 * 3 4||5 6", "no `####`"), ("||1 #### 2", "empty question")]
    for line, message in cases:
        with pytest.raises(ValueError, match=message):
            strategy.tokenize_prompt({"text": line})
