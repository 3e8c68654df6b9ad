"""Subprocess worker for ``test_deepspeed_e2e`` and ``test_zero3_embeddings``: one rank of an
axolotl run under DeepSpeed on the CPU.

Usage::

    python tests/ds_worker.py CONFIG.yml RECORD.json

Trains as ``axolotl train`` does (``axolotl_maskthought.toy.experiment.train_in_process``) with the
config as given (it lists our plugin, then :class:`StepRecorderPlugin`) and writes
what happened to ``RECORD.json``: per optimizer step the CoT-removal count the
trainer applied and the Adam step count of the optimizer that owns the state,
the optimizer chain, the ZeRO stage and the trainer's log history. A failure is
written there too (``{"error": ..., "traceback": ...}``) so the test can show it.

What is needed to run axolotl 0.19 + DeepSpeed on a CPU-only box (one rank):

* ``DS_ACCELERATOR=cpu`` (DeepSpeed's CPU accelerator; its communication backend
  name is ``ccl``, which is not available here).
* A gloo process group created *before* axolotl runs: axolotl's
  ``setup_deepspeed_env`` (``axolotl/utils/trainer.py``) calls
  ``deepspeed.comm.init_distributed(dist_backend="nccl", ...)``; when torch.distributed
  is already initialised DeepSpeed wraps the existing group instead of creating one.
* ``deepspeed.comm.torch.build_shm_op`` stubbed: with one rank the shared-memory
  allreduce kernel is never used and its JIT build (a minute on a cold cache) is
  skipped.
* py-cpuinfo's ``get_cpu_info`` cached: ``DeepSpeedCPUAdam`` (optimizer offload) asks
  for it on construction, which takes seconds on a loaded machine.

With two ranks (RANK / WORLD_SIZE / LOCAL_RANK set by the test, one process each) two more
things: the gloo group spans both, the shared-memory kernel stays stubbed (DeepSpeed's
collectives then go through torch.distributed), axolotl's CUDA P2P probe answers as on a
CPU build of torch (``mp_capture``), and accelerate is told the backend is gloo: with no GPU
it finds none and counts one process, so the Trainer's DeepSpeed batch size would miss the
other rank ("train_batch_size is not equal to micro_batch_per_gpu * gradient_acc_step *
world_size").
"""

from __future__ import annotations

import json
import math
import os
import socket
import sys
import traceback
from pathlib import Path

from axolotl.integrations.base import BasePlugin
from transformers import TrainerCallback

from axolotl_maskthought.toy.tiny import OFFLINE_ENV

PLUGIN = "ds_worker.StepRecorderPlugin"

RECORD: dict = {"steps": [], "chain": None}
TRAINER: dict = {}

ENV = {
    **OFFLINE_ENV,
    "DS_ACCELERATOR": "cpu",
    "CUDA_VISIBLE_DEVICES": "",
    "MASTER_ADDR": "127.0.0.1",
    "RANK": "0",
    "LOCAL_RANK": "0",
    "WORLD_SIZE": "1",
    "LOCAL_WORLD_SIZE": "1",
}  # defaults: test_zero3_embeddings runs two ranks


# ---- reading the optimizer ----------------------------------------------------------
def optimizer_chain(optimizer) -> list:
    """``[optimizer, optimizer.optimizer, ...]`` down to the object that owns the state."""
    chain = [optimizer]
    while True:
        inner = getattr(chain[-1], "optimizer", None)
        if inner is None or any(inner is o for o in chain):
            break
        if not (hasattr(inner, "state") and hasattr(inner, "param_groups")):
            break
        chain.append(inner)
    return chain


def _as_int(value) -> int:
    return int(value.item()) if hasattr(value, "item") else int(value)


def adam_steps(optimizer) -> list[int]:
    """Every step counter of the innermost optimizer (per-parameter ``state['step']``,
    and ``param_groups[i]['step']`` for FusedAdam-style optimizers)."""
    inner = optimizer_chain(optimizer)[-1]
    steps = [_as_int(entry["step"]) for entry in inner.state.values() if entry and "step" in entry]
    steps += [_as_int(group["step"]) for group in inner.param_groups if "step" in group]
    return steps


