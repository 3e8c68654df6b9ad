"""The seams with axolotl (issue 15, kinds 1 and 2), through axolotl's real path.

Kind 1: the CoT span (``cot_mask``) follows what axolotl does to rows between
tokenization and the model: ``excess_length_strategy: truncate`` (ICoT rows of 71
tokens, 47 of them CoT, with ``sequence_len: 24``), and datasets of different
types concatenated (the gsm8k strategy beside axolotl's ``alpaca``). What cannot
follow is refused by key before the model loads. docs/seams.md has the table.

Kind 2: a setting is never silently replaced: a tokenizer without a pad token gets
EOS as pad from axolotl, and ``replacement: pad`` would then mask with EOS, the
ICoT separator. Refused before the model loads. docs/axolotl-keys.md has the table.
"""

from __future__ import annotations

from pathlib import Path

import axolotl_run
import pytest
import yaml
from axolotl.cli.config import load_cfg
from axolotl_run import build_base_model, gsm8k_dataset, run_in_process, save_prepared_in_process, write_config

from axolotl_maskthought.adapters.axolotl.dataset_lengths import training_cot_lengths
from axolotl_maskthought.data.files import read_jsonl, write_lines
from axolotl_maskthought.data.formats import IGNORE_INDEX, parse_icot_line, tokenize_icot
from axolotl_maskthought.engine.cot_lengths import CoTLengthReportCallback, dataset_cot_lengths

ICOT = "axolotl_maskthought.strategies.icot"
ROWS = 16
SEQUENCE_LEN = 24


@pytest.fixture(scope="module", autouse=True)
def faster_runs():
    """Prepared data saved in this process (no spawn pool): the same files, see axolotl_run."""
    from axolotl.utils.data import sft

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sft, "save_preprocessed_dataset", save_prepared_in_process)
        yield


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, shared_data: Path) -> dict:
    root = tmp_path_factory.mktemp("seams")
    lines = [line.strip() for line in open(shared_data / "icot" / "4_by_4_mult" / "valid.txt") if line.strip()]
    gsm_rows = read_jsonl(shared_data / "gsm8k" / "train.jsonl", limit=ROWS)
    texts = lines[:64] + [row["question"] + "\n" + row["answer"] for row in gsm_rows]
    model = build_base_model(root / "model", texts, vocab_size=512, hidden=32, layers=1, heads=2)
    icot = root / "icot16.txt"
    write_lines(icot, lines[:ROWS])
    alpaca_rows = [{"instruction": row["question"], "input": "", "output": row["answer"]} for row in gsm_rows]
    return {
        "root": root,
        "model": model,
        "lines": lines[:ROWS],
        "icot": icot,
        "gsm8k": axolotl_run.write_jsonl(root / "gsm16.jsonl", gsm_rows),
        "alpaca": axolotl_run.write_jsonl(root / "alpaca16.jsonl", alpaca_rows),
    }


def _config(workspace: dict, name: str, datasets: list[dict], **extra) -> Path:
    root = workspace["root"]
    extra.setdefault("max_steps", 2)
    base_model = extra.pop("base_model", workspace["model"])
    return write_config(root / f"{name}.yml", base_model=base_model, datasets=datasets, output_dir=root / name, **extra)


def _icot(workspace: dict) -> list[dict]:
    return [{"path": str(workspace["icot"]), "type": ICOT}]


def _truncate(**extra) -> dict:
    return {"sequence_len": SEQUENCE_LEN, "excess_length_strategy": "truncate", **extra}


# ---- Kind 1, case A: excess_length_strategy: truncate ------------------------------------------
def test_the_case_rows_are_71_tokens_with_47_of_cot(workspace: dict) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(workspace["model"])
    shapes = {
        (len(row["input_ids"]), sum(row["cot_mask"]))
        for row in (tokenize_icot(tokenizer, parse_icot_line(line)) for line in workspace["lines"])
    }
    assert shapes == {(71, 47)}


def _assert_rows_cut_alike(dataset) -> None:
    assert len(dataset) == ROWS
    for row in dataset:
        assert len(row["input_ids"]) == SEQUENCE_LEN
        assert len(row["cot_mask"]) == len(row["labels"]) == len(row["attention_mask"]) == SEQUENCE_LEN


