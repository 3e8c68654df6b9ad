"""Added tokens' embedding rows set to the mean of the existing rows, ZeRO-3 safe.

The maths is :func:`axolotl_maskthought.ops.embeddings.set_rows_to_mean`; here it is
applied to a model's input and output embeddings. Under DeepSpeed ZeRO-3 a parameter may
be partitioned when this runs (its ``data`` an empty placeholder, each rank holding a
shard): such parameters are gathered with ``deepspeed.zero.GatheredParameters(...,
modifier_rank=0)``, rank 0 writes the rows, and DeepSpeed partitions rank 0's values back
to every rank on exit.
"""

from __future__ import annotations

import contextlib

import torch

from axolotl_maskthought.ops.embeddings import set_rows_to_mean


def embedding_weights(model) -> list[torch.nn.Parameter]:
    """The input embedding weight, and the output one unless it is the same (tied) parameter."""
    weights = [model.get_input_embeddings().weight]
    output = model.get_output_embeddings()
    if output is not None and output.weight is not weights[0]:
        weights.append(output.weight)
    return weights


def is_partitioned(parameter: torch.nn.Parameter) -> bool:
    """Whether DeepSpeed ZeRO-3 manages ``parameter`` (it then carries ``ds_id``)."""
    return hasattr(parameter, "ds_id")


def gathered(parameters: list[torch.nn.Parameter]):
    """A context in which ``parameters`` hold their full values and rank 0's changes are kept:
    ``GatheredParameters(..., modifier_rank=0)`` for ZeRO-3 parameters, else a no-op."""
    partitioned = [parameter for parameter in parameters if is_partitioned(parameter)]
    if not partitioned:
        return contextlib.nullcontext()
    try:
        import deepspeed
    except ImportError:  # only DeepSpeed partitions parameters (the `deepspeed` extra)
        raise RuntimeError(
            "parameters are partitioned (ZeRO-3) but `deepspeed` cannot be imported: "
            "pip install 'axolotl-maskthought[deepspeed]'"
        ) from None
    return deepspeed.zero.GatheredParameters(partitioned, modifier_rank=0)


def _rank() -> int:
    distributed = torch.distributed
    return distributed.get_rank() if distributed.is_available() and distributed.is_initialized() else 0


@torch.no_grad()
def init_rows_to_mean(model, new_ids: list[int], existing_rows: int) -> None:
    """Set input and output embedding rows ``new_ids`` to the mean of rows ``[0, existing_rows)``.

    Called on every rank. Partitioned (ZeRO-3) embeddings are gathered first, and only
    rank 0 writes (``modifier_rank=0`` then hands its rows to every rank); full ones are
    written on every rank, each computing the same mean.

    Raises:
        ValueError: an embedding does not have the rows named (see ``set_rows_to_mean``).
    """
    weights = embedding_weights(model)
    with gathered(weights):
        if any(is_partitioned(weight) for weight in weights) and _rank() != 0:
            return
        for weight in weights:
            set_rows_to_mean(weight, new_ids, existing_rows)