class _StepRecorder(TrainerCallback):
    """At the end of optimizer step ``s`` (``state.global_step == s + 1``): the count the
    trainer applied to step ``s`` and the inner optimizer's step counters."""

    def __init__(self, trainer):
        self.trainer = trainer

    def on_step_end(self, args, state, control, **kwargs):
        trainer = self.trainer
        step = state.global_step - 1
        if RECORD["chain"] is None:
            RECORD["chain"] = [type(o).__name__ for o in optimizer_chain(trainer.optimizer)]
        RECORD["steps"].append(
            {
                "step": step,
                "count": trainer.applied_counts.get(step),
                "adam_steps": sorted(set(adam_steps(trainer.optimizer))),
            }
        )


class StepRecorderPlugin(BasePlugin):
    """Keeps the trainer and records the optimizer after every step (list it after ours);
    with `masked_thought.replacement: mask_token`, the mask token's rows when training begins."""

    def post_trainer_create(self, cfg, trainer):
        TRAINER["trainer"] = trainer
        trainer.add_callback(_StepRecorder(trainer))
        block = cfg.get("masked_thought") or {}
        if block.get("replacement") == "mask_token":
            trainer.add_callback(_MaskRowsAtTrainBegin(trainer, cfg, block.get("mask_token") or "<mask>"))


# ---- the mask token's embedding rows under ZeRO-3 (test_zero3_embeddings) -------------------
PARTITION_ENV = "DS_WORKER_PARTITION_EMBEDDINGS"
SKIP_GATHER_ENV = "DS_WORKER_SKIP_GATHER"


def _placeholder(parameter) -> bool:
    """A ZeRO-3 parameter whose values live in shards on the ranks (its `data` is empty)."""
    return hasattr(parameter, "ds_id") and parameter.numel() == 0


def _partition_embeddings(model) -> None:
    """``deepspeed.zero.Init(module=...)`` on the input and output embeddings (rank 0's
    values are broadcast, then each rank keeps its shard)."""
    import deepspeed
    import torch

    ds_config = {
        "train_micro_batch_size_per_gpu": 1,
        "train_batch_size": torch.distributed.get_world_size(),
        "zero_optimization": {"stage": 3},
    }
    for module in (model.get_input_embeddings(), model.get_output_embeddings()):
        if module is not None:
            deepspeed.zero.Init(module=module, config_dict_or_path=ds_config, dtype=module.weight.dtype)


class PartitionEmbeddingsPlugin(BasePlugin):
    """Records whether the embeddings are partitioned when our plugin's `pre_lora_load`
    writes the mask rows, and with ``DS_WORKER_PARTITION_EMBEDDINGS=1`` partitions them just
    before: the state the plugin must handle when transformers does not hand the resized
    embeddings back whole. It wraps that hook rather than running its own `pre_lora_load`
    first, because hook order is registration order and axolotl 0.21 registers installed
    plugins (ours, by its entry point) before the config's."""

    def register(self, cfg):
        from axolotl_maskthought.adapters.axolotl.plugin import MaskThoughtPlugin

        original = MaskThoughtPlugin.pre_lora_load
        if getattr(original, "wrapped_by_ds_worker", False):
            return

        def pre_lora_load(plugin, cfg, model):
            from axolotl_maskthought.engine.embeddings import embedding_weights

            RECORD["embeddings_partitioned_as_loaded"] = [_placeholder(w) for w in embedding_weights(model)]
            if os.environ.get(PARTITION_ENV) == "1":
                _partition_embeddings(model)
            RECORD["embeddings_partitioned_at_write"] = [_placeholder(w) for w in embedding_weights(model)]
            return original(plugin, cfg, model)

        pre_lora_load.wrapped_by_ds_worker = True
        MaskThoughtPlugin.pre_lora_load = pre_lora_load


class _MaskRowsAtTrainBegin(TrainerCallback):
    """When training begins (DeepSpeed engine built, nothing trained yet), this rank's view
    of the mask token's input and output rows and of the mean of the base vocabulary's
    rows, gathered from the ZeRO-3 shards."""

    def __init__(self, trainer, cfg, token: str):
        self.trainer, self.cfg, self.token = trainer, cfg, token

    def on_train_begin(self, args, state, control, **kwargs):
        import deepspeed
        import torch
        from transformers import AutoTokenizer

        from axolotl_maskthought.engine.embeddings import embedding_weights

        existing_rows = len(AutoTokenizer.from_pretrained(self.cfg["base_model"]))
        token_id = self.trainer.processing_class.convert_tokens_to_ids(self.token)
        matrices = []
        for weight in embedding_weights(self.trainer.model):
            with deepspeed.zero.GatheredParameters([weight]), torch.no_grad():
                full = weight.detach().float().clone()
            matrices.append(
                {
                    "shape": list(full.shape),
                    "mean": full[:existing_rows].mean(dim=0).tolist(),
                    "new_rows": [full[token_id].tolist()],
                }
            )
        RECORD["mask_rows"] = {
            "rank": torch.distributed.get_rank(),
            "token_id": token_id,
            "existing_rows": existing_rows,
            "matrices": matrices,
        }


