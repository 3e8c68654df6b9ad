"""Recovery from an injected CoT error (issue 16, item 6): `eval --inject-error` and the callback.

Oracle models below are real ``torch.nn.Module`` language models driven by the package's own
greedy generation: one knows every gold solution and continues it whatever the prefix holds (it
recovers from any error), one continues only a prefix it recognises (the cascade).
"""

from __future__ import annotations

import json
import random
from types import SimpleNamespace

import pytest
import torch

from axolotl_maskthought.cli import main
from axolotl_maskthought.data.files import write_lines
from axolotl_maskthought.data.formats import parse_icot_line, tokenize_gsm8k, tokenize_icot
from axolotl_maskthought.data.generators import generate_multiplication
from axolotl_maskthought.eval.error_injection import error_prefixes, evaluate_error_recovery, injection_site
from axolotl_maskthought.eval.evaluation import evaluate_model
from axolotl_maskthought.toy.tiny import build_tokenizer

LINES = list(dict.fromkeys(generate_multiplication(2, 2, 40, seed=3)))[:24]
EXAMPLES = [parse_icot_line(line) for line in LINES]


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer(LINES, vocab_size=200, add_bos=False)


class Oracle(torch.nn.Module):
    """Greedy-decodes the gold layout of ``rows``. ``recovers``: the row is recognised by its prompt
    alone, so the gold continuation follows any corrupted CoT; else a prefix that left the gold path
    gets the last token repeated (never an answer)."""

    def __init__(self, rows: list[dict], vocab_size: int, recovers: bool):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # a device for generate_greedy
        self.rows, self.vocab_size, self.recovers = rows, vocab_size, recovers

    def _next(self, ids: list[int]) -> int:
        for row in self.rows:
            full, prompt = row["input_ids"], row["cot_mask"].index(1)
            if ids[:prompt] != full[:prompt]:
                continue
            if ids == full[: len(ids)] or self.recovers:
                return full[len(ids)] if len(ids) < len(full) else full[-1]
            return ids[-1]
        raise AssertionError("unknown prompt")

    def forward(self, input_ids, attention_mask, position_ids, past_key_values=None, use_cache=True):
        seen = input_ids if past_key_values is None else torch.cat([past_key_values, input_ids], dim=1)
        logits = torch.zeros(seen.shape[0], 1, self.vocab_size)
        for row in range(seen.shape[0]):
            ids = seen[row][attention_mask[row].bool()].tolist()
            logits[row, 0, self._next(ids)] = 1.0
        return SimpleNamespace(logits=logits, past_key_values=seen)


def _digit(tokenizer, token_id: int) -> str:
    return "".join(char for char in tokenizer.convert_ids_to_tokens(token_id) if char.isdigit())


def test_digit_rule_sites(tokenizer):
    sites = error_prefixes(tokenizer, EXAMPLES, "icot", seed=0)
    assert all(site is not None and site.rule == "digit" for site in sites)
    for example, site in zip(EXAMPLES, sites):
        row = tokenize_icot(tokenizer, example)
        start = row["cot_mask"].index(1)
        cot = [t for t, flag in zip(row["input_ids"], row["cot_mask"]) if flag]
        assert site.cot_length == len(cot) and 0 <= site.position < (len(cot) + 1) // 2  # the first half
        assert site.prefix[:-1] == row["input_ids"][: start + site.position]  # the training layout, cut
        assert site.prefix[-1] == site.wrong_id != site.gold_id == cot[site.position]
        gold, wrong = _digit(tokenizer, site.gold_id), _digit(tokenizer, site.wrong_id)
        assert len(gold) == 1 and wrong == str((int(gold) + 1) % 10)


def test_sites_are_seeded_per_example(tokenizer):
    first = error_prefixes(tokenizer, EXAMPLES, "icot", seed=0)
    assert error_prefixes(tokenizer, EXAMPLES, "icot", seed=0) == first
    # the same row gets the same error whatever the order or the subset
    assert error_prefixes(tokenizer, EXAMPLES[::-1], "icot", seed=0) == first[::-1]
    assert error_prefixes(tokenizer, EXAMPLES[5:9], "icot", seed=0) == first[5:9]
    other = error_prefixes(tokenizer, EXAMPLES, "icot", seed=1)
    assert [s.position for s in other] != [s.position for s in first]


def test_token_rule_never_gold_nor_special(tokenizer):
    special = set(tokenizer.all_special_ids)
    cot = tokenize_icot(tokenizer, EXAMPLES[0])
    cot_ids = [t for t, flag in zip(cot["input_ids"], cot["cot_mask"]) if flag]
    for seed in range(200):
        position, wrong, rule = injection_site(tokenizer, cot_ids, random.Random(seed), "token")
        assert rule == "token" and position < (len(cot_ids) + 1) // 2
        assert wrong != cot_ids[position] and wrong not in special and wrong < tokenizer.vocab_size
    assert injection_site(tokenizer, [], random.Random(0)) is None
    with pytest.raises(ValueError, match="unknown error rule"):
        injection_site(tokenizer, cot_ids, random.Random(0), "typo")


