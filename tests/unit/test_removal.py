"""CoT removal on collated batches (``axolotl_maskthought.ops.removal.remove_cot``).

Random seeded batches, padded or packed like axolotl's collators lay them out,
are compared with a naive per-example reference written with Python lists.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest
import torch

from axolotl_maskthought.ops.removal import remove_cot
from axolotl_maskthought.ops.schedule import REMOVE_ALL, sample_offsets, smoothing_distribution

EOS, PAD = 2, 0
IGNORE = -100


@dataclass
class Example:
    """One tokenized example: prompt (ends with the first EOS), CoT, rest (EOS #### answer EOS)."""

    prompt: list[int]
    cot: list[int]
    rest: list[int]

    @property
    def input_ids(self) -> list[int]:
        return self.prompt + self.cot + self.rest

    @property
    def labels(self) -> list[int]:
        return [IGNORE] * len(self.prompt) + self.cot + self.rest

    @property
    def cot_mask(self) -> list[int]:
        return [0] * len(self.prompt) + [1] * len(self.cot) + [0] * len(self.rest)


def random_example(rng: random.Random, max_cot: int = 10, cot_len: int | None = None) -> Example:
    def tokens(n):
        return [rng.randrange(5, 60) for _ in range(n)]

    cot_len = rng.randint(0, max_cot) if cot_len is None else cot_len
    return Example(
        prompt=tokens(rng.randint(1, 5)) + [EOS],
        cot=tokens(cot_len),
        rest=[EOS] + tokens(rng.randint(1, 3)) + [EOS],
    )


def collate(rows: list[list[Example]], position_ids: bool = True, padding_side: str = "right") -> dict:
    """Rows of packed examples, as axolotl's V2 collator builds them: concatenated,
    attention_mask = segment id (1, 2, ...), position_ids restarting at 0 per example,
    padding with attention_mask 0, labels -100 and position_ids 0, 1, 2, ...
    A row with one example is the unpacked, padded case (attention_mask 1)."""
    width = max(sum(len(e.input_ids) for e in row) for row in rows)
    columns = {"input_ids": [], "labels": [], "attention_mask": [], "position_ids": [], "cot_mask": []}
    for row in rows:
        values = {key: [] for key in columns}
        for segment, example in enumerate(row, start=1):
            values["input_ids"] += example.input_ids
            values["labels"] += example.labels
            values["attention_mask"] += [segment] * len(example.input_ids)
            values["position_ids"] += list(range(len(example.input_ids)))
            values["cot_mask"] += example.cot_mask
        pad = width - len(values["input_ids"])
        padding = {
            "input_ids": [PAD] * pad,
            "labels": [IGNORE] * pad,
            "attention_mask": [0] * pad,
            "position_ids": list(range(pad)),
            "cot_mask": [0] * pad,
        }
        for key in columns:
            columns[key].append(values[key] + padding[key] if padding_side == "right" else padding[key] + values[key])
    batch = {key: torch.tensor(value, dtype=torch.long) for key, value in columns.items()}
    if not position_ids:
        del batch["position_ids"]
    return batch


def reference_remove(
    rows: list[list[Example]],
    to_remove: list[int],
    side: str,
    keep_position: bool,
    padding_side: str = "right",
    with_position_ids: bool = True,
):
    """Naive per-example removal. ``to_remove`` gives scheduled + offset per example
    (row-major order). Returns (batch as lists, removed per example, CoT left per example)."""
    out_rows, removed, left = [], [], []
    flat = iter(to_remove)
    for row in rows:
        values = {"input_ids": [], "labels": [], "attention_mask": [], "position_ids": [], "cot_mask": []}
        for segment, example in enumerate(row, start=1):
            n = min(next(flat), len(example.cot))
            drop = set(range(n)) if side == "left" else set(range(len(example.cot) - n, len(example.cot)))
            kept_index = [
                i
                for i in range(len(example.input_ids))
                if not (
                    len(example.prompt) <= i < len(example.prompt) + len(example.cot)
                    and (i - len(example.prompt)) in drop
                )
            ]
            values["input_ids"] += [example.input_ids[i] for i in kept_index]
            values["labels"] += [example.labels[i] for i in kept_index]
            values["cot_mask"] += [example.cot_mask[i] for i in kept_index]
            values["attention_mask"] += [segment] * len(kept_index)
            if keep_position:  # the official trainer: arange over the cut sequence, + n from `removal_from - 1` on
                removal_from = len(example.prompt) + (0 if side == "left" else len(example.cot) - n)
                values["position_ids"] += [j + (n if j >= removal_from - 1 else 0) for j in range(len(kept_index))]
            else:
                values["position_ids"] += list(range(len(kept_index)))
            removed.append(n)
            left.append(len(example.cot) - n)
        out_rows.append(values)
    width = max(len(values["input_ids"]) for values in out_rows)
    batch = {key: [] for key in out_rows[0]}
    for values in out_rows:
        pad = width - len(values["input_ids"])
        padding = {
            "input_ids": [PAD] * pad,
            "labels": [IGNORE] * pad,
            "attention_mask": [0] * pad,
            "position_ids": list(range(pad)),
            "cot_mask": [0] * pad,
        }
        for key in batch:
            batch[key].append(values[key] + padding[key] if padding_side == "right" else padding[key] + values[key])
    if not with_position_ids and not keep_position:
        del batch["position_ids"]
    return batch, removed, left


def as_lists(batch: dict[str, torch.Tensor]) -> dict[str, list]:
    return {key: value.tolist() for key, value in batch.items()}


def run(rows, scheduled, side="left", keep_position=False, position_ids=True, padding_side="right", **kwargs):
    batch = collate(rows, position_ids=position_ids, padding_side=padding_side)
    return remove_cot(
        batch,
        batch["cot_mask"],
        scheduled,
        side,
        keep_position=keep_position,
        pad_token_id=PAD,
        padding_side=padding_side,
        **kwargs,
    )


# ---- hand-written cases ------------------------------------------------------------


def test_left_and_right_on_one_example():
    example = Example(prompt=[7, 8, EOS], cot=[11, 12, 13, 14], rest=[EOS, 30, 31, EOS])
    left = run([[example]], 3, "left", position_ids=False)
    assert left.batch["input_ids"].tolist() == [[7, 8, EOS, 14, EOS, 30, 31, EOS]]
    assert left.batch["labels"].tolist() == [[IGNORE, IGNORE, IGNORE, 14, EOS, 30, 31, EOS]]
    assert left.batch["cot_mask"].tolist() == [[0, 0, 0, 1, 0, 0, 0, 0]]
    right = run([[example]], 3, "right", position_ids=False)
    assert right.batch["input_ids"].tolist() == [[7, 8, EOS, 11, EOS, 30, 31, EOS]]
    assert left.removed_per_example.tolist() == right.removed_per_example.tolist() == [3]
    assert left.cot_left_per_example.tolist() == [1]
    assert not left.all_cot_removed


@pytest.mark.parametrize("scheduled", [4, 5, 99, REMOVE_ALL])
def test_clipped_to_cot_length_separators_kept(scheduled):
    example = Example(prompt=[7, 8, EOS], cot=[11, 12, 13, 14], rest=[EOS, 30, EOS])
    for side in ("left", "right"):
        result = run([[example]], scheduled, side)
        # question, both separators and the answer stay: `question eos eos #### answer eos`
        assert result.batch["input_ids"].tolist() == [[7, 8, EOS, EOS, 30, EOS]]
        assert result.batch["labels"].tolist() == [[IGNORE, IGNORE, IGNORE, EOS, 30, EOS]]
        assert result.batch["position_ids"].tolist() == [[0, 1, 2, 3, 4, 5]]
        assert result.removed_per_example.tolist() == [4]
        assert result.all_cot_removed
        assert result.stats() == {"removed_tokens_mean": 4.0, "no_cot_fraction": 1.0}


def test_zero_removes_nothing():
    rng = random.Random(0)
    rows = [[random_example(rng)] for _ in range(4)]
    batch = collate(rows)
    result = remove_cot(batch, batch["cot_mask"], 0, "left", pad_token_id=PAD)
    assert as_lists(result.batch) == as_lists(batch)
    assert result.removed_per_example.tolist() == [0] * 4


def test_invalid_side():
    batch = collate([[Example([1, EOS], [5], [EOS, 6, EOS])]])
    with pytest.raises(ValueError, match="`side`"):
        remove_cot(batch, batch["cot_mask"], 1, "middle")


def test_padded_batch_trailing_padding_trimmed():
    short = Example(prompt=[7, EOS], cot=[11, 12], rest=[EOS, 30, EOS])
    long = Example(prompt=[7, EOS], cot=[11, 12, 13, 14, 15, 16], rest=[EOS, 30, EOS])
    result = run([[short], [long]], 2, "left")
    # the long row had 11 tokens; with 2 CoT tokens gone the batch is 9 wide
    assert result.batch["input_ids"].tolist() == [
        [7, EOS, EOS, 30, EOS, PAD, PAD, PAD, PAD],
        [7, EOS, 13, 14, 15, 16, EOS, 30, EOS],
    ]
    assert result.batch["attention_mask"].tolist() == [[1] * 5 + [0] * 4, [1] * 9]
    assert result.batch["position_ids"].tolist() == [[0, 1, 2, 3, 4, 0, 1, 2, 3], list(range(9))]
    assert result.removed_per_example.tolist() == [2, 2]
    assert result.cot_left_per_example.tolist() == [0, 4]
    assert result.stats() == {"removed_tokens_mean": 2.0, "no_cot_fraction": 0.5}
    assert not result.all_cot_removed


def test_packed_row_positions_rebuilt_per_segment():
    first = Example(prompt=[7, EOS], cot=[11, 12, 13], rest=[EOS, 30, EOS])
    second = Example(prompt=[8, 9, EOS], cot=[21], rest=[EOS, 40, EOS])
    third = Example(prompt=[6, EOS], cot=[31, 32, 33, 34], rest=[EOS, 50, EOS])
    result = run([[first, second], [third]], 2, "left")
    assert result.batch["input_ids"].tolist() == [
        [7, EOS, 13, EOS, 30, EOS, 8, 9, EOS, EOS, 40, EOS],
        [6, EOS, 33, 34, EOS, 50, EOS, PAD, PAD, PAD, PAD, PAD],
    ]
    assert result.batch["attention_mask"].tolist() == [[1] * 6 + [2] * 6, [1] * 7 + [0] * 5]
    assert result.batch["position_ids"].tolist() == [
        [0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4, 5],
        [0, 1, 2, 3, 4, 5, 6, 0, 1, 2, 3, 4],
    ]
    assert result.removed_per_example.tolist() == [2, 1, 2]
    assert result.cot_left_per_example.tolist() == [1, 0, 2]


def test_keep_position_keeps_original_ids():
    """Tokens after the removed CoT keep their original ids; the token just before it (the
    separator, left; the last kept CoT token, right) moves onto the last removed token's place,
    as the official trainer shifts ``position_ids[removal_from - 1:]`` (fidelity run, issue 16)."""
    first = Example(prompt=[7, EOS], cot=[11, 12, 13], rest=[EOS, 30, EOS])
    second = Example(prompt=[8, EOS], cot=[21, 22], rest=[EOS, 40, EOS])
    result = run([[first, second]], 2, "left", keep_position=True)
    assert result.batch["input_ids"].tolist() == [[7, EOS, 13, EOS, 30, EOS, 8, EOS, EOS, 40, EOS]]
    assert result.batch["position_ids"].tolist() == [[0, 3, 4, 5, 6, 7, 0, 3, 4, 5, 6]]
    # without position ids in the batch, the original columns are the positions
    alone = run([[first]], 2, "right", keep_position=True, position_ids=False)
    assert alone.batch["input_ids"].tolist() == [[7, EOS, 11, EOS, 30, EOS]]
    assert alone.batch["position_ids"].tolist() == [[0, 1, 4, 5, 6, 7]]
    # nothing removed: nothing moves
    none = run([[first]], 0, "left", keep_position=True, position_ids=False)
    assert none.batch["position_ids"].tolist() == [list(range(8))]


def test_keep_position_separator_tells_how_many_were_removed():
    """The official layout: with n CoT tokens removed from the left, the first separator sits at
    ``len(question) + n``, so the model can read n off its position (with smoothing, n varies per
    example); the next token keeps its original place. Our first implementation left the
    separator at ``len(question)``, whatever n (bench/RESULTS.md §8)."""
    rng = random.Random(7)
    for _ in range(20):
        example = random_example(rng, cot_len=rng.randint(1, 8))
        n = rng.randint(0, len(example.cot))
        result = run([[example]], n, "left", keep_position=True, position_ids=False)
        positions = result.batch["position_ids"][0].tolist()
        separator = len(example.prompt) - 1
        assert positions[:separator] == list(range(separator))
        assert positions[separator] == separator + n
        assert positions[separator + 1 :] == list(range(separator + n + 1, len(example.input_ids)))


# ---- random batches against the reference -------------------------------------------


@pytest.mark.parametrize("trial", range(40))
def test_random_batches_match_reference(trial):
    rng = random.Random(1000 + trial)
    packed = trial % 2 == 1
    rows = [[random_example(rng) for _ in range(rng.randint(1, 4) if packed else 1)] for _ in range(rng.randint(1, 5))]
    scheduled = rng.choice([0, 1, 2, 3, 5, 8, 12, REMOVE_ALL])
    side = rng.choice(["left", "right"])
    keep_position = rng.random() < 0.3
    position_ids = packed or rng.random() < 0.5
    result = run(rows, scheduled, side, keep_position=keep_position, position_ids=position_ids)
    examples = sum(len(row) for row in rows)
    expected, removed, left = reference_remove(
        rows, [scheduled] * examples, side, keep_position, with_position_ids=position_ids
    )
    assert as_lists(result.batch) == expected
    assert result.removed_per_example.tolist() == removed
    assert result.cot_left_per_example.tolist() == left
    stats = result.stats()
    assert stats["removed_tokens_mean"] == pytest.approx(sum(removed) / examples)
    assert stats["no_cot_fraction"] == pytest.approx(sum(n == 0 for n in left) / examples)
    assert result.all_cot_removed == all(n == 0 for n in left)


@pytest.mark.parametrize("trial", range(6))
def test_left_padding_matches_reference(trial):
    rng = random.Random(2000 + trial)
    rows = [[random_example(rng)] for _ in range(4)]
    scheduled = rng.choice([1, 3, 6])
    side = rng.choice(["left", "right"])
    result = run(rows, scheduled, side, position_ids=False, padding_side="left")
    expected, removed, _ = reference_remove(
        rows, [scheduled] * 4, side, False, padding_side="left", with_position_ids=False
    )
    assert as_lists(result.batch) == expected
    assert result.removed_per_example.tolist() == removed


def test_untouched_extra_keys():
    rng = random.Random(5)
    rows = [[random_example(rng)] for _ in range(3)]
    batch = collate(rows)
    batch["extra"] = torch.tensor([1.5, 2.5])  # not (B, T): returned as is
    result = remove_cot(batch, batch["cot_mask"], 2, "left", pad_token_id=PAD)
    assert result.batch["extra"] is batch["extra"]


# ---- smoothing ---------------------------------------------------------------------


def test_smoothing_with_a_fixed_offset():
    """A distribution with all its mass on 3 removes scheduled + 3 from every example."""
    rng = random.Random(7)
    rows = [[random_example(rng, cot_len=rng.randint(0, 12)) for _ in range(3)] for _ in range(3)]
    probs = torch.zeros(100, dtype=torch.float64)
    probs[3] = 1.0
    result = run(rows, 2, "left", smoothing_probs=probs, generator=torch.Generator().manual_seed(0))
    expected, removed, _ = reference_remove(rows, [5] * 9, "left", False)
    assert as_lists(result.batch) == expected
    assert result.removed_per_example.tolist() == removed


def test_smoothing_offsets_per_example_seeded():
    """One offset per example, in batch order, from the given generator."""
    rng = random.Random(8)
    rows = [[random_example(rng, cot_len=150) for _ in range(2)] for _ in range(8)]
    # same-length rows: no padding segments, so the draws map one to one to examples
    width = max(sum(len(e.input_ids) for e in row) for row in rows)
    for row in rows:
        row[-1].rest[1:2] = [row[-1].rest[1]] * (1 + width - sum(len(e.input_ids) for e in row))
    probs = smoothing_distribution(0.05)
    offsets = sample_offsets(16, probs, torch.Generator().manual_seed(42)).tolist()
    assert len(set(offsets)) > 3  # the offsets really differ per example
    result = run(rows, 4, "right", smoothing_probs=probs, generator=torch.Generator().manual_seed(42))
    expected, removed, _ = reference_remove(rows, [4 + o for o in offsets], "right", False)
    assert removed == [4 + o for o in offsets]
    assert as_lists(result.batch) == expected
    assert result.removed_per_example.tolist() == removed
    again = run(rows, 4, "right", smoothing_probs=probs, generator=torch.Generator().manual_seed(42))
    other = run(rows, 4, "right", smoothing_probs=probs, generator=torch.Generator().manual_seed(43))
    assert torch.equal(again.batch["input_ids"], result.batch["input_ids"])
    assert not torch.equal(other.removed_per_example, result.removed_per_example)


def test_smoothing_on_padded_random_batches_is_consistent():
    """With padding the reported per-example removals, whatever they are, are applied
    exactly, each at least the scheduled count (clipped to the CoT)."""
    probs = smoothing_distribution(0.3)
    for trial in range(10):
        rng = random.Random(3000 + trial)
        rows = [[random_example(rng, max_cot=20) for _ in range(rng.randint(1, 3))] for _ in range(4)]
        result = run(rows, 1, "left", smoothing_probs=probs, generator=torch.Generator().manual_seed(trial))
        removed = result.removed_per_example.tolist()
        cots = [len(e.cot) for row in rows for e in row]
        assert all(n >= min(1, cot) for n, cot in zip(removed, cots))
        expected, _, _ = reference_remove(rows, removed, "left", False)
        assert as_lists(result.batch) == expected


def test_stats_on_empty_cot_and_all_removed():
    rows = [[Example([1, EOS], [], [EOS, 6, EOS]), Example([1, EOS], [9, 9], [EOS, 6, EOS])]]
    result = run(rows, 1, "left")
    assert result.stats() == {"removed_tokens_mean": 0.5, "no_cot_fraction": 0.5}
    assert not result.all_cot_removed
    assert run(rows, 2, "left").all_cot_removed


@pytest.mark.parametrize("trial", range(6))
def test_packed_rows_without_attention_mask(trial):
    """axolotl drops the attention mask for sdpa/eager packing: segments come from the
    position ids alone, and the padding tail (no trained label, no CoT) is no example."""
    rng = random.Random(4000 + trial)
    rows = [[random_example(rng) for _ in range(rng.randint(1, 3))] for _ in range(3)]
    scheduled, side = rng.choice([1, 4, REMOVE_ALL]), rng.choice(["left", "right"])
    batch = collate(rows)
    del batch["attention_mask"]
    result = remove_cot(batch, batch["cot_mask"], scheduled, side, pad_token_id=PAD)
    examples = sum(len(row) for row in rows)
    expected, removed, left = reference_remove(rows, [scheduled] * examples, side, False)
    assert result.removed_per_example.tolist() == removed
    assert result.cot_left_per_example.tolist() == left
    assert result.stats()["no_cot_fraction"] == pytest.approx(sum(n == 0 for n in left) / examples)
    for row, mask in enumerate(expected["attention_mask"]):
        real = sum(value != 0 for value in mask)
        for key in ("input_ids", "labels", "position_ids"):
            assert result.batch[key][row, :real].tolist() == expected[key][row][:real]
