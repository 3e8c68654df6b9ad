"""No-CoT generation numbers positions the way `cot_removal.keep_position` trained them.

With `keep_position`, training keeps the original position ids of the tokens after a
removed CoT (arXiv 2405.14838, official `keep_position`); once the whole CoT is gone the
model has only ever seen the second separator and the answer `len(cot)` positions on.
Generation used to number the no-CoT prompt 0, 1, 2, ... regardless, so a model with
learned absolute positions was asked for its answer at positions it was never trained at.
"""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from axolotl_maskthought.cli import main
from axolotl_maskthought.data.files import write_lines
from axolotl_maskthought.data.formats import CoTExample, icot_prompt_ids, parse_icot_line, tokenize_gsm8k, tokenize_icot
from axolotl_maskthought.data.generators import generate_multiplication
from axolotl_maskthought.eval.evaluation import evaluate_model
from axolotl_maskthought.eval.prompts import kept_position_shifts
from axolotl_maskthought.ops.removal import remove_cot
from axolotl_maskthought.toy.tiny import build_model, build_tiny, build_tokenizer

LINES = generate_multiplication(3, 3, 6, seed=5)


@pytest.fixture(scope="module")
def gpt2():
    tokenizer = build_tokenizer(LINES, vocab_size=300, add_bos=False)
    return build_model(tokenizer, arch="gpt2", hidden=32, layers=1, heads=2, max_positions=128), tokenizer


def _trained_positions(tokenizer, example: CoTExample) -> tuple[list[int], list[int]]:
    """(input ids, position ids) of the example as training sees it with all CoT removed."""
    row = tokenize_icot(tokenizer, example)
    batch = {key: torch.tensor([row[key]]) for key in ("input_ids", "labels", "attention_mask")}
    removed = remove_cot(batch, torch.tensor([row["cot_mask"]], dtype=torch.bool), scheduled=10_000, keep_position=True)
    assert removed.all_cot_removed
    return removed.batch["input_ids"][0].tolist(), removed.batch["position_ids"][0].tolist()


def _generation_positions(model, tokenizer, examples, keep_position: bool, max_new_tokens: int = 6):
    """Per example: the position id of every token fed to the model (prompt, then generated)."""
    calls = []

    def record(module, args, kwargs):
        calls.append((kwargs["input_ids"].clone(), kwargs["position_ids"].clone(), kwargs["attention_mask"].clone()))

    handle = model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        evaluate_model(
            model,
            tokenizer,
            examples,
            "icot",
            no_cot=True,
            batch_size=len(examples),
            max_new_tokens=max_new_tokens,
            progress=False,
            keep_position=keep_position,
        )
    finally:
        handle.remove()
    prompt_ids, prompt_positions, mask = calls[0]
    rows = []
    for row in range(len(examples)):
        real = mask[row].bool()
        ids = prompt_ids[row][real].tolist() + [int(c[0][row, 0]) for c in calls[1:]]
        positions = prompt_positions[row][real].tolist() + [int(c[1][row, 0]) for c in calls[1:]]
        rows.append((ids, positions))
    return rows


def test_no_cot_generation_uses_the_trained_positions(gpt2):
    model, tokenizer = gpt2
    # two CoT lengths in one left-padded batch: 3x3 and 2x2 problems
    examples = [parse_icot_line(line) for line in LINES[:2] + generate_multiplication(2, 2, 1, seed=6)]
    for example, (ids, positions) in zip(examples, _generation_positions(model, tokenizer, examples, True)):
        trained_ids, trained_positions = _trained_positions(tokenizer, example)
        prompt = icot_prompt_ids(tokenizer, example.question, no_cot=True)
        assert ids[: len(prompt)] == trained_ids[: len(prompt)] == prompt  # `q eos eos`
        cot_tokens = sum(tokenize_icot(tokenizer, example)["cot_mask"])
        assert cot_tokens > 0
        # the prompt's second EOS and every later token: where training put them
        assert positions[: len(prompt)] == trained_positions[: len(prompt)]
        assert positions[len(prompt) - 1] == len(prompt) - 1 + cot_tokens
        # the first separator too, onto the last removed token's place (official keep_position)
        assert positions[len(prompt) - 2] == len(prompt) - 2 + cot_tokens
        assert positions[: len(prompt) - 2] == list(range(len(prompt) - 2))
        assert positions[len(prompt) :] == list(
            range(positions[len(prompt) - 1] + 1, positions[len(prompt) - 1] + 1 + len(ids) - len(prompt))
        )


def test_without_keep_position_positions_stay_consecutive(gpt2):
    model, tokenizer = gpt2
    examples = [parse_icot_line(line) for line in LINES[:2]]
    for ids, positions in _generation_positions(model, tokenizer, examples, False):
        assert positions == list(range(len(ids)))


def test_shifts_follow_the_gsm8k_layout_too():
    """gsm8k no-CoT prompts end in `####`: those tokens, and the prompt's last token, move past the CoT's place."""
    texts = ["Tom has 3 apples and buys 4 more. 3+4=7 #### 7", "Question: {question}\nAnswer: "]
    tokenizer = build_tokenizer(texts, vocab_size=300)
    example = CoTExample("Tom has 3 apples and buys 4 more.", "3+4=7", "7")
    template = "Question: {question}\nAnswer: "
    row = tokenize_gsm8k(tokenizer, example, template)
    [(start, shift)] = kept_position_shifts(tokenizer, [example], "gsm8k", template)
    # from the last prompt token on (the token before the CoT moved onto the last removed one's place)
    assert start == row["cot_mask"].index(1) - 1 and shift == sum(row["cot_mask"]) > 0


def test_eval_cli_applies_keep_position_from_the_config(tmp_path, capsys):
    model_dir = build_tiny(
        tmp_path / "model", LINES, vocab_size=300, arch="gpt2", hidden=32, layers=1, heads=2, max_positions=128
    )
    data = tmp_path / "test.txt"
    write_lines(data, LINES[:3])
    results = {}
    for keep in (True, False):
        config = tmp_path / f"keep_{keep}.yml"
        config.write_text(
            yaml.safe_dump(
                {
                    "base_model": str(model_dir),
                    "output_dir": str(tmp_path / "none"),
                    "datasets": [{"path": str(data), "type": "axolotl_maskthought.strategies.icot"}],
                    "cot_removal": {"keep_position": keep},
                }
            )
        )
        out = tmp_path / f"out_{keep}"
        assert (
            main(
                [
                    "eval",
                    "--config",
                    str(config),
                    "--data",
                    str(data),
                    "--no-cot",
                    "--max-new-tokens",
                    "4",
                    "--output",
                    str(out),
                    "--no-progress",
                ]
            )
            == 0
        )
        results[keep] = json.loads((out / "summary.json").read_text())
    assert results[True]["keep_position"] is True and results[False]["keep_position"] is False
    assert "keep_position" in capsys.readouterr().err
    # the flag does the same without a config; without --no-cot it is refused, not ignored
    out = tmp_path / "out_flag"
    assert (
        main(
            [
                "eval",
                str(model_dir),
                "--data",
                str(data),
                "--no-cot",
                "--keep-position",
                "--max-new-tokens",
                "4",
                "--output",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    assert json.loads((out / "summary.json").read_text())["keep_position"] is True
    assert main(["eval", str(model_dir), "--data", str(data), "--keep-position", "--no-progress"]) == 2
    assert "--keep-position" in capsys.readouterr().err
