"""`eval` end to end: tiny models trained through axolotl in this file, then evaluated.

One full fine-tune memorises eight 2x2 multiplications (ICoT layout) and must
answer them all; a LoRA run of a few steps checks the adapter path. Nothing is
mocked: axolotl trains, `axolotl_maskthought.cli.main` evaluates.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
from axolotl_run import run_in_process, write_config

from axolotl_maskthought.cli import main
from axolotl_maskthought.config import PROMPT_TEMPLATES
from axolotl_maskthought.data import files
from axolotl_maskthought.data import generators as data
from axolotl_maskthought.data.formats import icot_prompt_ids
from axolotl_maskthought.eval import scoring

MEMORISE_STEPS = 100
MAX_NEW = "40"


@pytest.fixture(scope="module")
def single_thread():
    """Two shared cores: one thread per process avoids oversubscribing them (tiny
    matmuls were ~50x slower with two threads on a loaded box)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, single_thread):
    """Data, a tiny base model, a memorising full fine-tune and a short LoRA run."""
    from axolotl_maskthought.toy.tiny import build_tiny

    root = tmp_path_factory.mktemp("eval")
    train = root / "train.txt"
    files.write_lines(train, data.generate_multiplication(2, 2, 8, seed=0))
    # Mixed lengths, so batches are left-padded.
    mixed = root / "mixed.txt"
    files.write_lines(
        mixed,
        data.generate_multiplication(2, 2, 4, seed=0)
        + data.generate_multiplication(3, 2, 3, seed=2)
        + data.generate_multiplication(1, 1, 3, seed=3),
    )
    arithmetic = root / "arith.jsonl"
    files.write_jsonl(
        arithmetic, data.generate_arithmetic(6, seed=0, terms=2) + data.generate_arithmetic(4, seed=1, terms=4)
    )
    texts = [line.replace("||", " ") for line in data.generate_multiplication(2, 2, 200, seed=1)]
    texts += [row["question"] + " " + row["answer"] for row in data.generate_arithmetic(100, seed=5)]
    texts += [PROMPT_TEMPLATES["alpaca"]] * 5
    base = build_tiny(root / "base", texts, vocab_size=256, hidden=64, layers=2, heads=4, max_positions=512)

    dataset = [{"path": str(train), "type": "axolotl_maskthought.strategies.icot"}]
    common = dict(sequence_len=128, micro_batch_size=8, num_epochs=1000, learning_rate=0.003, logging_steps=50)
    full_cfg = write_config(root / "full.yml", base, dataset, root / "out_full", max_steps=MEMORISE_STEPS, **common)
    lora_cfg = write_config(
        root / "lora.yml",
        base,
        dataset,
        root / "out_lora",
        max_steps=5,
        adapter="lora",
        lora_r=4,
        lora_alpha=8,
        lora_target_linear=True,
        lora_dropout=0.0,
        **common,
    )
    started = time.perf_counter()
    run_in_process(full_cfg)
    run_in_process(lora_cfg)
    print(f"training both runs: {time.perf_counter() - started:.1f} s")
    return {
        "root": root,
        "base": base,
        "train": train,
        "mixed": mixed,
        "arith": arithmetic,
        "full": root / "out_full",
        "lora": root / "out_lora",
        "full_cfg": full_cfg,
        "lora_cfg": lora_cfg,
    }


def _eval(args: list) -> int:
    return main(["eval", *map(str, args), "--no-progress", "--max-new-tokens", MAX_NEW])


def _read(output: Path) -> tuple[list[dict], dict]:
    rows = [json.loads(line) for line in (output / "predictions.jsonl").read_text().splitlines()]
    return rows, json.loads((output / "summary.json").read_text())


def _check_consistent(rows: list[dict], summary: dict, n: int, fmt: str, no_cot: bool = False) -> None:
    assert summary["n"] == len(rows) == n
    assert summary["correct"] == sum(row["correct"] for row in rows)
    assert summary["accuracy"] == pytest.approx(summary["correct"] / n)
    assert summary["examples_per_second"] > 0 and summary["format"] == fmt and summary["no_cot"] is no_cot
    for row in rows:
        extracted, correct = scoring.score_generation(row["generation"], row["gold"], fmt, no_cot)
        assert (row["extracted"], row["correct"]) == (extracted, correct)
    unreadable = sum(1 for row in rows if _no_answer(row["generation"], fmt, no_cot))
    assert summary["no_answer"] == unreadable
    assert summary["wrong"] == n - summary["correct"] - unreadable