def test_truncate_with_masked_thought_trains_on_the_cut_span(workspace: dict) -> None:
    config = _config(
        workspace, "truncate_mt", _icot(workspace), masked_thought={"ratio": 0.4, "warmup": 0}, **_truncate()
    )
    run = run_in_process(config)  # main: ValueError "cot_mask has 71 entries but input_ids 24"
    assert len(run.train_forwards) == 2
    for forward in run.train_forwards:  # padded to a multiple of 64 by axolotl's collator
        assert int(forward["attention_mask"].sum(1).max()) == SEQUENCE_LEN
    _assert_rows_cut_alike(run.trainer.train_dataset)
    # the cut keeps the first 24 tokens: the question, the first EOS, then the start of the CoT
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(workspace["model"])
    full = {
        tuple(row["input_ids"][:SEQUENCE_LEN]): row["cot_mask"][:SEQUENCE_LEN]
        for row in (tokenize_icot(tokenizer, parse_icot_line(line)) for line in workspace["lines"])
    }
    for row in run.trainer.train_dataset:
        assert list(row["cot_mask"]) == list(full[tuple(row["input_ids"])])


def test_truncate_with_reasoning_scope_masks_only_the_cut_cot(workspace: dict) -> None:
    config = _config(
        workspace,
        "truncate_mt_reasoning",
        _icot(workspace),
        masked_thought={"ratio": 1.0, "warmup": 0, "scope": "reasoning"},
        **_truncate(),
    )
    run = run_in_process(config)

    def key(input_ids, labels):
        prompt = next(i for i, label in enumerate(labels) if label != IGNORE_INDEX)
        return tuple(input_ids[:prompt]), tuple(labels)

    originals = {key(row["input_ids"], row["labels"]): row for row in run.trainer.train_dataset}
    changed = 0
    for forward in run.train_forwards:
        rows = zip(forward["input_ids"].tolist(), forward["labels"].tolist(), forward["attention_mask"].sum(1).tolist())
        for ids, labels, length in rows:
            ids, labels = ids[:length], labels[:length]  # without axolotl's padding
            row = originals[key(ids, labels)]
            for position, (seen, clean) in enumerate(zip(ids, row["input_ids"])):
                if row["cot_mask"][position] > 0 and row["labels"][position] != IGNORE_INDEX:
                    changed += seen != clean
                else:
                    assert seen == clean, "a token outside the cut CoT span was masked"
    assert changed > 0


def test_truncate_with_cot_removal_schedule_and_trainer_report_agree(workspace: dict) -> None:
    removal = {"tokens_per_epoch": 8, "smoothing_lambda": None}
    config = _config(workspace, "truncate_removal", _icot(workspace), cot_removal=removal, **_truncate())
    run = run_in_process(config)  # main: ValueError at the first batch
    dataset = run.trainer.train_dataset
    _assert_rows_cut_alike(dataset)
    reports = [cb for cb in run.trainer.callback_handler.callbacks if isinstance(cb, CoTLengthReportCallback)]
    assert len(reports) == 1 and reports[0].report is not None
    trainer_lengths = dataset_cot_lengths(dataset)
    # `axolotl-maskthought schedule` reads its CoT lengths from training_cot_lengths
    schedule = training_cot_lengths(yaml.safe_load(config.read_text()))
    assert sorted(schedule.lengths) == sorted(trainer_lengths)
    assert reports[0].report.lengths.maximum == max(schedule.lengths) <= SEQUENCE_LEN // 2
    assert f"{ROWS} longer than sequence_len {SEQUENCE_LEN} truncated" in schedule.note


def test_schedule_cli_prints_the_cut_lengths(workspace: dict, capsys) -> None:
    from axolotl_maskthought import cli

    removal = {"tokens_per_epoch": 8, "smoothing_lambda": None}
    config = _config(workspace, "truncate_schedule", _icot(workspace), cot_removal=removal, **_truncate())
    cli.main(["schedule", str(config)])
    out = capsys.readouterr().out
    assert f"over {ROWS} examples" in out
    assert "max 47" not in out


