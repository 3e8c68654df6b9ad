"""Evaluation loss under CoT removal is normalised by the labels the model saw, through axolotl.

transformers counts `num_items_in_batch` in `prediction_step`, from the batch as the
collator built it. When the CoT is removed later (in `compute_loss`) the divisor
still counts the removed labels: with loss kwargs on (axolotl 0.21's default for
Llama) the case below gave eval_loss 1.02 where the token mean is 5.08. The
reference here is computed independently: every evaluation row without its CoT,
through the trained model, cross-entropy summed over its labels, divided by their
count.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from axolotl_run import build_base_model, run_in_process, write_config

from axolotl_maskthought.data.formats import IGNORE_INDEX
from axolotl_maskthought.ops.schedule import REMOVE_ALL


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, shared_data: Path) -> dict:
    root = tmp_path_factory.mktemp("eval_loss")
    lines = (shared_data / "icot" / "4_by_4_mult" / "valid.txt").read_text().splitlines()[:40]
    data = root / "mult4.txt"
    data.write_text("\n".join(lines) + "\n")
    model = build_base_model(root / "model", lines, vocab_size=256, hidden=32, layers=1, heads=2)
    return {"root": root, "data": data, "model": model}


def _reference_loss(trainer) -> float:
    """Token mean of the cross-entropy over the labels left once the whole CoT is removed."""
    model = trainer.model.eval()
    total, count = 0.0, 0
    for row in trainer.eval_dataset:
        keep = [i for i, flag in enumerate(row["cot_mask"]) if not flag]
        input_ids = torch.tensor([[row["input_ids"][i] for i in keep]])
        labels = torch.tensor([[row["labels"][i] for i in keep]])
        with torch.no_grad():
            logits = model(input_ids=input_ids).logits[0, :-1].float()
        targets = labels[0, 1:]
        total += torch.nn.functional.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX, reduction="sum").item()
        count += int((targets != IGNORE_INDEX).sum())
    return total / count


@pytest.mark.parametrize("packing", [False, True], ids=["padded", "packed"])
def test_eval_loss_counts_only_labels_left_after_removal(workspace, packing):
    root = workspace["root"]
    name = "packed" if packing else "padded"
    # One evaluation batch either way, so a per-batch mean (loss kwargs off, axolotl 0.19) and
    # a token mean (loss kwargs on, 0.21) must agree: 8 rows, or one pack holding all 8.
    batches = dict(eval_batch_size=8, micro_batch_size=4)
    if packing:
        batches = dict(
            sample_packing=True,
            eval_sample_packing=True,
            attn_implementation="sdpa",
            sequence_len=1024,
            eval_batch_size=1,
            micro_batch_size=1,
        )
    config = write_config(
        root / f"{name}.yml",
        base_model=workspace["model"],
        datasets=[{"path": str(workspace["data"]), "type": "axolotl_maskthought.strategies.icot"}],
        output_dir=root / name,
        dataset_prepared_path=str(root / f"prepared-{name}"),
        val_set_size=8,
        max_steps=6,
        learning_rate=1e-3,
        cot_removal={"remove_all_at": 2, "smoothing_lambda": None},
        **batches,
    )
    run = run_in_process(config)
    trainer = run.trainer
    assert trainer.count_in_force == REMOVE_ALL
    assert len(trainer.eval_dataset) == 8
    eval_loss = trainer.evaluate()["eval_loss"]
    assert math.isclose(eval_loss, _reference_loss(trainer), rel_tol=2e-3)
