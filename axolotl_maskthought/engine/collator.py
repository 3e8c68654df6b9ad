"""Carry the ``cot_mask`` column through whatever collator axolotl chose.

axolotl's collators pad ``labels`` and ``position_ids`` and leave unknown keys
unpadded (which fails for ragged rows). This wrapper takes ``cot_mask`` out,
lets the inner collator build the batch (packed or not), then lays ``cot_mask``
out the same way: concatenated per pack, padded with 0 on the tokenizer's side to
the batch width. It runs in the dataloader worker and does nothing step-dependent.
"""

from __future__ import annotations

import sys

import torch

COT_MASK = "cot_mask"


class CoTSpanCollator:
    """Wrap ``inner`` (any HF/axolotl collator) so that the ``cot_mask`` column survives.

    Each feature's ``cot_mask`` is a list of 0/1 of the feature's length (1 = CoT
    token, as recorded by this package's strategies or ``formats.tokenize_cot``), or
    None for a row of another dataset type (``datasets.concatenate_datasets`` fills
    the column with None there): such a row has no CoT, all zeros.
    The batch gets ``cot_mask`` as a (B, T) long tensor laid out like
    ``input_ids``: packed rows concatenate their examples' masks, padding is 0 on
    ``padding_side``. Features without ``cot_mask`` pass through unchanged.
    """

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
                cot_mask = feature.pop(COT_MASK)
                if cot_mask is None:  # a row of a dataset type that records no CoT (datasets concatenated)
                    cot_mask = [0] * len(feature["input_ids"])
                if len(cot_mask) != len(feature["input_ids"]):
                    raise ValueError(
                        f"`cot_mask` has {len(cot_mask)} entries but `input_ids` {len(feature['input_ids'])}: "
                        "a step between tokenization and this collator cut or re-laid the tokens without "
                        "the CoT span. Under axolotl this package's strategies apply `sequence_len` / "
                        "`excess_length_strategy` themselves; rows from elsewhere must carry a `cot_mask` "
                        "of their own length (docs/seams.md lists the steps). Under TRL: pre-truncate the "
                        "rows and set `max_length=None`, `packing=False`"
                    )
                row.extend(int(v) for v in cot_mask)
            masks.append(row)
        batch = self._call_inner(features, return_tensors)
        width = batch["input_ids"].shape[1]
        cot_mask = torch.zeros((len(masks), width), dtype=torch.long)
        for index, row in enumerate(masks):
            values = torch.tensor(row[:width], dtype=torch.long)
            if self.padding_side == "left":
                cot_mask[index, width - len(values) :] = values
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
    from transformers import DataCollatorWithFlattening

    packing: tuple[type, ...] = (DataCollatorWithFlattening,)
    batching = sys.modules.get("axolotl.utils.collators.batching")
    if batching is not None:  # an axolotl collator's module is loaded; never import axolotl for it
        packing += (batching.BatchSamplerDataCollatorForSeq2Seq, batching.V2BatchSamplerDataCollatorForSeq2Seq)
    return isinstance(inner, packing) or bool(getattr(inner, "padding_free", False))  # TRL