def test_eval_sequence_len_cuts_test_datasets_to_their_own_length(workspace: dict) -> None:
    """``eval_sequence_len`` is axolotl's limit for `test_datasets`: the strategy cuts eval rows to it."""
    from axolotl_maskthought.strategies.base import excess_length_limit

    train, test = {"path": "a.txt", "type": ICOT}, {"path": "b.txt", "type": ICOT}
    cfg = {**_truncate(eval_sequence_len=40), "datasets": [train], "test_datasets": [test]}
    assert excess_length_limit(cfg, train) == SEQUENCE_LEN
    assert excess_length_limit(cfg, test) == 40
    assert excess_length_limit({**cfg, "excess_length_strategy": "drop"}, train) is None
    assert excess_length_limit({**cfg, "skip_prepare_dataset": True}, train) is None


# ---- Kind 1: every other row and batch transformation, with the span checked position by position ----
def _assert_masks_stay_in_the_span(run) -> None:
    """Each example the model got (packed or not) against the tokenized row it came from:
    with `scope: reasoning` at ratio 1.0 every trained CoT input is replaced and nothing else."""
    changed = 0
    for forward in run.train_forwards:
        for row, start, end, source in axolotl_run.clean_examples(forward, run.trainer.train_dataset):
            seen = forward["input_ids"][row, start:end].tolist()
            for position, token in enumerate(seen):
                in_span = source["cot_mask"][position] > 0 and source["labels"][position] != IGNORE_INDEX
                if in_span:
                    changed += token != source["input_ids"][position]
                else:
                    assert token == source["input_ids"][position], f"position {position} outside the span was masked"
    assert changed > 0


@pytest.mark.parametrize(
    "extra",
    [
        {"sample_packing": True},
        {"sample_packing": True, "sequence_len": 160, "eval_sample_packing": False},  # two rows a pack, uncut
        {"remove_unused_columns": True},
        {"group_by_length": True},
        {"dataset_exact_deduplication": True},
        {"pad_to_sequence_len": True},
        {"curriculum_sampling": True},
        {"min_sample_len": 20},
        {"val_set_size": 0.25},
        {"gradient_checkpointing": True},
        {"neftune_noise_alpha": 5.0},
        {"dataloader_num_workers": 1, "dataloader_prefetch_factor": 2},  # the collator in a worker process
    ],
    ids=lambda extra: "_".join(map(str, extra)),
)
def test_row_and_batch_transformations_keep_the_span_aligned(workspace: dict, extra: dict) -> None:
    name = "follows_" + "_".join(map(str, extra))
    block = {"masked_thought": {"ratio": 1.0, "warmup": 0, "scope": "reasoning"}}
    config = _config(workspace, name, _icot(workspace), max_steps=1, **block, **_truncate(**extra))
    run = run_in_process(config)
    assert run.train_forwards
    _assert_masks_stay_in_the_span(run)
    if extra.get("sequence_len") == 160:
        assert len(axolotl_run.segments(run.train_forwards[0])) > run.train_forwards[0]["input_ids"].shape[0]


def test_prepared_data_is_keyed_by_the_length_policy() -> None:
    """axolotl's prepared-data hash has `sequence_len` but not `excess_length_strategy` or
    `eval_sequence_len`: rows our strategies cut must not be served to a `drop` run, or back."""
    from axolotl_maskthought.adapters.axolotl.plugin import tokenization_fingerprint

    drop = tokenization_fingerprint({"sequence_len": SEQUENCE_LEN})
    truncate = tokenization_fingerprint(_truncate())
    assert len({drop, truncate, tokenization_fingerprint(_truncate(eval_sequence_len=40))}) == 3
    assert tokenization_fingerprint({"sequence_len": SEQUENCE_LEN, "excess_length_strategy": "raise"}) == drop


# ---- Kind 1, case B: datasets of different types --------------------------------------------------
def _mixed(workspace: dict) -> list[dict]:
    return [gsm8k_dataset(workspace["gsm8k"]), {"path": str(workspace["alpaca"]), "ds_type": "json", "type": "alpaca"}]


