"""Sample packing computes the same loss as padded batches, after CoT removal (CPU).

What axolotl 0.19 does with ``sample_packing: true`` and sdpa/eager attention on a
Llama model, reproduced with axolotl's own pieces:

- the collator is ``V2BatchSamplerDataCollatorForSeq2Seq`` (core/builders/causal.py,
  llama without flash-attention), padding to a multiple of 64, ``position_ids``
  restarting at 0 in every packed example and in the padding tail;
- the ``attention_mask`` column is dropped (``sample_packing_drop_attention_mask`` =
  ``attn_decontaminates_packing``, core/trainers/base.py), so that transformers'
  masking_utils (``find_packed_sequence_indices``) rebuilds a block-diagonal causal
  mask from the position ids;
- ``use_cache`` is off (axolotl/loaders/utils.py), which that detection requires.

Our collator wrapper carries ``cot_mask`` through either collator, ``remove_cot``
drops the same CoT tokens per example in both layouts (no smoothing), and the
logits, per-example and summed token losses must match.

The last test runs axolotl itself with packing and checks that the batches the
model received look like the ones built here, and that the packed forward equals
the per-example forwards on those exact tensors.
"""

from __future__ import annotations

import copy

import pytest
import torch

from axolotl_maskthought.config import PROMPT_TEMPLATES
from axolotl_maskthought.data.formats import parse_gsm8k_row, tokenize_gsm8k
from axolotl_maskthought.data.generators import generate_arithmetic
from axolotl_maskthought.engine.collator import COT_MASK, CoTSpanCollator
from axolotl_maskthought.ops.removal import remove_cot
from axolotl_maskthought.ops.schedule import REMOVE_ALL
from axolotl_maskthought.toy.tiny import build_model, build_tokenizer

PACKS = [[0, 1, 2], [3, 4]]  # example indices per packed row
PAD_MULTIPLE = 64


@pytest.fixture(scope="module")
def setup():
    rows = generate_arithmetic(5, seed=11, terms=4)
    tokenizer = build_tokenizer([r["question"] + " " + r["answer"] for r in rows] * 4, vocab_size=320)
    template = PROMPT_TEMPLATES["plain"]
    features = [tokenize_gsm8k(tokenizer, parse_gsm8k_row(row), template) for row in rows]
    return tokenizer, features


def _model(tokenizer, attn: str):
    model = build_model(tokenizer, arch="llama", hidden=64, layers=2, heads=4, seed=3)
    model.config._attn_implementation = attn
    model.config.use_cache = False  # as axolotl sets it for training
    return model.eval()


def _unpacked_batch(tokenizer, features):
    from axolotl.utils.collators import DataCollatorForSeq2Seq

    inner = DataCollatorForSeq2Seq(tokenizer, padding=True, pad_to_multiple_of=PAD_MULTIPLE, return_tensors="pt")
    return CoTSpanCollator(inner, tokenizer.padding_side)(copy.deepcopy(features))


def _packed_batch(tokenizer, features):
    from axolotl.utils.collators import V2BatchSamplerDataCollatorForSeq2Seq

    inner = V2BatchSamplerDataCollatorForSeq2Seq(
        tokenizer, padding=True, pad_to_multiple_of=PAD_MULTIPLE, return_tensors="pt"
    )
    packs = []
    for indices in PACKS:
        pack = []
        for index in indices:
            feature = copy.deepcopy(features[index])
            feature["position_ids"] = list(range(len(feature["input_ids"])))  # axolotl's add_position_ids
            del feature["attention_mask"]  # the column axolotl drops for sdpa/eager packing
            pack.append(feature)
        packs.append(pack)
    return CoTSpanCollator(inner, tokenizer.padding_side)(packs)


def _remove(batch, tokenizer, scheduled: int, side: str):
    cot_mask = batch.pop(COT_MASK)
    return remove_cot(batch, cot_mask, scheduled, side, pad_token_id=tokenizer.pad_token_id, padding_side="right")