def _no_answer(generation: str, fmt: str, no_cot: bool) -> bool:
    """Nothing to read: icot, no text after `####`; gsm8k, no number after `#### `."""
    text = "####" + generation if (fmt == "gsm8k" and no_cot) else generation
    if fmt == "icot":
        return "####" not in text or not text.split("####", 1)[1].strip()
    match = re.search(r"#### (-?[0-9.,]+)", text)
    if match is None:
        return True
    try:
        float(match.group(1).replace(",", ""))
    except ValueError:
        return True
    return False


def _tokenizer(directory):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(directory))


def test_full_weights_memorised_set_is_answered(runs, tmp_path, capsys):
    assert (runs["full"] / "model.safetensors").is_file()
    output = tmp_path / "full"
    assert _eval([runs["full"], "--data", runs["train"], "--output", output, "--batch-size", "4"]) == 0
    assert "accuracy 1.0000 (8/8)" in capsys.readouterr().out
    rows, summary = _read(output)
    _check_consistent(rows, summary, 8, "icot")
    assert summary["accuracy"] == 1.0 and summary["unfinished"] == 0  # memorised: every answer right
    tokenizer = _tokenizer(runs["full"])
    examples = scoring.load_examples(runs["train"], "icot")
    for row, example in zip(rows, examples):
        # The prompt is the training layout up to the first EOS; the generation is CoT then answer.
        assert row["prompt"] == tokenizer.decode(icot_prompt_ids(tokenizer, example.question))
        # Official layout ' {q} {eos} {cot} {eos} {answer} {eos}': a space token before each EOS.
        assert row["prompt"] == f"<s> {example.question} </s>"
        assert row["generation"] == f" {example.cot}  #### {example.answer} "
        assert row["finished"] is True


def test_lora_adapter_is_loaded_on_its_base(runs, tmp_path):
    assert (runs["lora"] / "adapter_config.json").is_file()
    assert not (runs["lora"] / "model.safetensors").exists()
    output = tmp_path / "lora"
    assert _eval([runs["lora"], "--data", runs["train"], "--output", output, "--batch-size", "3"]) == 0
    rows, summary = _read(output)
    _check_consistent(rows, summary, 8, "icot")
    assert summary["model"] == str(runs["lora"]) and summary["batch_size"] == 3
    assert all(row["prompt"].endswith("</s>") and row["prompt"].count("</s>") == 1 for row in rows)


def test_config_takes_model_format_and_gives_the_same_predictions(runs, tmp_path):
    direct, via_config = tmp_path / "direct", tmp_path / "config"
    # No --format and a .txt data file either way; the config's dataset type says icot.
    assert _eval([runs["lora"], "--data", runs["train"], "--output", direct]) == 0
    assert _eval(["--config", runs["lora_cfg"], "--data", runs["train"], "--output", via_config]) == 0
    assert _read(direct)[0] == _read(via_config)[0]
    assert _read(via_config)[1]["model"] == str(runs["lora"])
    full = tmp_path / "full"
    assert _eval(["--config", runs["full_cfg"], "--data", runs["train"], "--output", full, "--limit", "3"]) == 0
    rows, summary = _read(full)
    _check_consistent(rows, summary, 3, "icot")
    assert summary["model"] == str(runs["full"]) and summary["accuracy"] == 1.0


def test_config_without_trained_weights_evaluates_base_model(runs, tmp_path, capsys):
    import yaml

    cfg = yaml.safe_load(runs["full_cfg"].read_text())
    cfg["output_dir"] = str(tmp_path / "never_trained")
    config = tmp_path / "cfg.yml"
    config.write_text(yaml.safe_dump(cfg))
    assert _eval(["--config", config, "--data", runs["train"], "--output", tmp_path / "o", "--limit", "2"]) == 0
    assert "holds no weights; evaluating `base_model`" in capsys.readouterr().err
    assert _read(tmp_path / "o")[1]["model"] == str(runs["base"])


