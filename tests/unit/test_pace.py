"""Removal paces in optimizer steps (issue 16, item 3): ``steps_per_token`` and ``loss_gate``.

The fixed step pace must be the official Δ schedule whenever the two describe the same
pace; the loss gate is checked against a naive replay written here from its definition
(an exponential average restarted at each removal, a threshold at a fraction of the jump),
and against the two criteria the probe found wanting (REFERENCE.md section 5).
"""

from __future__ import annotations

import math

import pytest
from pydantic import ValidationError

from axolotl_maskthought.config import CoTRemovalConfig
from axolotl_maskthought.ops import schedule
from axolotl_maskthought.ops.schedule import REMOVE_ALL, LossGateState, gate_advance, gate_observe, gate_opens


# ---- fixed pace in optimizer steps ------------------------------------------------------------------
@pytest.mark.parametrize(
    "batches_per_epoch,steps_per_token,start_epoch", [(10, 2, 0), (10, 5, 1), (12, 3, 2), (7, 7, 1)]
)
def test_step_pace_is_the_official_schedule_at_the_same_pace(batches_per_epoch, steps_per_token, start_epoch):
    """Δ = B / steps_per_token and start_epoch epochs = the step pace started at start_epoch x B."""
    delta = batches_per_epoch / steps_per_token
    start = schedule.start_optimizer_step(1, batches_per_epoch, start_epoch)
    assert start == start_epoch * batches_per_epoch
    for step in range(6 * batches_per_epoch):
        assert schedule.step_pace_count(step, steps_per_token, start) == schedule.scheduled_count(
            step, batches_per_epoch, delta, start_epoch
        )


def test_step_pace_hand_rows():
    assert [schedule.step_pace_count(s, 3, start_step=2) for s in range(12)] == [0, 0, 0, 0, 0, 1, 1, 1, 2, 2, 2, 3]
    assert [schedule.step_pace_count(s, 2, 0, remove_all_at=2) for s in range(6)] == [0, 0, 1, 1] + [REMOVE_ALL] * 2
    with pytest.raises(ValueError, match="steps_per_token"):
        schedule.step_pace_count(3, 0)


def test_start_step_from_epochs_counts_optimizer_steps():
    # 10 micro-batches, accumulation 4: 3 optimizer steps per epoch (the last one shorter)
    assert schedule.start_optimizer_step(4, 10, start_epoch=2) == 6
    assert schedule.start_optimizer_step(4, 10, start_epoch=2, start_step=5) == 5
    # the boundary is the first step of the epoch: the Δ schedule's full-CoT test agrees
    first = schedule.first_micro_batch(6, 4, 10)
    assert not schedule.in_full_cot_epochs(first, 10, 2)
    assert schedule.in_full_cot_epochs(schedule.first_micro_batch(5, 4, 10), 10, 2)


def test_gated_bounds():
    bounds = [schedule.gated_count_bounds(s, 2, 5, start_step=3) for s in range(16)]
    assert [most for _, most in bounds] == [schedule.step_pace_count(s, 2, 3) for s in range(16)]
    assert [fewest for fewest, _ in bounds] == [schedule.step_pace_count(s, 5, 3) for s in range(16)]
    assert bounds[5] == (0, 1) and bounds[8] == (1, 2) and bounds[13] == (2, 5)


# ---- the gate ----------------------------------------------------------------------------------------
def naive_gate(losses, min_steps, max_steps, recovery, beta, start=0):
    """Replay from the definition: per step, fold the previous step's loss, then decide.

    Returns the count in force at each step.
    """
    counts, count, changed = [], 0, start
    stage: list[float] = []  # losses since the last removal
    before = peak = None
    for step in range(len(losses) + 1):
        if step > 0:
            stage.append(losses[step - 1])
            weights = [beta ** (len(stage) - 1 - i) * (1 - beta) for i in range(len(stage))]
            level = sum(w * x for w, x in zip(weights, stage)) / sum(weights)
            if before is not None:
                peak = level if peak is None else max(peak, level)
        if step == len(losses):
            break
        since = step - changed
        opens = False
        if since >= max_steps:
            opens = since >= min_steps
        elif since >= min_steps:
            opens = before is None or (stage and level <= before + (1 - recovery) * max(0.0, peak - before))
        if opens:
            before = level if stage else None
            count, changed, stage, peak = count + 1, step, [], None
        counts.append(count)
    return counts


