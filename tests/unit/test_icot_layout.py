"""The ICoT token layout is the official one, token for token, on the real data files.

The reference is the official Stepwise Internalization procedure, written out here
independently of the package: each line ``src||tgt`` becomes ONE string
``' {src} {eos} ' + cot + ' {eos} ' + answer + ' {eos}'`` (cot = text before ``####``,
answer = ``'####' + the rest`` without commas, ``eos`` = the tokenizer's EOS text),
tokenized in one call with the tokenizer's special tokens; labels are -100 up to and
including the first EOS; the CoT is what lies strictly between the first two EOS, and
removing all of it leaves ``question eos eos #### answer eos``.

Tokenizers: GPT-2's real byte-level BPE (tests/gpt2_bpe.py) on every file, and the
package's own byte-level BPE (``tiny.build_tokenizer``, with and without BOS) on a
multiplication and the GSM8K file. The package's side is reached as training and
``eval`` reach it: axolotl's ``prompt_strategies.load`` and ``evaluate.build_prompts``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from axolotl.prompt_strategies import load as load_strategy
from axolotl.utils.dict import DictDefault
from gpt2_bpe import gpt2_tokenizer

from axolotl_maskthought.data.formats import CoTExample, parse_icot_line, tokenize_icot
from axolotl_maskthought.eval.prompts import build_prompts
from axolotl_maskthought.toy.tiny import build_tokenizer

IGNORE = -100
ALL_FILES = [
    f"{task}/{split}.txt"
    for task in ("4_by_4_mult", "5_by_5_mult", "7_by_7_mult", "9_by_9_mult")
    for split in ("valid", "test_bigbench")
] + ["gsm8k/valid.txt", "gsm8k/test.txt"]
BYTELEVEL_FILES = ["4_by_4_mult/valid.txt", "gsm8k/valid.txt"]
CASES = [("gpt2", name) for name in ALL_FILES] + [
    (kind, name) for kind in ("bytelevel", "bytelevel_bos") for name in BYTELEVEL_FILES
]


# ---- the official procedure --------------------------------------------------------------
def official_sequence(tokenizer, line: str) -> tuple[list[int], list[int]]:
    """(input_ids, labels) as the official ICoT-SI data code builds them."""
    src, tgt = line.strip().split("||")
    cot = tgt.strip().split("####", 1)[0].strip()
    answer = ("####" + tgt.strip().split("####", 1)[1]).strip().replace(",", "")
    eos = tokenizer.eos_token
    sentence = f" {src} {eos} " + cot + f" {eos} " + answer + f" {eos}"
    ids = tokenizer([sentence], add_special_tokens=True)["input_ids"][0]
    prompt_end = ids.index(tokenizer.eos_token_id) + 1
    return ids, [IGNORE] * prompt_end + ids[prompt_end:]


def official_separators(tokenizer, ids: list[int]) -> tuple[int, int]:
    first = ids.index(tokenizer.eos_token_id)
    return first, ids.index(tokenizer.eos_token_id, first + 1)


def official_without_cot(tokenizer, ids: list[int]) -> list[int]:
    """The official sequence with every token between the first two EOS removed."""
    first, second = official_separators(tokenizer, ids)
    return ids[: first + 1] + ids[second:]


# ---- tokenizers and data ------------------------------------------------------------------
def _lines(shared_data: Path, name: str) -> list[str]:
    return [line for line in (shared_data / "icot" / name).read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.fixture(scope="module")
def tokenizers(shared_data: Path) -> dict:
    found = {"gpt2": gpt2_tokenizer()}
    for name in BYTELEVEL_FILES:
        lines = _lines(shared_data, name)
        found[("bytelevel", name)] = build_tokenizer(lines, vocab_size=300, add_bos=False)
        found[("bytelevel_bos", name)] = build_tokenizer(lines, vocab_size=300, add_bos=True)
    return found


def _tokenizer(tokenizers: dict, kind: str, name: str):
    return tokenizers["gpt2"] if kind == "gpt2" else tokenizers[(kind, name)]


def test_gpt2_bpe_gives_real_gpt2_ids(tokenizers: dict) -> None:
    """The converted ranks are GPT-2's tokenizer: its published ids for common text."""
    tokenizer = tokenizers["gpt2"]
    assert len(tokenizer) == 50257
    assert tokenizer.eos_token_id == 50256
    assert tokenizer("Hello world")["input_ids"] == [15496, 995]
    assert tokenizer("The the")["input_ids"] == [464, 262]
    assert tokenizer(" 1,000 tokens.")["input_ids"] == [352, 11, 830, 16326, 13]
    assert tokenizer(" ")["input_ids"] == [220]
    assert tokenizer(f" 5 {tokenizer.eos_token}")["input_ids"] == [642, 220, 50256]


