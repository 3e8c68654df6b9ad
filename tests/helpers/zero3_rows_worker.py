"""One rank of ``test_zero3_embeddings``: a tiny Llama built under ``deepspeed.zero.Init``
(ZeRO-3, every parameter partitioned across the ranks, CPU accelerator, gloo), grown by
one token, its new rows set by the engine's ``init_rows_to_mean``; then the full
embeddings are gathered and rank's view of the new rows and of the mean is written.

Usage::

    python zero3_rows_worker.py VARIANT RECORD.json

``VARIANT`` is ``engine`` (the package as it is) or a deliberately broken write, which the
test's check must catch: ``no_gather`` writes on the partitioned placeholders,
``no_modifier`` gathers without ``modifier_rank`` (DeepSpeed then drops the write).
Environment: RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import traceback

os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

EXISTING_ROWS = 96
NEW_ROWS = 2  # e.g. `<mask>` and a pad token added with it
HIDDEN = 16


def build_partitioned_model(world_size: int):
    """A tiny Llama built with its parameters ZeRO-3 partitioned, its vocabulary grown by
    ``NEW_ROWS`` (the new rows, as after a resize, hold arbitrary values)."""
    import deepspeed
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    ds_config = {
        "train_micro_batch_size_per_gpu": 1,
        "train_batch_size": world_size,
        "zero_optimization": {"stage": 3},
    }
    config = LlamaConfig(
        vocab_size=EXISTING_ROWS + NEW_ROWS,
        hidden_size=HIDDEN,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    with deepspeed.zero.Init(config_dict_or_path=ds_config, dtype=torch.float32):
        model = LlamaForCausalLM(config)
    return model


def full_rows(weight):
    import deepspeed

    with deepspeed.zero.GatheredParameters([weight]):
        return weight.detach().clone()


def main(variant: str, record_path: str) -> None:
    import importlib

    import deepspeed
    import torch

    # DeepSpeed's shared-memory allreduce kernel (a JIT build of minutes) is not needed:
    # without it DeepSpeed's collectives go through torch.distributed (gloo).
    importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    os.environ.setdefault("LOCAL_RANK", str(rank))  # one machine
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world_size)
    deepspeed.comm.init_distributed(dist_backend="gloo")
    record: dict = {"rank": rank, "world_size": world_size, "variant": variant}
    try:
        from axolotl_maskthought.engine import embeddings

        model = build_partitioned_model(world_size)
        weights = embeddings.embedding_weights(model)
        record["partitioned"] = [embeddings.is_partitioned(w) and w.numel() == 0 for w in weights]
        record["shard_rows"] = [list(w.shape) for w in weights]
        if variant == "no_gather":
            embeddings.gathered = lambda parameters: contextlib.nullcontext()
        elif variant == "no_modifier":
            embeddings.gathered = lambda parameters: deepspeed.zero.GatheredParameters(parameters)
        new_ids = list(range(EXISTING_ROWS, EXISTING_ROWS + NEW_ROWS))
        embeddings.init_rows_to_mean(model, new_ids, existing_rows=EXISTING_ROWS)
        record["matrices"] = []
        for weight in weights:
            full = full_rows(weight)
            record["matrices"].append(
                {
                    "shape": list(full.shape),
                    "mean": full[:EXISTING_ROWS].mean(dim=0).tolist(),
                    "new_rows": full[new_ids].tolist(),
                }
            )
    except Exception as error:  # noqa: BLE001 - reported to the test
        record.update(error=f"{type(error).__name__}: {error}", traceback=traceback.format_exc())
    with open(record_path, "w") as handle:
        json.dump(record, handle)


if __name__ == "__main__":
    main(*sys.argv[1:])