@pytest.mark.parametrize("block", [{"masked_thought": {"scope": "response", "ratio": 0.4, "warmup": 0}}, {}])
def test_gsm8k_beside_alpaca_trains(workspace: dict, block: dict) -> None:
    name = "mixed_" + ("mt" if block else "plain")
    config = _config(workspace, name, _mixed(workspace), micro_batch_size=8, **block)
    run = run_in_process(config)  # main: TypeError: object of type 'NoneType' has no len()
    dataset = run.trainer.train_dataset
    without = [row for row in dataset if row["cot_mask"] is None]  # the alpaca rows: no CoT recorded
    # one GSM8K problem is longer than sequence_len (512) in both layouts: axolotl drops it twice
    assert len(without) == len(dataset) - len(without) == ROWS - 1
    assert len(run.train_forwards) == 2
    assert dataset_cot_lengths(dataset).count(0) == len(without)


def test_collator_reads_a_missing_span_as_no_cot() -> None:
    from transformers import DataCollatorForSeq2Seq

    from axolotl_maskthought.engine.collator import CoTSpanCollator

    class Tok:
        pad_token_id, padding_side = 0, "right"

        def pad(self, features, **kwargs):
            import torch

            width = max(len(f["input_ids"]) for f in features)
            return {
                key: torch.tensor([f[key] + [0] * (width - len(f[key])) for f in features])
                for key in features[0]
                if key != "labels"
            }

    collator = CoTSpanCollator(DataCollatorForSeq2Seq(Tok(), padding=True))
    batch = collator(
        [
            {"input_ids": [5, 6, 7], "attention_mask": [1, 1, 1], "labels": [5, 6, 7], "cot_mask": [0, 1, 0]},
            {"input_ids": [5, 6], "attention_mask": [1, 1], "labels": [5, 6], "cot_mask": None},
        ]
    )
    assert batch["cot_mask"].tolist() == [[0, 1, 0], [0, 0, 0]]


# ---- Kind 1: what cannot follow is refused by key ---------------------------------------------------
def _load(workspace: dict, name: str, datasets: list[dict], **extra):
    config = _config(workspace, name, datasets, **extra)
    axolotl_run.reset_plugins()
    return load_cfg(str(config))


@pytest.mark.parametrize(
    "extra, key",
    [
        ({"streaming": True, "cot_removal": {}}, "streaming"),
        ({"streaming": True, "sample_packing": True, "masked_thought": {"scope": "reasoning"}}, "streaming"),
        ({"use_pose": True, "cot_removal": {}}, "use_pose"),
        ({"context_parallel_size": 2, "masked_thought": {}}, "context_parallel_size"),
    ],
)
def test_transformations_the_span_cannot_follow_are_refused_by_key(workspace: dict, extra: dict, key: str) -> None:
    with pytest.raises(ValueError, match=rf"`{key}"):
        _load(workspace, "refused_" + key, _icot(workspace), **extra)


# ---- Kind 2: pad_to_sequence_len is kept under CoT removal -----------------------------------------
def test_pad_to_sequence_len_batches_keep_their_width_after_removal(workspace: dict) -> None:
    """axolotl pads every batch to `sequence_len` (128 here); removal used to narrow it to the longest row left."""
    removal = {"tokens_per_epoch": 8, "smoothing_lambda": 0.01}  # offsets 0-99 nearly uniform: most CoT goes
    config = _config(
        workspace,
        "pad_to_len_removal",
        _icot(workspace),
        cot_removal=removal,
        sequence_len=128,
        pad_to_sequence_len=True,
    )
    run = run_in_process(config)
    assert run.train_forwards
    for forward in run.train_forwards:
        assert forward["input_ids"].shape[1] == 128
        lengths = forward["attention_mask"].sum(1)
        assert int(lengths.max()) < 71  # CoT tokens were removed from every row
        for row, length in enumerate(lengths.tolist()):
            assert (forward["labels"][row, length:] == IGNORE_INDEX).all()
            assert not forward["attention_mask"][row, length:].any()  # right padding, after the real tokens


# ---- Kind 2: a tokenizer without a pad token, replacement: pad ---------------------------------------
@pytest.fixture(scope="module")
def no_pad_model(workspace: dict) -> Path:
    from transformers import AutoTokenizer

    directory = workspace["root"] / "model-no-pad"
    build_base_model(directory, workspace["lines"][:64], vocab_size=512, hidden=32, layers=1, heads=2)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    tokenizer.pad_token = None
    tokenizer.save_pretrained(directory)
    assert AutoTokenizer.from_pretrained(directory).pad_token is None
    return directory