def test_text_cot_without_digits_falls_back_to_the_token_rule(tokenizer):
    from axolotl_maskthought.config import PROMPT_TEMPLATES
    from axolotl_maskthought.data.formats import CoTExample

    words = ["plus", "times", "is", "so", "the", "answer", "#", "then"]
    text_tok = build_tokenizer([" ".join(words) + " 1 2 3 4 5 6 7 8 9 0"] * 4, vocab_size=120, add_bos=False)
    example = CoTExample("1 plus 2", "so the answer is then", "3")
    (site,) = error_prefixes(text_tok, [example], "gsm8k", PROMPT_TEMPLATES["plain"], seed=0)
    row = tokenize_gsm8k(text_tok, example, PROMPT_TEMPLATES["plain"])
    assert site.rule == "token" and site.wrong_id != site.gold_id
    assert site.prefix[:-1] == row["input_ids"][: row["cot_mask"].index(1) + site.position]


def test_recovering_model_answers_and_cascading_model_does_not(tokenizer):
    rows = [tokenize_icot(tokenizer, example) for example in EXAMPLES]
    recovers = Oracle(rows, len(tokenizer), recovers=True)
    clean = evaluate_model(recovers, tokenizer, EXAMPLES, "icot", batch_size=5, progress=False)
    after = evaluate_error_recovery(recovers, tokenizer, EXAMPLES, "icot", batch_size=5, progress=False)
    assert clean["accuracy"] == 1.0 and after["accuracy"] == 1.0 and after["n"] == len(EXAMPLES)
    assert after["rules"] == {"digit": len(EXAMPLES), "token": 0} and after["skipped"] == 0
    cascades = Oracle(rows, len(tokenizer), recovers=False)
    assert evaluate_model(cascades, tokenizer, EXAMPLES, "icot", batch_size=5, progress=False)["accuracy"] == 1.0
    broken = evaluate_error_recovery(
        cascades, tokenizer, EXAMPLES, "icot", batch_size=5, max_new_tokens=40, progress=False
    )
    assert broken["accuracy"] == 0.0 and broken["no_answer"] == len(EXAMPLES)
    first = broken["predictions"][0]
    assert first["wrong_token"] != first["gold_token"] and not first["finished"]


def test_cli_reports_recovery_next_to_clean_accuracy(tokenizer, tmp_path, capsys):
    """Through `eval --inject-error` with a tiny GPT-2 saved to disk (untrained: the numbers are
    whatever it answers; the command's shape and files are what is checked)."""
    from axolotl_maskthought.toy.tiny import build_model

    model = build_model(tokenizer, arch="gpt2", hidden=32, layers=1, heads=2, max_positions=128)
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    data = tmp_path / "test.txt"
    write_lines(data, LINES[:6])
    args = ["eval", str(tmp_path / "model"), "--data", str(data), "--inject-error", "--max-new-tokens", "30"]
    assert main([*args, "--no-progress", "--output", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "after one injected CoT error (first half of the CoT, seed 0; 6 by digit)" in out
    assert "recovery: accuracy" in out and "clean" in out
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["after_error"]["n"] == 6 and summary["after_error"]["rule"] == "digit"
    rows = (tmp_path / "out" / "after_error" / "predictions.jsonl").read_text().splitlines()
    assert len(rows) == 6 and {"prefix", "position", "wrong_token", "gold_token"} <= set(json.loads(rows[0]))
    assert main([*args, "--no-cot"]) == 2
    assert "cannot be combined with --no-cot" in capsys.readouterr().err


def test_accuracy_callback_logs_accuracy_after_error(tokenizer, tmp_path):
    """`cot_format.eval_error_recovery: true` adds `eval_accuracy_after_error` to the evaluation's log,
    computed as `eval --inject-error` computes it (the oracle recovers: 1.0; clean 1.0 too)."""
    from datasets import Dataset
    from pydantic import ValidationError
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

    from axolotl_maskthought.config import CoTFormatConfig
    from axolotl_maskthought.eval.callback import build_accuracy_callback

    rows = [tokenize_icot(tokenizer, example) for example in EXAMPLES]
    oracle = Oracle(rows, len(tokenizer), recovers=True)
    trainer = Trainer(
        model=oracle,
        args=TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True, per_device_eval_batch_size=4),
        eval_dataset=Dataset.from_list(rows[:6]),
        processing_class=tokenizer,
        data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True),
    )
    cfg = {
        "datasets": [{"type": "axolotl_maskthought.strategies.icot"}],
        "cot_format": {"eval_accuracy_samples": 6, "eval_error_recovery": True},
    }
    callback = build_accuracy_callback(cfg, trainer)
    assert callback.error_recovery and len(callback.examples) == 6
    callback.on_evaluate(trainer.args, trainer.state, trainer.control, model=oracle)
    (entry,) = trainer.state.log_history
    assert entry["eval_accuracy_after_error"] == 1.0 and entry["eval_accuracy_cot"] == 1.0
    off = build_accuracy_callback({**cfg, "cot_format": {"eval_accuracy_samples": 6}}, trainer)
    assert not off.error_recovery
    with pytest.raises(ValidationError, match="`cot_format.eval_error_recovery`.*`cot_format.eval_accuracy_samples`"):
        CoTFormatConfig(eval_error_recovery=True)
