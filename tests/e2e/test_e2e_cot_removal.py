"""Stepwise Internalization end to end: axolotl trains a tiny Llama on 3x3 multiplication.

Every forward the model receives is recorded (``axolotl_run.CapturePlugin``) with the
optimizer step it belongs to, and AdamW's ``step`` of one trained parameter after every
optimizer step (``removal_capture``). The expected counts come from the literal replay
of the official loop in ``test_schedule`` (not from the package's closed forms), and
each example's CoT from tokenizing the data lines again; every forward row is split
into its examples and checked token by token.

Runs (combined to stay small): unpacked left removal with checkpoints and a resume;
packed right removal with ``remove_all_at``; LoRA with gradient accumulation 2 and
Masked Thought; smoothing with ``start_epoch: 1``, evaluation and no optimizer reset.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pytest
import removal_capture
from axolotl_run import (
    CAPTURE_PLUGIN,
    MASKTHOUGHT_PLUGIN,
    build_base_model,
    run_in_process,
    save_prepared_in_process,
    write_config,
)
from official_schedule import hf_loop_first_micro_batches, official_loop

from axolotl_maskthought.data.files import write_lines
from axolotl_maskthought.data.formats import IGNORE_INDEX, parse_icot_line, tokenize_icot
from axolotl_maskthought.data.generators import generate_multiplication
from axolotl_maskthought.ops.schedule import REMOVE_ALL

ROWS = 48
PLUGINS = [MASKTHOUGHT_PLUGIN, CAPTURE_PLUGIN, removal_capture.PLUGIN]


@pytest.fixture(scope="module", autouse=True)
def faster_runs():
    """Two speed-ups that change nothing about training. datasets' ``save_to_disk(num_proc=1)``
    starts a *spawn* pool, which re-imports torch and axolotl in a child (~40 s a run on
    this box): save in-process instead, same files. axolotl's multipack sampler calls
    ``gc.collect()`` for every batch list (~1 s each with torch and axolotl loaded):
    :func:`train` freezes what is alive before a run so collections skip it."""
    import gc

    from axolotl.utils.data import sft

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sft, "save_preprocessed_dataset", save_prepared_in_process)
        yield
    gc.unfreeze()


@dataclass
class Workspace:
    root: Path
    data: Path
    base_model: Path
    table: dict  # prompt ids -> (cot ids, rest ids)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Workspace:
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("cot_removal")
    lines = list(dict.fromkeys(generate_multiplication(3, 3, ROWS + 8, seed=3)))[:ROWS]
    assert len(lines) == ROWS
    data = root / "mult3.txt"
    write_lines(data, lines)
    base = build_base_model(root / "model", lines, vocab_size=256, hidden=32, layers=1, heads=2)
    tokenizer = AutoTokenizer.from_pretrained(base)
    table = {}
    for line in lines:
        example = tokenize_icot(tokenizer, parse_icot_line(line))
        ids, labels, cot_mask = example["input_ids"], example["labels"], example["cot_mask"]
        prompt_len = next(i for i, label in enumerate(labels) if label != IGNORE_INDEX)
        cot = [t for t, flag in zip(ids, cot_mask) if flag]
        assert len(cot) > 20
        table[tuple(ids[:prompt_len])] = (cot, ids[prompt_len + len(cot) :])
    assert len(table) == ROWS
    return Workspace(root, data, base, table)


def train(workspace: Workspace, name: str, data: Path | None = None, output_dir: Path | None = None, **extra):
    import gc

    gc.collect()
    gc.freeze()
    removal_capture.reset()
    output_dir = output_dir or workspace.root / name
    config = write_config(
        workspace.root / f"{name}.yml",
        base_model=workspace.base_model,
        datasets=[{"path": str(data or workspace.data), "type": "axolotl_maskthought.strategies.icot"}],
        output_dir=output_dir,
        plugins=PLUGINS,
        **extra,
    )
    run = run_in_process(config)
    assert len(run.forwards) == len(removal_capture.FORWARD_STEPS)
    run.forward_steps = list(removal_capture.FORWARD_STEPS)
    run.adam_steps = dict(removal_capture.ADAM_STEPS)
    run.adam_parameter = removal_capture.PARAMETER.get("name")
    return run


# ---- expectations --------------------------------------------------------------------


def expected_counts(batches_per_epoch, accumulation, delta, start_epoch=0, remove_all_at=None, steps=40):
    """Count per optimizer step: the official per-micro-batch count at the step's first
    micro-batch; and whether the step is still in the full-CoT epochs."""
    epochs = math.ceil(steps * accumulation / batches_per_epoch) + 1
    official = official_loop(batches_per_epoch, delta, start_epoch, remove_all_at, epochs)
    firsts = hf_loop_first_micro_batches(batches_per_epoch, accumulation, epochs)[:steps]
    counts = [official[first][0] for first in firsts]
    full_cot = [first < start_epoch * batches_per_epoch for first in firsts]
    return counts, full_cot


def expected_adam_steps(counts, reset=True):
    """AdamW's step after each optimizer step: back to 1 when the count grew (CoT was
    left in every batch before an increment in these runs), +1 otherwise."""
    steps = []
    for index, count in enumerate(counts):
        restart = index == 0 or (reset and count > counts[index - 1])
        steps.append(1 if restart else steps[-1] + 1)
    return steps


def examples_in(forward):
    """(input_ids, labels, position_ids) of each example of a forward batch; padding is
    skipped (attention_mask 0 or, in packed rows without a mask, a segment with no
    trained label)."""
    input_ids, labels = forward["input_ids"], forward["labels"]
    attention, positions = forward["attention_mask"], forward["position_ids"]
    for row in range(input_ids.shape[0]):
        width = int((attention[row] != 0).sum()) if attention is not None else input_ids.shape[1]
        if attention is not None:
            assert attention[row, :width].ne(0).all() and attention[row, width:].eq(0).all()
        starts = [0]
        if positions is not None:
            pos = positions[row].tolist()
            starts += [t for t in range(1, width) if pos[t] <= pos[t - 1]]
        for start, end in zip(starts, starts[1:] + [width]):
            segment_labels = labels[row, start:end].tolist()
            if all(label == IGNORE_INDEX for label in segment_labels):
                continue
            segment_positions = positions[row, start:end].tolist() if positions is not None else None
            yield input_ids[row, start:end].tolist(), segment_labels, segment_positions


def split_example(table, input_ids, labels):
    """(original cot, original rest, CoT kept, rest as received) of one example, read from
    the labels (the original tokens, even where Masked Thought replaced inputs)."""
    prompt_len = next(i for i, label in enumerate(labels) if label != IGNORE_INDEX)
    cot, rest = table[tuple(input_ids[:prompt_len])]
    kept = labels[prompt_len : len(labels) - len(rest)]
    return cot, rest, kept, labels[len(labels) - len(rest) :]


def expected_kept(cot, count, side):
    removed = min(count, len(cot))
    return cot[removed:] if side == "left" else cot[: len(cot) - removed]


def check_exact_removal(run, table, counts, side, eos_id, masked=False):
    """Every training example holds exactly the CoT the schedule leaves; returns the
    number of examples checked."""
    checked = 0
    for forward, (step, training) in zip(run.forwards, run.forward_steps):
        if not training:
            continue
        for input_ids, labels, positions in examples_in(forward):
            cot, rest, kept, rest_received = split_example(table, input_ids, labels)
            assert kept == expected_kept(cot, counts[step], side), (step, counts[step])
            assert rest_received == rest  # both separators and the answer stay
            if not masked:
                # tokens strictly between the two EOS: max(0, cot_len - count)
                eos = [i for i, token in enumerate(input_ids) if token == eos_id]
                assert eos[1] - eos[0] - 1 == max(0, len(cot) - counts[step])
                assert input_ids[len(input_ids) - len(rest) - len(kept) :] == kept + rest
            if positions is not None:
                assert positions == list(range(len(input_ids)))
            checked += 1
    return checked


def logged_per_step(run, key):
    return {entry["step"] - 1: entry[key] for entry in run.log_history if key in entry}


# ---- runs ------------------------------------------------------------------------------

UNPACKED = dict(
    cot_removal={"tokens_per_epoch": 6, "smoothing_lambda": None, "side": "left"},
    max_steps=16,
    num_epochs=2,
    save_strategy="steps",
    save_steps=5,
)


@pytest.fixture(scope="module")
def unpacked_run(workspace):
    return train(workspace, "unpacked", **UNPACKED)


def test_unpacked_counts_follow_schedule_exactly(unpacked_run, workspace):
    run = unpacked_run
    # `smoothing_lambda: null` must survive axolotl's exclude_none re-dump of the config
    assert run.trainer._smoothing_probs is None
    assert run.trainer.micro_batches_per_epoch == ROWS // 4 == 12
    counts, _ = expected_counts(12, 1, 6, steps=16)
    assert counts == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7]
    assert [step for step, training in run.forward_steps if training] == list(range(16))
    for forward in run.train_forwards:  # trailing padding trimmed after removal
        assert forward["attention_mask"][:, -1].any()
    tokenizer = run.trainer.processing_class
    assert check_exact_removal(run, workspace.table, counts, "left", tokenizer.eos_token_id) == 16 * 4


def test_optimizer_state_restarts_at_each_increment(unpacked_run):
    run = unpacked_run
    counts, _ = expected_counts(12, 1, 6, steps=16)
    assert run.adam_steps == dict(enumerate(expected_adam_steps(counts)))
    assert list(run.adam_steps.values()) == [1, 2] + [1, 2] * 7


def test_logs_carry_removal_metrics(unpacked_run):
    run = unpacked_run
    counts, _ = expected_counts(12, 1, 6, steps=16)
    assert logged_per_step(run, "cot_removal/scheduled") == dict(enumerate(counts))
    # every CoT is longer than 7 tokens: exactly `count` removed, none emptied
    assert logged_per_step(run, "cot_removal/removed_tokens_mean") == dict(enumerate(map(float, counts)))
    assert set(logged_per_step(run, "cot_removal/no_cot_fraction").values()) == {0.0}
    resets = logged_per_step(run, "cot_removal/optimizer_reset")
    assert sorted(resets) == [step for step in range(1, 16) if counts[step] > counts[step - 1]]


def test_resume_from_checkpoint_continues_schedule(unpacked_run, workspace):
    """Resumed at step 5 (count 2, no increment there): the same count at every later
    step as the uninterrupted run, and AdamW's step continues from the checkpoint's
    state instead of restarting at the resume."""
    checkpoint = workspace.root / "unpacked" / "checkpoint-5"
    assert checkpoint.is_dir()
    resumed = train(
        workspace, "resumed", output_dir=workspace.root / "unpacked", resume_from_checkpoint=str(checkpoint), **UNPACKED
    )
    counts, _ = expected_counts(12, 1, 6, steps=16)
    assert [step for step, training in resumed.forward_steps if training] == list(range(5, 16))
    assert {s: c for s, c in resumed.trainer.applied_counts.items()} == {s: counts[s] for s in range(5, 16)}
    tokenizer = resumed.trainer.processing_class
    assert check_exact_removal(resumed, workspace.table, counts, "left", tokenizer.eos_token_id) == 11 * 4
    assert resumed.adam_steps == {s: unpacked_run.adam_steps[s] for s in range(5, 16)}
    assert resumed.adam_steps[5] == 2  # not 1: no reset at the resume step


def test_packed_right_side_remove_all(workspace):
    """Packed rows (several examples a row, position ids restarting), right side, K = 3:
    counts 0, 0, 1, 1, 2, 2 then the whole CoT; resets at each increment including the
    jump to "all", none after."""
    run = train(
        workspace,
        "packed",
        sample_packing=True,
        attn_implementation="sdpa",
        sequence_len=256,
        micro_batch_size=2,
        max_steps=12,
        num_epochs=3,
        cot_removal={"tokens_per_epoch": 4, "smoothing_lambda": None, "side": "right", "remove_all_at": 3},
    )
    batches = run.trainer.micro_batches_per_epoch
    assert 4 <= batches <= 12
    counts, _ = expected_counts(batches, 1, 4, remove_all_at=3, steps=12)
    interval = round(batches / 4)
    assert counts[3 * interval :] == [REMOVE_ALL] * (12 - 3 * interval)
    tokenizer = run.trainer.processing_class
    checked = check_exact_removal(run, workspace.table, counts, "right", tokenizer.eos_token_id)
    assert checked > 2 * 12  # packing put several examples in a row
    assert run.adam_steps == dict(enumerate(expected_adam_steps(counts)))
    last_reset = 3 * interval
    assert run.adam_steps[last_reset] == 1
    assert [run.adam_steps[s] for s in range(last_reset, 12)] == list(range(1, 13 - last_reset))
    assert logged_per_step(run, "cot_removal/scheduled") == {
        s: (-1 if c == REMOVE_ALL else c) for s, c in enumerate(counts)
    }
    # the padding tail of a packed row (no attention mask here) is not an example
    no_cot = logged_per_step(run, "cot_removal/no_cot_fraction")
    assert no_cot == {s: (1.0 if c == REMOVE_ALL else 0.0) for s, c in enumerate(counts)}
    removed = logged_per_step(run, "cot_removal/removed_tokens_mean")
    assert {s: removed[s] for s in range(last_reset)} == {s: float(counts[s]) for s in range(last_reset)}


def test_lora_accumulation_and_masked_thought(workspace):
    """LoRA, gradient accumulation 2 over 9 micro-batches an epoch (steps of 2, 2, 2, 2, 1),
    Δ = 3 (a new token every 3 micro-batches, i.e. mid-step): both micro-batches of a step
    use the count of its first one, resets follow, and Masked Thought then corrupts only
    trained tokens of what remains (prompts intact, labels hold the kept CoT exactly)."""
    data = workspace.root / "mult3_36.txt"
    write_lines(data, workspace.data.read_text().splitlines()[:36])
    run = train(
        workspace,
        "lora_accum",
        data=data,
        adapter="lora",
        lora_r=4,
        lora_alpha=8,
        lora_dropout=0.0,
        lora_target_linear=True,
        gradient_accumulation_steps=2,
        max_steps=10,
        num_epochs=2,
        cot_removal={"tokens_per_epoch": 3, "smoothing_lambda": None, "side": "left"},
        masked_thought={"ratio": 0.5, "warmup": 0, "replacement": "random"},
    )
    assert run.trainer.micro_batches_per_epoch == 9
    counts, _ = expected_counts(9, 2, 3, steps=10)
    assert counts == [0, 0, 1, 2, 2, 3, 3, 4, 5, 5]
    training_steps = [step for step, training in run.forward_steps if training]
    assert training_steps == [0, 0, 1, 1, 2, 2, 3, 3, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9]
    # prompts are looked up verbatim (so unmasked) and labels hold exactly the kept CoT
    assert check_exact_removal(run, workspace.table, counts, "left", None, masked=True) == 72
    masked = trained = masked_in_cot = 0
    for forward, (step, training) in zip(run.forwards, run.forward_steps):
        if not training:
            continue
        for input_ids, labels, _ in examples_in(forward):
            cot, rest, kept, _ = split_example(workspace.table, input_ids, labels)
            start = len(input_ids) - len(rest) - len(kept)
            # the prompt was found verbatim in the table: only trained positions can differ
            differs = [i for i in range(len(input_ids)) if input_ids[i] != labels[i] and labels[i] != IGNORE_INDEX]
            masked += len(differs)
            trained += len(kept) + len(rest)
            masked_in_cot += sum(i < start + len(kept) for i in differs)
    assert 0.4 < masked / trained < 0.6
    assert masked_in_cot > 0
    assert "lora_" in run.adam_parameter
    assert run.adam_steps == dict(enumerate(expected_adam_steps(counts)))
    assert list(run.adam_steps.values()) == [1, 2, 1, 1, 2, 1, 2, 1, 1, 2]
    assert logged_per_step(run, "cot_removal/scheduled") == dict(enumerate(counts))
    assert set(logged_per_step(run, "masked_thought/rate").values()) == {0.5}


def test_smoothing_start_epoch_eval_and_no_reset(workspace):
    """start_epoch 1: the first epoch trains on the full CoT exactly (no smoothing either);
    afterwards λ = 0.5 removes extra tokens per example, even at count 0. Evaluation
    uses the count in force without smoothing. With reset_optimizer false AdamW's step
    never restarts. val_set_size shrinks the train set, and the epoch with it."""
    run = train(
        workspace,
        "smooth_eval",
        max_steps=16,
        num_epochs=2,
        val_set_size=0.2,
        eval_strategy="steps",
        eval_steps=4,
        cot_removal={
            "tokens_per_epoch": 5,
            "smoothing_lambda": 0.5,
            "side": "left",
            "start_epoch": 1,
            "reset_optimizer": False,
        },
    )
    train_rows = len(run.trainer.train_dataset)
    assert train_rows < ROWS
    batches = math.ceil(train_rows / 4)
    assert run.trainer.micro_batches_per_epoch == batches == 10
    counts, full_cot = expected_counts(batches, 1, 5, start_epoch=1, steps=16)
    assert full_cot == [True] * 10 + [False] * 6
    assert counts[10:] == [0, 0, 1, 1, 2, 2]

    extra_removed_at_zero = extra_removed = after = 0
    evaluated = {}
    for forward, (step, training) in zip(run.forwards, run.forward_steps):
        for input_ids, labels, _ in examples_in(forward):
            cot, rest, kept, rest_received = split_example(workspace.table, input_ids, labels)
            assert rest_received == rest
            if not training:
                # evaluation after optimizer step `step - 1` (axolotl also evaluates
                # before the first step): that step's count, no offset
                count = counts[step - 1] if step > 0 else 0
                assert kept == expected_kept(cot, count, "left")
                evaluated[step] = count
            elif full_cot[step]:
                assert kept == cot
            else:
                count = counts[step]
                assert kept == cot[len(cot) - len(kept) :]  # a suffix: removed from the left
                assert len(kept) <= len(cot) - count
                after += 1
                extra_removed += len(kept) < len(cot) - count
                extra_removed_at_zero += count == 0 and len(kept) < len(cot)
    assert evaluated == {0: 0, 4: 0, 8: 0, 12: 0, 16: 2}
    assert after == 6 * 4
    assert extra_removed >= 5
    assert extra_removed_at_zero >= 1
    assert run.adam_steps == {step: step + 1 for step in range(16)}
    assert logged_per_step(run, "cot_removal/scheduled") == {s: counts[s] for s in range(10, 16)}