def run_gate(losses, min_steps, max_steps, recovery, beta, start=0):
    state, counts = LossGateState(changed_at=start), []
    for step in range(len(losses)):
        if step > 0:
            state = gate_observe(state, losses[step - 1], beta)
        if gate_opens(state, step, min_steps, max_steps, recovery):
            state = gate_advance(state, step)
        counts.append(state.count)
    return counts, state


def test_gate_matches_naive_replay_on_seeded_losses():
    import random

    rng = random.Random(0)
    losses = [abs(1.0 * math.exp(-s / 40) + 0.05 + rng.gauss(0, 0.03)) for s in range(400)]
    for min_steps, max_steps, recovery, beta, start in [
        (5, 30, 0.9, 0.9, 0),
        (10, 10, 0.5, 0.98, 7),
        (1, 50, 1.0, 0.0, 3),
    ]:
        got, _ = run_gate(losses, min_steps, max_steps, recovery, beta, start)
        assert got == naive_gate(losses, min_steps, max_steps, recovery, beta, start)


def test_gate_bounds_hold_and_first_token_goes_at_min_steps():
    never_recovers = [0.1 + 0.05 * step for step in range(200)]  # the loss only ever climbs
    counts, _ = run_gate(never_recovers, 5, 20, 0.9, 0.5)
    changes = [s for s in range(1, len(counts)) if counts[s] > counts[s - 1]]
    assert changes[0] == 5  # first token: min_steps after the start, whatever the loss
    assert all(b - a == 20 for a, b in zip(changes, changes[1:]))  # never recovers: every max_steps
    flat = [0.1] * 200  # no jump at all: each token as soon as allowed
    counts, _ = run_gate(flat, 5, 20, 0.9, 0.5)
    changes = [s for s in range(1, len(counts)) if counts[s] > counts[s - 1]]
    assert all(b - a == 5 for a, b in zip(changes, changes[1:]))


def test_average_restarts_at_each_removal():
    state = LossGateState()
    for loss in (0.1, 0.1, 0.1):
        state = gate_observe(state, loss, 0.98)
    state = gate_advance(state, 3)
    assert state.before == pytest.approx(0.1) and state.level is None
    state = gate_observe(state, 2.0, 0.98)  # bias-corrected: the first value is the shock itself
    assert state.level == pytest.approx(2.0) and state.peak == pytest.approx(2.0)
    assert state.threshold(0.9) == pytest.approx(0.1 + 0.1 * 1.9)
    assert gate_observe(state, math.nan, 0.98) == state  # a non-finite loss is skipped


def _closed_loop(criterion, steps=6000, min_steps=50, max_steps=1000, tokens=8, seed=0):
    """A simulated SI run: each removal sends the loss up by a shock that grows with the token, and the
    model recovers towards a floor that rises with the tokens removed; ``criterion(state, step)``
    says whether the next token goes. Returns the steps at which tokens went."""
    import random

    rng = random.Random(seed)
    state, gone, loss_target, loss = LossGateState(), [], 0.05, 0.05
    for step in range(steps):
        if step > 0:
            state = gate_observe(state, max(0.0, loss + rng.gauss(0, 0.01)), 0.98)
        since = step - state.changed_at
        if state.count < tokens and since >= min_steps and (since >= max_steps or criterion(state, step)):
            state = gate_advance(state, step)
            gone.append(step)
            loss += 0.1 + 0.1 * state.count  # the shock: the last tokens are the hard ones
            loss_target = 0.05 + 0.04 * state.count  # the floor rises as the CoT goes
        loss = loss_target + (loss - loss_target) * 0.99  # recovery, about 100 steps per e-fold
    return gone


