"""Masked Thought maths (axolotl_maskthought.ops.masking) on seeded tensors."""

from __future__ import annotations

import math

import pytest
import torch

from axolotl_maskthought.ops.masking import (
    make_generator,
    mask_rate,
    mask_thought,
    replace_inputs,
    select_positions,
    step_seed,
)

VOCAB = 97
IGNORE = -100


def _batch(rows: int = 64, width: int = 128, prompt: int = 40, seed: int = 0):
    """(input_ids, labels, eligible): a prompt of `prompt` tokens, then a response of
    random length, then padding; labels -100 on prompt and padding."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, VOCAB, (rows, width), generator=generator)
    lengths = torch.randint(prompt + 10, width + 1, (rows,), generator=generator)
    positions = torch.arange(width).expand(rows, width)
    response = (positions >= prompt) & (positions < lengths[:, None])
    labels = torch.where(response, input_ids, torch.full_like(input_ids, IGNORE))
    return input_ids, labels, labels != IGNORE


def _within_three_sigma(selected: int, trials: int, rate: float) -> bool:
    sigma = math.sqrt(trials * rate * (1 - rate))
    return abs(selected - trials * rate) <= 3 * sigma


@pytest.mark.parametrize("rate", [0.05, 0.2, 0.4, 0.9])
def test_realised_fraction_matches_rate_on_eligible_positions(rate: float) -> None:
    input_ids, labels, eligible = _batch()
    positions = select_positions(eligible, rate, make_generator(123, "cpu"))
    trials = int(eligible.sum())
    assert trials > 3000
    assert _within_three_sigma(int(positions.sum()), trials, rate)
    assert not positions[~eligible].any()


def test_rate_zero_and_one() -> None:
    input_ids, labels, eligible = _batch()
    assert not select_positions(eligible, 0.0, make_generator(1, "cpu")).any()
    assert torch.equal(select_positions(eligible, 1.0, make_generator(1, "cpu")), eligible)


@pytest.mark.parametrize("replacement", ["random", "mask_token", "pad"])
def test_ineligible_positions_and_labels_never_change(replacement: str) -> None:
    input_ids, labels, eligible = _batch()
    before_inputs, before_labels = input_ids.clone(), labels.clone()
    masked, positions = mask_thought(
        input_ids, eligible, 0.5, replacement, make_generator(5, "cpu"), vocab_size=VOCAB, replacement_id=VOCAB
    )
    assert torch.equal(masked[~eligible], input_ids[~eligible])
    assert torch.equal(masked[~positions], input_ids[~positions])
    # the inputs are copied, never written in place; labels are not touched
    assert torch.equal(input_ids, before_inputs)
    assert torch.equal(labels, before_labels)
    assert positions[eligible].any()


def test_random_replacement_is_uniform_over_the_vocabulary() -> None:
    input_ids = torch.zeros((200, 200), dtype=torch.long)
    positions = torch.ones_like(input_ids, dtype=torch.bool)
    replaced = replace_inputs(input_ids, positions, "random", vocab_size=VOCAB, generator=make_generator(9, "cpu"))
    assert replaced.dtype == input_ids.dtype
    assert int(replaced.min()) == 0 and int(replaced.max()) == VOCAB - 1
    counts = torch.bincount(replaced.flatten(), minlength=VOCAB).float()
    expected = replaced.numel() / VOCAB
    # chi-square with 96 degrees of freedom: 99.9th percentile ~ 145
    chi_square = float(((counts - expected) ** 2 / expected).sum())
    assert chi_square < 145


def test_random_replacement_changes_a_token_with_probability_one_minus_one_over_vocab() -> None:
    input_ids, labels, eligible = _batch(rows=128, seed=3)
    masked, positions = mask_thought(input_ids, eligible, 0.4, "random", make_generator(11, "cpu"), vocab_size=VOCAB)
    selected = int(positions.sum())
    unchanged = int((masked[positions] == input_ids[positions]).sum())
    assert _within_three_sigma(unchanged, selected, 1 / VOCAB)
    assert torch.equal(masked != input_ids, positions & (masked != input_ids))


@pytest.mark.parametrize("replacement, replacement_id", [("mask_token", 500), ("pad", 2)])
def test_fixed_id_replacements_write_that_id(replacement: str, replacement_id: int) -> None:
    input_ids, labels, eligible = _batch()
    masked, positions = mask_thought(
        input_ids, eligible, 0.3, replacement, make_generator(2, "cpu"), replacement_id=replacement_id
    )
    assert positions.any()
    assert (masked[positions] == replacement_id).all()
    assert torch.equal(masked[~positions], input_ids[~positions])


def test_replacement_arguments_are_required() -> None:
    input_ids, _, eligible = _batch(rows=2)
    with pytest.raises(ValueError, match="vocab_size"):
        replace_inputs(input_ids, eligible, "random")
    with pytest.raises(ValueError, match="replacement_id"):
        replace_inputs(input_ids, eligible, "pad")
    with pytest.raises(ValueError, match="unknown replacement"):
        replace_inputs(input_ids, eligible, "zeros", replacement_id=0)


def test_same_seed_same_masks() -> None:
    input_ids, _, eligible = _batch()
    seed = step_seed(42, rank=0, optimizer_step=17, micro_step=1)
    first = mask_thought(input_ids, eligible, 0.4, "random", make_generator(seed, "cpu"), vocab_size=VOCAB)
    second = mask_thought(input_ids, eligible, 0.4, "random", make_generator(seed, "cpu"), vocab_size=VOCAB)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


@pytest.mark.parametrize(
    "other",
    [
        dict(seed=43, rank=0, optimizer_step=17, micro_step=1),  # run seed
        dict(seed=42, rank=1, optimizer_step=17, micro_step=1),  # data-parallel rank
        dict(seed=42, rank=0, optimizer_step=18, micro_step=1),  # optimizer step
        dict(seed=42, rank=0, optimizer_step=17, micro_step=0),  # micro-batch
    ],
)
def test_masks_depend_on_seed_rank_step_and_micro_batch(other: dict) -> None:
    input_ids, _, eligible = _batch()
    base = step_seed(42, rank=0, optimizer_step=17, micro_step=1)
    changed = step_seed(other["seed"], other["rank"], other["optimizer_step"], other["micro_step"])
    assert base != changed
    first = select_positions(eligible, 0.4, make_generator(base, "cpu"))
    second = select_positions(eligible, 0.4, make_generator(changed, "cpu"))
    agreement = float((first == second)[eligible].float().mean())
    # independent draws agree on 0.4^2 + 0.6^2 = 0.52 of the eligible positions
    assert 0.47 < agreement < 0.57


def test_step_seed_streams_are_independent_and_fit_63_bits() -> None:
    seeds = {step_seed(0, 0, step, micro) for step in range(50) for micro in range(4)}
    assert len(seeds) == 200
    assert all(0 <= seed < 2**63 for seed in seeds)
    assert step_seed(0, 0, 3, 0, "mask") != step_seed(0, 0, 3, 0, "removal")


@pytest.mark.parametrize(
    "step, max_steps, ratio, warmup, expected",
    [
        (0, 100, 0.4, 0.66, 0.0),
        (10, 100, 0.4, 0.66, 0.4 * 10 / 67),
        (33, 100, 0.4, 0.66, 0.4 * 33 / 67),
        (66, 100, 0.4, 0.66, 0.4 * 66 / 67),
        (67, 100, 0.4, 0.66, 0.4),  # reaches the ratio ...
        (99, 100, 0.4, 0.66, 0.4),  # ... and is capped there
        (1, 3, 0.4, 0.25, 0.4 * 1 / 1.75),
        (0, 100, 0.2, 0.0, 0.2),  # no warm-up: full ratio from the first step
        (50, 100, 0.2, 0.0, 0.2),
        (5, 10, 0.3, 1.0, 0.3 * 5 / 11),
    ],
)
def test_warmup_formula(step: int, max_steps: int, ratio: float, warmup: float, expected: float) -> None:
    assert mask_rate(step, max_steps, ratio, warmup) == pytest.approx(expected, abs=1e-12)


def test_warmup_is_monotone_and_capped() -> None:
    rates = [mask_rate(step, 200, 0.4, 0.66) for step in range(200)]
    assert all(b >= a for a, b in zip(rates, rates[1:]))
    assert max(rates) == pytest.approx(0.4)
    assert rates.index(max(rates)) == math.ceil(0.66 * 200 + 1)
