"""Carry the ``cot_mask`` column through whatever collator axolotl chose.

axolotl's collators pad ``labels`` and ``position_ids`` and leave unknown keys
unpadded (which fails for ragged rows). This wrapper takes ``cot_mask`` out,
lets the inner collator build the batch (packed or not), then lays ``cot_mask``
out the same way: concatenated per pack, padded with 0 on the tokenizer's side to
the batch width. It runs in the dataloader worker and does nothing step-dependent.
"""

from __future__ import annotations

import torch

COT_MASK = "cot_mask"


class CoTSpanCollator:
    def __init__(self, inner, padding_side: str = "right"):
        self.inner = inner
        self.padding_side = padding_side
        self.packs_flat_lists = _packs_flat_lists(inner)

    def __getattr__(self, name):
        # Trainer code inspects collator attributes (tokenizer, ...): forward them.
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def __call__(self, features, return_tensors=None):
        if isinstance(features[0], list):
            packs = features
        elif self.packs_flat_lists:
            packs = [features]
        else:
            packs = [[feature] for feature in features]
        if COT_MASK not in packs[0][0]:
            return self._call_inner(features, return_tensors)
        masks = []
        for pack in packs:
            row = []
            for feature in pack:
                row.extend(int(v) for v in feature.pop(COT_MASK))
            masks.append(row)
        batch = self._call_inner(features, return_tensors)
        width = batch["input_ids"].shape[1]
        cot_mask = torch.zeros((len(masks), width), dtype=torch.long)
        for index, row in enumerate(masks):
            values = torch.tensor(row[:width], dtype=torch.long)
            if self.padding_side == "left":
                cot_mask[index, width - len(values):] = values
            else:
                cot_mask[index, : len(values)] = values
        batch[COT_MASK] = cot_mask
        return batch

    def _call_inner(self, features, return_tensors):
        if return_tensors is None:
            return self.inner(features)
        return self.inner(features, return_tensors=return_tensors)


def _packs_flat_lists(inner) -> bool:
    """Whether ``inner`` turns a flat list of examples into ONE row (packing collators)."""
    from axolotl.utils.collators.batching import (
        BatchSamplerDataCollatorForSeq2Seq,
        V2BatchSamplerDataCollatorForSeq2Seq,
    )
    from transformers import DataCollatorWithFlattening

    return isinstance(
        inner,
        (BatchSamplerDataCollatorForSeq2Seq, V2BatchSamplerDataCollatorForSeq2Seq, DataCollatorWithFlattening),
    )