def test_fraction_of_jump_does_not_stall_where_an_absolute_threshold_does():
    """A floor that rises 0.04 per token, shocks of 0.2 and more: an absolute threshold of 0.1 (the
    probe's) stalls once the floor passes it, every later token waiting for max_steps; the gate at
    recovery 0.8 waits for each recovery (~160+ steps at 1%/step) and never for max_steps."""
    absolute = _closed_loop(lambda state, step: state.level is not None and state.level < 0.1)
    assert [b - a for a, b in zip(absolute, absolute[1:])][2:] == [1000] * (len(absolute) - 3)
    gated = _closed_loop(lambda state, step: gate_opens(state, step, 50, 1000, 0.8))
    gaps = [b - a for a, b in zip(gated, gated[1:])]
    assert len(gated) == 8 and max(gaps) < 1000 and min(gaps) > 100


def test_a_ratio_to_the_last_level_opens_without_any_recovery():
    """The probe's relative gate (level <= R x before) lets a token go although the model learned
    nothing since the last removal, whenever the shock is under (R - 1) x the level: the loss floor
    then climbs by up to a factor R per token. The fraction-of-jump gate waits (here, for max_steps)."""
    beta, min_steps, max_steps = 0.9, 20, 200
    state = LossGateState()
    for _ in range(50):
        state = gate_observe(state, 1.0, beta)
    state = gate_advance(state, 50)
    opened_ratio = opened_gate = None
    for step in range(51, 400):
        state = gate_observe(state, 1.15, beta)  # the shock, and no recovery at all
        if opened_ratio is None and step - 50 >= min_steps and state.level <= 1.2 * state.before:
            opened_ratio = step
        if opened_gate is None and gate_opens(state, step, min_steps, max_steps, 0.8):
            opened_gate = step
    assert opened_ratio == 50 + min_steps
    assert opened_gate == 50 + max_steps


# ---- config ----------------------------------------------------------------------------------------
def test_one_pace_and_one_start():
    assert CoTRemovalConfig().tokens_per_epoch == 8 and CoTRemovalConfig().pace == "tokens_per_epoch"
    assert CoTRemovalConfig(steps_per_token=5).tokens_per_epoch is None
    with pytest.raises(ValidationError, match=r"`cot_removal.tokens_per_epoch` and `cot_removal.steps_per_token`"):
        CoTRemovalConfig(tokens_per_epoch=8, steps_per_token=5)
    with pytest.raises(ValidationError, match=r"`cot_removal.steps_per_token` and `cot_removal.loss_gate`"):
        CoTRemovalConfig(steps_per_token=5, loss_gate={"min_steps": 1, "max_steps": 2})
    with pytest.raises(ValidationError, match=r"`cot_removal.start_step` counts optimizer steps"):
        CoTRemovalConfig(start_step=3)
    with pytest.raises(ValidationError, match=r"`cot_removal.start_step` and `cot_removal.start_epoch`"):
        CoTRemovalConfig(steps_per_token=5, start_step=3, start_epoch=1)
    with pytest.raises(ValidationError, match=r"`cot_removal.loss_gate.max_steps` \(3\) must be at least"):
        CoTRemovalConfig(loss_gate={"min_steps": 5, "max_steps": 3})
    with pytest.raises(ValidationError, match="steps_per_token"):
        CoTRemovalConfig(steps_per_token=0)


@pytest.mark.parametrize(
    "block",
    [{}, {"steps_per_token": 500, "start_step": 2000}, {"loss_gate": {"min_steps": 100, "max_steps": 1000}}],
)
def test_block_survives_axolotls_round_trip(block):
    """axolotl dumps the validated block with exclude_none and the trainer validates it again."""
    config = CoTRemovalConfig(**block)
    again = CoTRemovalConfig(**config.model_dump(exclude_none=True))
    assert again == config and again.pace == config.pace


def test_start_step_after_the_last_step_is_refused_before_the_model_loads():
    from axolotl_maskthought.adapters.axolotl.validation import check_config

    data = {"datasets": [{"path": "x.txt", "type": "axolotl_maskthought.strategies.icot"}], "max_steps": 100}
    with pytest.raises(ValueError, match=r"`cot_removal.start_step: 100` with `max_steps: 100`"):
        check_config({**data, "cot_removal": {"steps_per_token": 5, "start_step": 100}})
    check_config({**data, "cot_removal": {"steps_per_token": 5, "start_step": 99, "reset_optimizer": False}})
