"""A removal schedule that never reaches "no CoT" is reported, with settings that fix it.

Case (issue 10): 3x3 multiplication, 20,000 rows, the package's byte-level tokenizer,
`tokens_per_epoch: 3`, `start_epoch: 2`, 14 epochs. The CoT is 49 tokens (48 in the issue, before the official layout counted the space before the second EOS); the count
reaches 36 by the last step, so every example still had CoT when training ended and
`eval --no-cot` scored 0/300 with no `####` written. `schedule` printed "36 CoT tokens
scheduled" and nothing else. Here: the report's numbers against a replay of the
official loop, its fixes applied and re-checked, `schedule` on the case itself, and
the warning at the start of a real `axolotl train` run.
"""

from __future__ import annotations

import math
import random
import re

import pytest
import yaml
from axolotl_run import MASKTHOUGHT_PLUGIN, build_base_model, run_cli, write_config
from paths import REPO_ROOT

from axolotl_maskthought import cli
from axolotl_maskthought.config import CoTRemovalConfig
from axolotl_maskthought.data.files import write_lines
from axolotl_maskthought.data.generators import generate_multiplication
from axolotl_maskthought.engine.cot_lengths import (
    NO_COT_TAIL,
    LengthSummary,
    cot_left_report,
    cot_lengths,
    dataset_cot_lengths,
)
from axolotl_maskthought.ops.schedule import REMOVE_ALL, sample_offsets, smoothing_distribution

ICOT = "axolotl_maskthought.strategies.icot"


