"""The `<mask>` token's embedding rows: mean initialisation, and LoRA reachability."""

from __future__ import annotations

import torch


@torch.no_grad()
def init_rows_to_mean(model, new_ids: list[int], existing_rows: int) -> None:
    """Set input and output embedding rows ``new_ids`` to the mean of rows ``[0, existing_rows)``."""
    matrices = [model.get_input_embeddings().weight]
    output = model.get_output_embeddings()
    if output is not None and output.weight.data_ptr() != matrices[0].data_ptr():
        matrices.append(output.weight)
    for weight in matrices:
        mean = weight[:existing_rows].float().mean(dim=0).to(weight.dtype)
        for token_id in new_ids:
            weight[token_id] = mean


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