def test_batch_size_does_not_change_generations(runs):
    """Left padding and per-row stopping: batch 1, 3 and 4 give identical tokens."""
    from axolotl_maskthought.eval.evaluation import evaluate_model
    from axolotl_maskthought.eval.loading import load_model_and_tokenizer
    from axolotl_maskthought.eval.prompts import build_prompts

    model, tokenizer = load_model_and_tokenizer(runs["full"])
    for path, fmt in ((runs["mixed"], "icot"), (runs["arith"], "gsm8k")):
        examples = scoring.load_examples(path, fmt)
        assert len({len(prompt) for prompt in build_prompts(tokenizer, examples, fmt)}) > 2  # really padded
        results = {
            size: evaluate_model(model, tokenizer, examples, fmt, batch_size=size, max_new_tokens=24, progress=False)
            for size in (1, 3, 4)
        }
        generations = {size: [row["generation"] for row in result["predictions"]] for size, result in results.items()}
        assert generations[1] == generations[3] == generations[4]
        assert sum(bool(text.strip()) for text in generations[1]) >= len(examples) // 2  # not just instant EOS
        print(
            f"{fmt}: {results[1]['examples_per_second']:.1f} ex/s at batch 1, "
            f"{results[4]['examples_per_second']:.1f} at batch 4"
        )
    memorised = evaluate_model(
        model,
        tokenizer,
        scoring.load_examples(runs["mixed"], "icot"),
        "icot",
        batch_size=4,
        max_new_tokens=40,
        progress=False,
    )
    assert memorised["correct"] >= 4  # the four training examples in the mixed set
    assert model.training is False


@pytest.mark.parametrize("fmt_args, ends_with", [(["--format", "icot"], " </s></s>"), ([], "####")])
def test_no_cot_prompts(runs, tmp_path, capsys, fmt_args, ends_with):
    data_file = runs["train"] if fmt_args else runs["arith"]
    output = tmp_path / "nocot"
    assert _eval([runs["full"], "--data", data_file, "--no-cot", "--limit", "3", "--output", output, *fmt_args]) == 0
    rows, summary = _read(output)
    fmt = "icot" if fmt_args else "gsm8k"
    _check_consistent(rows, summary, 3, fmt, no_cot=True)
    out = capsys.readouterr().out
    assert f"{summary['wrong']} wrong, {summary['no_answer']} with no answer" in out
    assert ("generations have no answer" in out) == (summary["no_answer"] > 0)
    print(f"{fmt} --no-cot on a model trained with CoT: {summary}")
    assert all(row["prompt"].endswith(ends_with) for row in rows)
    if fmt == "gsm8k":
        assert all("### Response:\n" in row["prompt"] for row in rows)  # default template: alpaca
        assert summary["prompt_template"] == PROMPT_TEMPLATES["alpaca"]


def _error(capsys, args: list) -> str:
    code = main(args)
    captured = capsys.readouterr()
    assert code == 2
    assert "Traceback" not in captured.err
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    return lines[0]


def test_errors_are_one_line(runs, tmp_path, capsys):
    missing = tmp_path / "missing.txt"
    assert str(missing) in _error(capsys, ["eval", str(runs["full"]), "--data", str(missing)])

    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_text("{}")
    message = _error(capsys, ["eval", str(no_weights), "--data", str(runs["train"])])
    assert str(no_weights) in message and "no model weights" in message
    assert "no such model directory" in _error(capsys, ["eval", str(tmp_path / "nope"), "--data", str(runs["train"])])

    assert "unknown format 'csv'" in _error(
        capsys, ["eval", str(runs["full"]), "--data", str(runs["train"]), "--format", "csv"]
    )
    assert "pass --format" in _error(capsys, ["eval", str(runs["full"]), "--data", str(tmp_path / "x.csv")])

    bad = tmp_path / "bad.txt"
    bad.write_text("1 2 * 3 4||3 6 0 #### 3 6 0 0\n\n5 6 * 7 8||no answer here\n")
    message = _error(capsys, ["eval", str(runs["full"]), "--data", str(bad)])
    assert f"{bad}: row 3" in message and "####" in message

    message = _error(capsys, ["eval", str(runs["full"]), "--data", str(runs["train"]), "--backend", "vllm"])
    assert "`vllm`" in message

    with pytest.raises(FileNotFoundError):  # --debug: the exception itself
        main(["--debug", "eval", str(runs["full"]), "--data", str(missing)])