def _token_losses(model, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (B, T, V) and per-token CE of the next-token targets (B, T-1), 0 where untrained."""
    inputs = {key: batch[key] for key in ("input_ids", "attention_mask", "position_ids") if key in batch}
    with torch.no_grad():
        logits = model(**inputs).logits.float()
    labels = batch["labels"][:, 1:]
    losses = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), labels.clamp(min=0).reshape(-1), reduction="none"
    ).view(labels.shape)
    return logits, losses * (labels != -100)


def _example_segments(position_ids: torch.Tensor) -> list[tuple[int, int, int]]:
    """The examples' segments: the first len(pack) segments of each row (padding follows)."""
    segments = _segments(position_ids)
    return [
        segment for row, indices in enumerate(PACKS) for segment in [s for s in segments if s[0] == row][: len(indices)]
    ]


def _segments(position_ids: torch.Tensor) -> list[tuple[int, int, int]]:
    """(row, start, end) of each packed segment, from the restarting position ids."""
    spans = []
    for row, positions in enumerate(position_ids.tolist()):
        starts = [i for i, p in enumerate(positions) if i == 0 or p <= positions[i - 1]]
        for start, end in zip(starts, starts[1:] + [len(positions)]):
            spans.append((row, start, end))
    return spans


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("scheduled", [0, 3, 12, REMOVE_ALL])
def test_packed_and_padded_losses_match_after_removal(setup, attn, side, scheduled):
    tokenizer, features = setup
    model = _model(tokenizer, attn)
    unpacked = _remove(_unpacked_batch(tokenizer, features), tokenizer, scheduled, side)
    packed_before = _packed_batch(tokenizer, features)
    is_example = [
        bool((packed_before["labels"][row, start:end] != -100).any())
        for row, start, end in _segments(packed_before["position_ids"])
    ]
    packed = _remove(packed_before, tokenizer, scheduled, side)
    assert "attention_mask" not in packed.batch

    # Same examples, same tokens removed: the packed segments are the padded rows' real tokens.
    examples = []
    for row in range(len(features)):
        real = unpacked.batch["attention_mask"][row].bool()
        examples.append((unpacked.batch["input_ids"][row][real], unpacked.batch["labels"][row][real]))
    example_segments = _example_segments(packed.batch["position_ids"])
    for (row, start, end), (input_ids, labels) in zip(example_segments, examples):
        assert torch.equal(packed.batch["input_ids"][row, start:end], input_ids)
        assert torch.equal(packed.batch["labels"][row, start:end], labels)
        assert packed.batch["position_ids"][row, start:end].tolist() == list(range(end - start))
    packed_removed = packed.removed_per_example.tolist()
    if len(packed_removed) == len(is_example):  # the padding tails are counted as segments too
        packed_removed = [removed for removed, example in zip(packed_removed, is_example) if example]
    assert unpacked.removed_per_example.tolist() == packed_removed
    if scheduled == 0:
        assert unpacked.removed_per_example.sum() == 0
    else:
        assert unpacked.removed_per_example.min() > 0

    unpacked_logits, unpacked_losses = _token_losses(model, unpacked.batch)
    packed_logits, packed_losses = _token_losses(model, packed.batch)
    for index, (row, start, end) in enumerate(example_segments):
        length = end - start
        torch.testing.assert_close(packed_logits[row, start:end], unpacked_logits[index, :length], atol=2e-5, rtol=1e-4)
        # Targets inside the example: positions start..end-2 predict start+1..end-1.
        torch.testing.assert_close(
            packed_losses[row, start : end - 1].sum(), unpacked_losses[index, : length - 1].sum(), atol=1e-4, rtol=1e-5
        )
    # Nothing else is trained in the packed rows (segment joins and padding have label -100).
    torch.testing.assert_close(packed_losses.sum(), unpacked_losses.sum(), atol=1e-4, rtol=1e-6)
    assert (packed.batch["labels"] != -100).sum() == (unpacked.batch["labels"] != -100).sum()


def test_a_packed_row_without_block_diagonal_mask_differs(setup):
    """Control: the comparison above detects cross-example attention. With the cache on,
    transformers skips packed-sequence detection and example 2 attends to example 1."""
    tokenizer, features = setup
    packed = _remove(_packed_batch(tokenizer, features), tokenizer, 3, "left")
    model = _model(tokenizer, "sdpa")
    _, isolated = _token_losses(model, packed.batch)
    model.config.use_cache = True
    _, leaking = _token_losses(model, packed.batch)
    (row, start, end), (_, second_start, second_end) = _segments(packed.batch["position_ids"])[:2]
    torch.testing.assert_close(leaking[row, start : end - 1], isolated[row, start : end - 1])  # first example: same
    assert not torch.allclose(leaking[row, second_start : second_end - 1], isolated[row, second_start : second_end - 1])


def test_kept_positions_would_split_packed_examples(setup):
    """Why `keep_position` is refused with packing: the gap the removed tokens leave in
    the position ids reads as an example boundary, so the packed loss differs."""
    from axolotl_maskthought.adapters.axolotl.validation import check_config

    tokenizer, features = setup
    model = _model(tokenizer, "sdpa")

    def remove(batch):
        cot_mask = batch.pop(COT_MASK)
        return remove_cot(batch, cot_mask, 3, "left", keep_position=True, pad_token_id=tokenizer.pad_token_id)

    _, unpacked = _token_losses(model, remove(_unpacked_batch(tokenizer, features)).batch)
    _, packed = _token_losses(model, remove(_packed_batch(tokenizer, features)).batch)
    assert not torch.allclose(packed.sum(), unpacked.sum(), rtol=1e-4)
    with pytest.raises(ValueError, match="`cot_removal.keep_position: true` cannot be combined with `sample_packing"):
        check_config(
            {
                "cot_removal": {"keep_position": True},
                "sample_packing": True,
                "datasets": [{"type": "axolotl_maskthought.strategies.icot"}],
            }
        )


def test_axolotl_packed_training_batches_isolate_examples(tmp_path):
    """axolotl itself, `sample_packing: true`, sdpa, CoT removal on: the model gets packed
    rows without attention mask whose position ids restart per example, and on exactly
    those tensors the packed forward equals each example's forward on its own."""
    import yaml
    from mp_capture import arithmetic_workspace, run_config, train_in_process

    data, base = arithmetic_workspace(tmp_path, 48, seed=5, terms=4, vocab_size=320, hidden=32, layers=2, heads=2)
    config = run_config(
        base,
        tmp_path / "out",
        [{"path": str(data), "ds_type": "json", "type": "axolotl_maskthought.strategies.gsm8k"}],
        sample_packing=True,
        attn_implementation="sdpa",
        sequence_len=256,
        micro_batch_size=2,
        max_steps=4,
        cot_format={"prompt_template": "plain"},
        cot_removal={"tokens_per_epoch": 40, "smoothing_lambda": None, "side": "left"},
    )
    path = tmp_path / "packed.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    run = train_in_process(path)
    trainer = run["trainer"]
    assert max(trainer.applied_counts.values()) > 0
    removed = [
        entry["cot_removal/removed_tokens_mean"]
        for entry in trainer.state.log_history
        if "cot_removal/removed_tokens_mean" in entry
    ]
    assert removed and max(removed) > 0

    model = trainer.model.eval()
    forwards = [forward for forward in run["forwards"] if forward["training"]]
    assert len(forwards) == 4
    packed_examples = 0
    for forward in forwards:
        assert forward["attention_mask"] is None
        input_ids, labels, position_ids = forward["input_ids"], forward["labels"], forward["position_ids"]
        assert position_ids is not None
        _, packed_losses = _token_losses(
            model, {"input_ids": input_ids, "labels": labels, "position_ids": position_ids}
        )
        for row, start, end in _segments(position_ids):
            segment_labels = labels[row : row + 1, start:end]
            if (segment_labels != -100).sum() == 0:
                continue  # padding
            packed_examples += 1
            alone = {
                "input_ids": input_ids[row : row + 1, start:end],
                "labels": segment_labels,
                "position_ids": position_ids[row : row + 1, start:end],
            }
            assert alone["position_ids"][0].tolist() == list(range(end - start))
            _, alone_losses = _token_losses(model, alone)
            torch.testing.assert_close(packed_losses[row, start : end - 1], alone_losses[0], atol=1e-4, rtol=1e-4)
    assert packed_examples > 2 * len(forwards), "packing should put several examples in a row"