# ---- process setup ---------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def prepare_process() -> None:
    """Environment, DeepSpeed patches and the gloo group (see the module docstring)."""
    for key, value in ENV.items():
        os.environ.setdefault(key, value)
    os.environ.setdefault("MASTER_PORT", str(_free_port()))

    import importlib

    import torch

    ds_comm_torch = importlib.import_module("deepspeed.comm.torch")
    ds_comm_torch.build_shm_op = lambda: None
    try:
        import functools

        import cpuinfo

        cpuinfo.get_cpu_info = functools.cache(cpuinfo.get_cpu_info)
    except ImportError:
        pass

    # datasets' save_to_disk(num_proc=1) starts a spawn pool that re-imports torch and
    # axolotl (~40 s here); save in this process instead (same files).
    from axolotl.utils.data import sft, shared

    def save_in_process(cfg, dataset, dataset_hash, split):
        path = shared.get_prepared_dataset_path(cfg, dataset_hash)
        path.mkdir(parents=True, exist_ok=True)
        dataset.save_to_disk(str(path))

    sft.save_preprocessed_dataset = save_in_process

    if os.environ.get(SKIP_GATHER_ENV) == "1":  # the broken write test_zero3_embeddings must catch
        import contextlib

        from axolotl_maskthought.engine import embeddings

        embeddings.gathered = lambda parameters: contextlib.nullcontext()

    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if world_size > 1 and not torch.cuda.is_available():
        from accelerate.state import DistributedType, PartialState
        from mp_capture import _answer_p2p_probe_without_cuda  # see mp_capture.CapturePerRank.register

        _answer_p2p_probe_without_cuda()
        # accelerate finds no backend without a GPU (state.py `_prepare_backend`) and then
        # counts one process, so the Trainer's DeepSpeed batch size misses the other ranks;
        # gloo over the CPU, as `cpu=True` would pick, which still lets DeepSpeed take over.
        PartialState._prepare_backend = lambda self, cpu=False, sagemaker_dp=False, backend=None: (
            "gloo",
            DistributedType.MULTI_CPU,
        )
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("gloo", rank=rank, world_size=world_size)


def _zero_stage(trainer):
    engine = getattr(trainer, "model_wrapped", None)
    stage = getattr(engine, "zero_optimization_stage", None)
    return stage() if callable(stage) else None


def _offload_device(trainer):
    engine = getattr(trainer, "model_wrapped", None)
    offload = getattr(engine, "zero_offload_optimizer", None)
    config = offload() if callable(offload) else None
    device = getattr(config, "device", None)
    return None if device is None else str(getattr(device, "value", device))


def main(argv: list[str]) -> int:
    config, out = argv
    record_path = Path(out)
    try:
        prepare_process()
        from axolotl_maskthought.toy.experiment import train_in_process

        train_in_process(config)
        trainer = TRAINER["trainer"]
        losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
        RECORD.update(
            applied_counts={str(k): v for k, v in sorted(trainer.applied_counts.items())},
            micro_batches_per_epoch=trainer.micro_batches_per_epoch,
            global_step=trainer.state.global_step,
            max_steps=trainer.state.max_steps,
            zero_stage=_zero_stage(trainer),
            offload_optimizer=_offload_device(trainer),
            is_deepspeed_enabled=bool(getattr(trainer, "is_deepspeed_enabled", False)),
            log_history=trainer.state.log_history,
            losses_finite=all(math.isfinite(x) for x in losses),
        )
    except BaseException as exc:  # noqa: BLE001 - reported to the test
        RECORD.update(error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc())
        record_path.write_text(json.dumps(RECORD, default=str))
        raise
    record_path.write_text(json.dumps(RECORD, default=str))
    return 0


if __name__ == "__main__":
    import ds_worker  # the copy axolotl imports for `plugins:` (not this __main__ module)

    sys.exit(ds_worker.main(sys.argv[1:]))