# ---- the layout ---------------------------------------------------------------------------
@pytest.mark.parametrize(("kind", "name"), CASES)
def test_layout_matches_the_official_procedure(shared_data: Path, tokenizers: dict, kind: str, name: str) -> None:
    tokenizer = _tokenizer(tokenizers, kind, name)
    strategy = load_strategy("axolotl_maskthought.strategies.icot", tokenizer, DictDefault({}), DictDefault({}))
    lines = _lines(shared_data, name)
    assert len(lines) >= 500
    eos = tokenizer.eos_token_id
    empty_cot = 0
    for number, line in enumerate(lines, start=1):
        where = f"{name} line {number} ({kind})"
        ids, labels = official_sequence(tokenizer, line)
        first, second = official_separators(tokenizer, ids)
        removed = official_without_cot(tokenizer, ids)
        row = strategy.tokenize_prompt({"text": line})
        if parse_icot_line(line).cot:
            assert row["input_ids"] == ids, where
            assert row["labels"] == labels, where
            assert row["cot_mask"] == [0] * (first + 1) + [1] * (second - first - 1) + [0] * (len(ids) - second), where
        else:
            # `q|| #### a`: the layout of a fully removed CoT (no whitespace token between the EOS)
            empty_cot += 1
            assert row["input_ids"] == removed, where
            assert row["labels"] == [IGNORE] * (first + 1) + removed[first + 1 :], where
            assert not any(row["cot_mask"]), where
        assert row["attention_mask"] == [1] * len(row["input_ids"]), where

        # all CoT removed, as CoT removal does it and as an empty-CoT row is written
        kept = [token for token, flag in zip(row["input_ids"], row["cot_mask"]) if not flag]
        assert kept == removed, where
        assert removed[first : first + 2] == [eos, eos], where
        no_cot = parse_icot_line(line)
        assert tokenize_icot(tokenizer, CoTExample(no_cot.question, "", no_cot.answer))["input_ids"] == removed, where
    if name.startswith("gsm8k"):
        assert empty_cot > 0  # the GSM8K files hold `q|| #### a` lines: that branch ran


@pytest.mark.parametrize(("kind", "name"), CASES)
def test_eval_prompts_are_the_trained_prefix(shared_data: Path, tokenizers: dict, kind: str, name: str) -> None:
    """What `eval` prompts is what the model saw in training: up to the first EOS
    (with CoT), and up to the second once all CoT is removed (``--no-cot``)."""
    tokenizer = _tokenizer(tokenizers, kind, name)
    lines = _lines(shared_data, name)
    examples = [parse_icot_line(line) for line in lines]
    with_cot = build_prompts(tokenizer, examples, "icot")
    without_cot = build_prompts(tokenizer, examples, "icot", no_cot=True)
    for number, (line, prompt, prompt_no_cot) in enumerate(zip(lines, with_cot, without_cot), start=1):
        where = f"{name} line {number} ({kind})"
        ids, _ = official_sequence(tokenizer, line)
        first, _ = official_separators(tokenizer, ids)
        assert prompt == ids[: first + 1], where
        assert prompt_no_cot == official_without_cot(tokenizer, ids)[: first + 2], where


def test_first_4x4_line_has_the_official_token_count(shared_data: Path, tokenizers: dict) -> None:
    """The issue's case: the package's byte-level BPE (vocab 300, no BOS) on the first
    line of the 4x4 valid file gave 67 tokens where the official procedure gives 70: the
    space before each EOS is a token of its own, and the CoT span ends with one."""
    name = "4_by_4_mult/valid.txt"
    line = _lines(shared_data, name)[0]
    for kind in ("bytelevel", "gpt2"):
        tokenizer = _tokenizer(tokenizers, kind, name)
        ids, _ = official_sequence(tokenizer, line)
        row = tokenize_icot(tokenizer, parse_icot_line(line))
        assert row["input_ids"] == ids, kind
        eos_positions = [i for i, token in enumerate(ids) if token == tokenizer.eos_token_id]
        assert [tokenizer.decode([ids[i - 1]]) for i in eos_positions] == [" ", " ", " "], kind
        cot = [token for token, flag in zip(ids, row["cot_mask"]) if flag]
        assert tokenizer.decode(cot[-1:]) == " ", kind
    assert len(tokenize_icot(tokenizers[("bytelevel", name)], parse_icot_line(line))["input_ids"]) == 70


def test_eos_text_inside_a_row_is_refused(tokenizers: dict) -> None:
    tokenizer = tokenizers["gpt2"]
    example = CoTExample("1 2 * 3 4", f"3 {tokenizer.eos_token} 6", "3 6")
    with pytest.raises(ValueError, match="expected 3 EOS separators"):
        tokenize_icot(tokenizer, example)