# ---- a replay of the official loop -----------------------------------------------------------
def replayed_counts(batches: int, accumulation: int, removal: CoTRemovalConfig, steps: int) -> list[int]:
    """Count in force per optimizer step, replayed micro-batch by micro-batch as the
    official trainer counts (one more every round(batches / Δ) micro-batches after the
    start epochs; every micro-batch when that rounds to 0; the whole CoT once
    remove_all_at is reached), read at each step's first micro-batch (HF chunking:
    ``accumulation`` micro-batches a step, the epoch's last step the remainder), and 0
    while the start epochs last (the trainer removes nothing then)."""
    interval = round(batches / removal.tokens_per_epoch)
    threshold = math.inf if removal.remove_all_at is None else removal.remove_all_at
    per_micro_batch, scheduled, counter = [], 0, 0
    for epoch in range(math.ceil(steps * accumulation / batches) + 1):
        for _ in range(batches):
            if counter == interval or interval == 0:
                scheduled, counter = scheduled + 1, 0
            if epoch >= removal.start_epoch:
                counter += 1
            if scheduled >= threshold:
                scheduled = math.inf
            full_cot = epoch < removal.start_epoch
            per_micro_batch.append(0 if full_cot else REMOVE_ALL if scheduled == math.inf else scheduled)
    firsts = [
        epoch * batches + start
        for epoch in range(len(per_micro_batch) // batches)
        for start in range(0, batches, accumulation)
    ]
    return [per_micro_batch[first] for first in firsts[:steps]]


def clears(count: int, longest: int) -> bool:
    return count == REMOVE_ALL or count >= longest


def tail_start(steps: int) -> int:
    """The step from which a fixed run must have no CoT left."""
    return steps - math.ceil(NO_COT_TAIL * steps)


def fixed(removal: CoTRemovalConfig, key: str, value) -> CoTRemovalConfig:
    return removal.model_copy(update={key.removeprefix("cot_removal."): value})


CASES = [  # batches per epoch, accumulation, Δ, start_epoch, remove_all_at, optimizer steps
    (6, 1, 3, 2, None, 24),
    (7, 2, 2.5, 1, None, 16),
    (10, 1, 4, 0, 30, 20),
    (5, 3, 1, 0, None, 10),
    (12, 4, 8, 1, 5, 9),
    (9, 1, 2, 3, None, 27),  # ends inside the full-CoT epochs
    (4, 1, 16, 0, None, 8),  # Δ above the epoch: the official one-per-micro-batch quirk
    (10, 1, 2, 8, None, 200),  # a faster pace or fewer full-CoT epochs also fix it
    (9, 2, 1, 2, None, 80),
]


@pytest.mark.parametrize("batches, accumulation, delta, start_epoch, remove_all_at, steps", CASES)
def test_report_matches_a_replay_and_every_fix_clears_the_longest_cot(
    batches, accumulation, delta, start_epoch, remove_all_at, steps
):
    removal = CoTRemovalConfig(
        tokens_per_epoch=delta, start_epoch=start_epoch, remove_all_at=remove_all_at, smoothing_lambda=None
    )
    lengths = random.Random(batches * 100 + steps).choices(range(0, 31), k=50) + [30]
    report = cot_left_report(lengths, removal, steps, accumulation, batches, num_epochs=steps / batches)

    counts = replayed_counts(batches, accumulation, removal, steps)
    final = counts[-1]
    assert (report.final_step, report.final_count) == (steps - 1, final)
    assert report.with_cot_left == sum(1 for length in lengths if final != REMOVE_ALL and length > final)
    first_clear = next((step for step, count in enumerate(counts) if clears(count, 30)), None)
    assert report.no_cot_from_step == first_clear
    assert report.smoothed_share is None  # smoothing off
    if report.with_cot_left == 0:
        assert report.fixes == () and not any(line.startswith("WARNING") for line in report.lines())
        return
    assert report.lines()[-1].startswith("WARNING") and report.target_step == tail_start(steps)
    keys = [fix.key for fix in report.fixes]
    assert "num_epochs" in keys and len(set(keys)) == len(keys)
    for fix in report.fixes:
        if fix.key == "num_epochs":  # the same pace, a longer run of whole epochs
            per_epoch = math.ceil(batches / accumulation)
            run = fix.value * per_epoch
            again = cot_left_report(lengths, removal, run, accumulation, batches)
            shorter = cot_left_report(lengths, removal, run - per_epoch, accumulation, batches)
        else:
            again = cot_left_report(lengths, fixed(removal, fix.key, fix.value), steps, accumulation, batches)
            # the least change: one token an epoch less, or a K / a start epoch one higher, falls short
            nearer = fix.value - 1 if fix.key == "cot_removal.tokens_per_epoch" else fix.value + 1
            shorter = cot_left_report(lengths, fixed(removal, fix.key, nearer), steps, accumulation, batches)
        assert again.with_cot_left == 0 and again.no_cot_from_step <= again.target_step, fix
        assert shorter.with_cot_left or shorter.no_cot_from_step > shorter.target_step, f"{fix} is not the least change"
        assert f"`{fix.key}: {fix.value}`" in report.warning()


def test_the_issue_case_in_numbers():
    # 20,000 rows at micro-batch 32: 625 micro-batches per epoch, 14 epochs, 48-token CoTs
    removal = CoTRemovalConfig(tokens_per_epoch=3, start_epoch=2)
    report = cot_left_report([48] * 20_000, removal, 14 * 625, 1, 625, num_epochs=14)
    assert (report.final_count, report.with_cot_left, report.share_with_cot_left) == (36, 20_000, 1.0)
    assert report.smoothed_share == pytest.approx(1.0, abs=1e-6)  # λ 4: never 12 extra tokens
    assert {fix.key: fix.value for fix in report.fixes} == {
        # round(625 / 5) = 125 micro-batches a token: 48 by micro-batch 1250 + 6000 < step 7875
        "cot_removal.tokens_per_epoch": 5,
        # the 48th token at micro-batch 1250 + 48 x 208 = 11234, with 10% of the run after it
        "num_epochs": 20,
        "cot_removal.remove_all_at": (7875 - 1250) // 208,
    }


def test_smoothed_share_agrees_with_drawn_offsets():
    import torch

    removal = CoTRemovalConfig(tokens_per_epoch=4, smoothing_lambda=0.3)
    lengths = random.Random(0).choices(range(0, 20), k=400)
    report = cot_left_report(lengths, removal, 20, 1, 10)  # one token every round(10 / 4) = 2 micro-batches
    assert report.final_count == 9
    generator = torch.Generator().manual_seed(0)
    probs = smoothing_distribution(0.3)
    draws = 200
    left = 0
    for length in lengths:
        offsets = sample_offsets(draws, probs, generator)
        left += int((report.final_count + offsets < length).sum())
    assert report.smoothed_share == pytest.approx(left / (draws * len(lengths)), abs=0.01)
    assert report.smoothed_share < report.share_with_cot_left


def test_length_summary_is_nearest_rank():
    import numpy as np

    lengths = random.Random(1).choices(range(0, 90), k=1001)
    summary = LengthSummary.of(lengths)
    expected = [int(np.percentile(lengths, q, method="inverted_cdf")) for q in (0, 10, 50, 90, 100)]
    assert [tokens for _, tokens in summary.percentiles] == expected
    assert summary.empty == lengths.count(0) and summary.maximum == max(lengths)
    assert LengthSummary.of([]).text() == "no examples"


def test_dataset_lengths_follow_row_selection():
    from datasets import Dataset

    masks = [[0] * rng + [1] * (rng % 7) + [0, 2] for rng in range(40)]
    dataset = Dataset.from_dict({"input_ids": [[1] * len(m) for m in masks], "cot_mask": masks})
    assert dataset_cot_lengths(dataset) == cot_lengths(masks) == [rng % 7 + 1 for rng in range(40)]
    picked = dataset.shuffle(seed=0).select(range(5, 25))  # an indices mapping over the table
    assert dataset_cot_lengths(picked) == cot_lengths(picked["cot_mask"])
    sliced = dataset.select(range(7, 30))  # a contiguous slice of the table
    assert dataset_cot_lengths(sliced) == cot_lengths(sliced["cot_mask"]) == [rng % 7 + 1 for rng in range(7, 30)]
    assert dataset_cot_lengths(sliced.to_list()) == cot_lengths(sliced["cot_mask"])  # rows as dicts


def test_arrow_lengths_of_a_sliced_list_array():
    import pyarrow as pa

    class ArrowColumn:  # what `with_format("arrow")` can hand back: a slice of a longer list array
        def with_format(self, kind):
            return {"cot_mask": pa.chunked_array([pa.array([[1], [1, 1, 0], [1, 1, 1], [0]]).slice(1)])}

    assert dataset_cot_lengths(ArrowColumn()) == [2, 3, 0]


# ---- `schedule` on the issue's case ---------------------------------------------------------------
def _schedule(capsys, config_path, *extra) -> str:
    assert cli.main(["schedule", str(config_path), *map(str, extra)]) == 0
    return capsys.readouterr().out


@pytest.fixture(scope="module")
def issue_case(tmp_path_factory):
    from axolotl_maskthought.toy.tiny import build_tokenizer

    root = tmp_path_factory.mktemp("issue_case")
    lines = generate_multiplication(3, 3, 20_000, seed=0)
    write_lines(root / "train.txt", lines)
    tokenizer = build_tokenizer([line.replace("||", " ") for line in lines[:2000]], vocab_size=256)
    tokenizer.save_pretrained(root / "tokenizer")
    config = {
        "base_model": str(root / "tokenizer"),
        "datasets": [{"path": str(root / "train.txt"), "type": ICOT}],
        "sequence_len": 512,
        "micro_batch_size": 32,
        "num_epochs": 14,
        "cot_removal": {"tokens_per_epoch": 3, "start_epoch": 2},
    }
    return root, config


def test_schedule_reports_cot_left_and_fixes_that_work(issue_case, capsys):
    root, config = issue_case
    path = root / "case.yml"
    path.write_text(yaml.safe_dump(config))
    out = _schedule(capsys, path)
    assert "CoT lengths: tokenized all 20000 rows with the tokenizer of" in out
    assert (
        "CoT lengths of the training data: min 49, p10 49, median 49, p90 49, max 49 tokens over 20000 examples" in out
    )
    assert (
        "at the last optimizer step (8749) 36 CoT tokens scheduled for removal: "
        "20000 of 20000 examples (100.0%) still have CoT left"
    ) in out
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    shown = readme[readme.index("```text\nCoT lengths of the training data") :].split("```")[1]
    assert shown.removeprefix("text\n") in out, "the README's example is not what `schedule` prints"
    warning = out[out.index("WARNING") :]
    fixes = dict(re.findall(r"`([a-z_.]+): (\d+)`", warning))
    assert set(fixes) == {"cot_removal.tokens_per_epoch", "num_epochs", "cot_removal.remove_all_at"}

    for key, value in fixes.items():
        changed = yaml.safe_load(yaml.safe_dump(config))
        block = changed["cot_removal"] if key.startswith("cot_removal.") else changed
        block[key.removeprefix("cot_removal.")] = int(value)
        fixed_path = root / f"fixed-{key}.yml"
        fixed_path.write_text(yaml.safe_dump(changed))
        again = _schedule(capsys, fixed_path, "--cot-rows", 300)
        assert "a random sample of 300 of 20000 rows" in again
        assert "0 of 300 examples (0.0%) still have CoT left" in again and "WARNING" not in again, key
        tail = int(re.search(r"the last (\d+) of (\d+) optimizer steps train without CoT", again).group(1))
        steps = int(re.search(r"optimizer steps: (\d+)", again).group(1))
        assert tail >= NO_COT_TAIL * steps, key


def test_schedule_says_when_lengths_cannot_be_computed(issue_case, tmp_path, capsys):
    root, config = issue_case
    short = tmp_path / "short.txt"
    write_lines(short, generate_multiplication(2, 2, 6, seed=0) + generate_multiplication(4, 4, 4, seed=0))
    cases = {
        "no_tokenizer": ({**config, "base_model": str(tmp_path / "absent")}, "the tokenizer could not be loaded"),
        "hub_data": (
            {**config, "datasets": [{"path": "org/some-dataset", "type": ICOT}]},
            "`datasets[0]` is not a local file",
        ),
    }
    for name, (changed, reason) in cases.items():
        path = tmp_path / f"{name}.yml"
        path.write_text(yaml.safe_dump(changed))
        out = _schedule(capsys, path, "--dataset-size", 64)
        assert f"CoT lengths: not computed: {reason}" in out, out[-500:]
        assert "is not checked" in out

    # rows longer than sequence_len are left out, as axolotl drops them
    path = tmp_path / "short.yml"
    path.write_text(yaml.safe_dump({**config, "sequence_len": 60, "datasets": [{"path": str(short), "type": ICOT}]}))
    out = _schedule(capsys, path)
    assert "4 longer than sequence_len 60 left out, as axolotl drops them" in out
    assert "tokens over 6 examples" in out


# ---- the start of `axolotl train` ---------------------------------------------------------------
def test_train_warns_at_start_as_schedule_does(tmp_path, capsys):
    """A real, tiny `axolotl train` of the issue's settings: 48 rows, 6 micro-batches an
    epoch, 4 epochs, Δ 3 after 2 full-CoT epochs: 5 of 49 CoT tokens by the last step."""
    lines = generate_multiplication(3, 3, 48, seed=3)
    data = tmp_path / "train.txt"
    write_lines(data, lines)
    base = build_base_model(
        tmp_path / "model", [line.replace("||", " ") for line in lines], vocab_size=256, hidden=32, layers=1, heads=2
    )
    config = write_config(
        tmp_path / "run.yml",
        base,
        [{"path": str(data), "type": ICOT}],
        tmp_path / "out",
        plugins=[MASKTHOUGHT_PLUGIN],
        max_steps=None,
        num_epochs=4,
        micro_batch_size=8,
        cot_removal={"tokens_per_epoch": 3, "start_epoch": 2},
        logging_steps=100,
    )
    train = run_cli(["train", config, "--launcher", "python"], cwd=tmp_path)
    assert train.returncode == 0, train.stdout[-3000:]
    out = _schedule(capsys, config)
    report = out[out.index("CoT lengths of the training data") :].splitlines()
    assert (
        report[0]
        == "CoT lengths of the training data: min 49, p10 49, median 49, p90 49, max 49 tokens over 48 examples"
    )
    assert report[1].startswith(
        "at the last optimizer step (23) 5 CoT tokens scheduled for removal: "
        "48 of 48 examples (100.0%) still have CoT left"
    )
    assert "`num_epochs: 21` (now 4)" in out and "`cot_removal.remove_all_at: 4` (now null)" in out
    assert "(now null), a token count: the whole CoT goes once 4 tokens are removed" in out
    for line in report:  # the same report, logged when training began
        assert line.removeprefix("WARNING: ") in train.stdout, line
    assert "[WARNING]" in train.stdout.split("CoT left in 100.0%")[0].splitlines()[-1]


def test_a_loss_gate_is_reported_as_its_worst_case():
    # the former (gated) 3x3 recipe: 25-token CoTs, 625 micro-batches an epoch, the gate from step 3125, 40,000 steps
    removal = CoTRemovalConfig(start_step=3125, loss_gate={"min_steps": 300, "max_steps": 2000, "recovery": 0.8})
    report = cot_left_report([25] * 20_000, removal, 40_000, 1, 625, length_setting="max_steps")
    assert report.final_count == (39_999 - 3125) // 2000  # the latest bound: 18 tokens
    assert "if every token waits `cot_removal.loss_gate.max_steps` (2000, the latest bound)" in report.lines()[1]
    assert "this is the worst case" in report.warning()
    # a tighter cap forces tokens out before the loss recovers: offered last, and saying so
    assert [fix.key for fix in report.fixes][-1] == "cot_removal.loss_gate.max_steps"
    assert "before the loss has recovered" in str(report.fixes[-1])
    fixed = cot_left_report([25] * 20_000, CoTRemovalConfig(start_step=3125, steps_per_token=2000), 40_000, 1, 625)
    assert "latest bound" not in "\n".join(fixed.lines()) and "worst case" not in fixed.warning()
