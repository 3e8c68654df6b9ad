"""The `<mask>` token's embedding rows: mean initialisation, and LoRA reachability."""

from __future__ import annotations

import torch


@torch.no_grad()
def set_rows_to_mean(weight: torch.Tensor, new_ids: list[int], existing_rows: int) -> None:
    """Set rows ``new_ids`` of an embedding matrix, in place, to the mean of rows ``[0, existing_rows)``.

    Args:
        weight: ``(vocab, hidden)``, the full matrix (the mean is taken in float32, written
            in ``weight``'s dtype).
        new_ids: rows to set, each in ``[existing_rows, vocab)``.
        existing_rows: how many rows the vocabulary had before the new tokens.

    Raises:
        ValueError: ``weight`` is not a 2-D matrix holding every row named: a ZeRO-3
            partitioned parameter (an empty placeholder, its shard elsewhere) must be
            gathered first, or the mean would be taken over a shard.
    """
    rows = weight.shape[0] if weight.dim() == 2 else 0
    bad = [token_id for token_id in new_ids if not existing_rows <= token_id < rows]
    if weight.dim() != 2 or existing_rows < 1 or bad:
        raise ValueError(
            f"embedding weight of shape {tuple(weight.shape)}: cannot set rows {new_ids} to the mean of the "
            f"first {existing_rows}; a partitioned (ZeRO-3) parameter must be gathered first"
        )
    mean = weight[:existing_rows].float().mean(dim=0).to(weight.dtype)
    weight[new_ids] = mean


def untrainable_embeddings(model) -> list[str]:
    """Which of the input/output embeddings would not train (and not be saved with an adapter)."""
    missing = []
    modules = {"input embeddings": model.get_input_embeddings(), "output embeddings": model.get_output_embeddings()}
    for name, module in modules.items():
        if module is None:
            continue
        if not any(p.requires_grad for p in module.parameters()):
            missing.append(name)
    return missing