def test_pad_replacement_that_axolotl_made_eos_is_refused_before_the_model_loads(
    workspace: dict, no_pad_model: Path
) -> None:
    config = _config(
        workspace,
        "pad_is_eos",
        _icot(workspace),
        base_model=str(no_pad_model),
        masked_thought={"replacement": "pad", "scope": "reasoning", "ratio": 0.4, "warmup": 0},
    )
    with pytest.raises(ValueError) as raised:
        run_in_process(config)  # main: trains, masking CoT positions with </s>
    message = str(raised.value)
    assert "`masked_thought.replacement: pad`" in message and "eos_token '</s>'" in message
    assert "special_tokens: {pad_token:" in message and "`random`" in message
    assert "post_model_load" not in axolotl_run.EVENTS


def test_pad_replacement_with_a_pad_token_of_its_own_trains(workspace: dict, no_pad_model: Path) -> None:
    config = _config(
        workspace,
        "pad_own",
        _icot(workspace),
        base_model=str(no_pad_model),
        special_tokens={"pad_token": "<pad>"},
        masked_thought={"replacement": "pad", "scope": "reasoning", "ratio": 0.4, "warmup": 0},
    )
    run = run_in_process(config)
    eos = run.trainer.processing_class.eos_token_id
    pad = run.trainer.processing_class.pad_token_id
    assert pad != eos
    dataset = run.trainer.train_dataset
    eos_per_row = {sum(1 for t in row["input_ids"] if t == eos) for row in dataset}
    for forward in run.train_forwards:
        for ids in forward["input_ids"].tolist():
            assert sum(1 for t in ids if t == eos) in eos_per_row  # no EOS written into the CoT


def test_mask_token_that_is_eos_is_refused(workspace: dict) -> None:
    config = _config(
        workspace, "mask_is_eos", _icot(workspace), masked_thought={"replacement": "mask_token", "mask_token": "</s>"}
    )
    with pytest.raises(ValueError, match=r"`masked_thought.mask_token` \(id \d+\) is the tokenizer's eos_token"):
        run_in_process(config)
    assert "post_model_load" not in axolotl_run.EVENTS


def test_train_on_inputs_with_response_scope_is_warned_by_name(workspace: dict) -> None:
    with axolotl_run.logged_records("axolotl.maskthought.config") as records:
        _load(workspace, "train_on_inputs", _icot(workspace), train_on_inputs=True, masked_thought={})
    warnings = [r.getMessage() for r in records if "`train_on_inputs: true`" in r.getMessage()]
    assert len(warnings) == 1 and "`masked_thought.scope: reasoning`" in warnings[0]
    with axolotl_run.logged_records("axolotl.maskthought.config") as records:
        _load(
            workspace,
            "train_on_inputs_cot",
            _icot(workspace),
            train_on_inputs=True,
            masked_thought={"scope": "reasoning"},
        )
    assert not [r for r in records if "`train_on_inputs: true`" in r.getMessage()]


def test_structural_tokens_include_turn_markers_and_single_token_think_tags(workspace: dict) -> None:
    from transformers import AutoTokenizer

    from axolotl_maskthought.engine.replacement import replacement_conflict, structural_token_ids

    tokenizer = AutoTokenizer.from_pretrained(workspace["model"])
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_end|>"]})
    tokenizer.add_tokens(["<think>", "</think>"])
    think = tokenizer.convert_tokens_to_ids("<think>")
    found = structural_token_ids(tokenizer, ("<think>", "</think>"))
    assert found[tokenizer.eos_token_id] == "eos_token '</s>'"
    assert found[tokenizer.convert_tokens_to_ids("<|im_end|>")] == "special token '<|im_end|>'"
    assert found[think] == "'<think>'"
    assert tokenizer.pad_token_id not in found
    assert "'<think>'" in replacement_conflict("pad", think, tokenizer, ("<think>", "</think>"))
    assert replacement_conflict("pad", tokenizer.pad_token_id, tokenizer, ("<think>", "</think>")) is None
    assert replacement_conflict("random", tokenizer.eos_token_id, tokenizer) is None
