"""Stepwise Internalization schedule maths (``axolotl_maskthought.ops.schedule``).

The reference below is a literal re-enactment of the official training loop
(Deng et al., arXiv 2405.14838): a ``remove_step_counter`` and a
``scheduled_to_remove`` updated once per micro-batch, epoch by epoch, with the
``pretrain_epochs`` gate, the interval-0 quirk and the remove-all jump. The
package's closed forms must agree with it for every micro-batch.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from official_schedule import hf_loop_first_micro_batches, official_loop

from axolotl_maskthought.ops import schedule
from axolotl_maskthought.ops.schedule import REMOVE_ALL

INF = float("inf")


# (batches per epoch, Δ, start_epoch, remove_all_at)
COMBOS = list(
    itertools.product(
        [1, 3, 7, 10, 16, 25],
        [1, 2.5, 3, 4, 8, 16, 40],  # 40 > every B here: interval rounds to 0; 2.5 is non-integer
        [0, 1, 2],
        [None, 0, 1, 5],
    )
)


def test_scheduled_count_matches_official_loop():
    for batches_per_epoch, delta, start_epoch, remove_all_at in COMBOS:
        rows = official_loop(batches_per_epoch, delta, start_epoch, remove_all_at, epochs=4)
        got = [
            schedule.scheduled_count(index, batches_per_epoch, delta, start_epoch, remove_all_at)
            for index in range(len(rows))
        ]
        combo = dict(B=batches_per_epoch, delta=delta, start_epoch=start_epoch, K=remove_all_at)
        assert got == [count for count, _ in rows], combo


def test_reset_rule_matches_official_loop():
    """Resets fire exactly where the official loop replaces its AdamW (micro-batch ≥ 1;
    at micro-batch 0 the optimizer is fresh whatever happens)."""
    for batches_per_epoch, delta, start_epoch, remove_all_at in COMBOS:
        rows = official_loop(batches_per_epoch, delta, start_epoch, remove_all_at, epochs=4)
        counts = [
            schedule.scheduled_count(index, batches_per_epoch, delta, start_epoch, remove_all_at)
            for index in range(len(rows))
        ]
        resets = [schedule.should_reset_optimizer(before, now, False) for before, now in zip(counts, counts[1:])]
        combo = dict(B=batches_per_epoch, delta=delta, start_epoch=start_epoch, K=remove_all_at)
        assert resets == [reset for _, reset in rows[1:]], combo
        assert not any(schedule.should_reset_optimizer(before, now, True) for before, now in zip(counts, counts[1:]))


@pytest.mark.parametrize(
    "batches_per_epoch,delta,start_epoch,remove_all_at,expected",
    [
        # interval round(8/4) = 2: +1 every 2 micro-batches, carried over the epoch boundary
        (8, 4, 0, None, [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]),
        # one full-CoT epoch of 4, then interval round(4/2) = 2
        (4, 2, 1, None, [0, 0, 0, 0, 0, 0, 1, 1, 2, 2, 3, 3]),
        # Δ = 16 > B = 5: interval 0, +1 every micro-batch from the first (official quirk)
        (5, 16, 0, None, [1, 2, 3, 4, 5, 6, 7]),
        (5, 16, 1, None, [1, 2, 3, 4, 5, 6, 7]),
        # K = 3: the count jumps to "all" when it reaches 3
        (3, 3, 0, 3, [0, 1, 2, REMOVE_ALL, REMOVE_ALL, REMOVE_ALL]),
        # K = 0: everything removed from the start
        (4, 8, 0, 0, [REMOVE_ALL] * 5),
        # non-integer Δ: round(10 / 4) = round(2.5) = 2 (Python rounds half to even)
        (10, 4, 0, None, [0, 0, 1, 1, 2, 2, 3]),
        # round(9 / 2.5) = round(3.6) = 4
        (9, 2.5, 0, None, [0, 0, 0, 0, 1, 1, 1, 1, 2]),
    ],
)
def test_scheduled_count_hand_rows(batches_per_epoch, delta, start_epoch, remove_all_at, expected):
    got = [
        schedule.scheduled_count(index, batches_per_epoch, delta, start_epoch, remove_all_at)
        for index in range(len(expected))
    ]
    assert got == expected


def test_steps_per_removed_token():
    assert schedule.steps_per_removed_token(25_250, 8) == 3156  # 808k lines / batch 32
    assert schedule.steps_per_removed_token(10, 4) == 2
    assert schedule.steps_per_removed_token(5, 16) == 0


def test_in_full_cot_epochs():
    assert [schedule.in_full_cot_epochs(i, 4, 2) for i in range(10)] == [True] * 8 + [False] * 2
    assert not schedule.in_full_cot_epochs(0, 4, 0)


@pytest.mark.parametrize("batches_per_epoch", [1, 4, 5, 7, 12])
@pytest.mark.parametrize("accumulation", [1, 2, 3, 8])
def test_first_micro_batch_follows_hf_chunking(batches_per_epoch, accumulation):
    firsts = hf_loop_first_micro_batches(batches_per_epoch, accumulation, epochs=3)
    got = [schedule.first_micro_batch(step, accumulation, batches_per_epoch) for step in range(len(firsts))]
    assert got == firsts
    steps_per_epoch = math.ceil(batches_per_epoch / accumulation)
    assert len(firsts) == 3 * steps_per_epoch


@pytest.mark.parametrize(
    "batches_per_epoch,accumulation,delta,start_epoch,remove_all_at",
    [(7, 2, 3, 0, None), (12, 3, 4, 1, None), (5, 2, 8, 0, None), (10, 4, 2.5, 0, 3), (6, 1, 3, 1, 2)],
)
def test_optimizer_step_count_uses_first_micro_batch(
    batches_per_epoch, accumulation, delta, start_epoch, remove_all_at
):
    firsts = hf_loop_first_micro_batches(batches_per_epoch, accumulation, epochs=3)
    for step, first in enumerate(firsts):
        expected = schedule.scheduled_count(first, batches_per_epoch, delta, start_epoch, remove_all_at)
        assert (
            schedule.optimizer_step_count(step, accumulation, batches_per_epoch, delta, start_epoch, remove_all_at)
            == expected
        )


def test_optimizer_step_count_is_official_schedule_without_accumulation():
    rows = official_loop(10, 4, 1, 4, epochs=3)
    got = [schedule.optimizer_step_count(step, 1, 10, 4, 1, 4) for step in range(len(rows))]
    assert got == [count for count, _ in rows]


def test_optimizer_step_count_hand_rows():
    # B = 7 micro-batches, accumulation 2 -> 4 steps per epoch starting at micro-batches
    # 0, 2, 4, 6 | 7, 9, 11, 13; Δ = 3 -> interval round(7/3) = 2 -> count = first // 2
    got = [schedule.optimizer_step_count(step, 2, 7, 3) for step in range(8)]
    assert got == [0, 1, 2, 3, 3, 4, 5, 6]


# ---- smoothing -----------------------------------------------------------------


def reference_distribution(smoothing_lambda: float, support: int = 100) -> list[float]:
    body = [(1 - math.exp(-smoothing_lambda)) * math.exp(-smoothing_lambda * o) for o in range(support - 1)]
    return body + [1 - sum(body)]


@pytest.mark.parametrize("smoothing_lambda", [4, 1, 0.5, 0.03])
def test_smoothing_distribution_formula(smoothing_lambda):
    probs = schedule.smoothing_distribution(smoothing_lambda)
    assert probs.shape == (100,)
    assert probs.sum().item() == pytest.approx(1.0, abs=1e-12)
    assert probs.tolist() == pytest.approx(reference_distribution(smoothing_lambda), abs=1e-12)
    # the tail mass on 99 is P(o >= 99) of the untruncated geometric law
    assert probs[-1].item() == pytest.approx(math.exp(-99 * smoothing_lambda), rel=1e-9, abs=1e-15)


def test_smoothing_lambda_4_is_nearly_always_zero():
    probs = schedule.smoothing_distribution(4)
    assert probs[0].item() == pytest.approx(0.98168, abs=1e-5)
    assert probs[1].item() == pytest.approx(0.01798, abs=1e-5)


def chi_square(observed: torch.Tensor, probs: torch.Tensor, draws: int, min_expected: float = 10.0):
    """Chi-square statistic and degrees of freedom, bins with small expectation merged
    (walking from offset 0 up; the remainder is merged into the last bin kept)."""
    expected = probs.double() * draws
    observed = observed.double()
    bins_obs, bins_exp = [], []
    acc_obs = acc_exp = 0.0
    for o, e in zip(observed.tolist(), expected.tolist()):
        acc_obs += o
        acc_exp += e
        if acc_exp >= min_expected:
            bins_obs.append(acc_obs)
            bins_exp.append(acc_exp)
            acc_obs = acc_exp = 0.0
    bins_obs[-1] += acc_obs
    bins_exp[-1] += acc_exp
    stat = sum((o - e) ** 2 / e for o, e in zip(bins_obs, bins_exp))
    return stat, len(bins_obs) - 1


def chi2_quantile_9999(dof: int) -> float:
    """0.9999 quantile of chi-square(dof), Wilson-Hilferty approximation (z = 3.719)."""
    scale = 2 / (9 * dof)
    return dof * (1 - scale + 3.719 * math.sqrt(scale)) ** 3


@pytest.mark.parametrize("smoothing_lambda,seed", [(4, 11), (0.5, 12), (0.03, 13)])
def test_sample_offsets_follow_distribution(smoothing_lambda, seed):
    draws = 200_000
    probs = schedule.smoothing_distribution(smoothing_lambda)
    generator = torch.Generator().manual_seed(seed)
    offsets = schedule.sample_offsets(draws, probs, generator)
    assert offsets.dtype == torch.long and offsets.shape == (draws,)
    assert int(offsets.min()) >= 0 and int(offsets.max()) <= 99
    observed = torch.bincount(offsets, minlength=100)
    stat, dof = chi_square(observed, probs, draws)
    assert dof >= 1
    assert stat < chi2_quantile_9999(dof), (stat, dof)
    if smoothing_lambda == 4:
        assert observed[0].item() / draws == pytest.approx(0.9817, abs=0.002)
    if smoothing_lambda == 0.03:
        # the tail bin is exercised: P(99) = e^-2.97 ≈ 0.051
        assert observed[99].item() / draws == pytest.approx(math.exp(-2.97), abs=0.003)


def test_sample_offsets_seeded_and_empty():
    probs = schedule.smoothing_distribution(0.5)
    first = schedule.sample_offsets(50, probs, torch.Generator().manual_seed(3))
    again = schedule.sample_offsets(50, probs, torch.Generator().manual_seed(3))
    other = schedule.sample_offsets(50, probs, torch.Generator().manual_seed(4))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    assert schedule.sample_offsets(0, probs).shape == (0,)
