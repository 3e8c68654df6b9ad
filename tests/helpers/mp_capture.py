"""Watching plugins for the end-to-end tests of examples, packing, no-op and DDP.

They change nothing the model sees; they record it.

In-process runs (:func:`train_in_process`, plugin ``mp_capture.RecordInProcess``):
the validated cfg, the trainer, and every forward call's inputs (cpu copies).

Multi-process runs (plugin ``mp_capture.CapturePerRank``, listed after ours, with
``tests/`` on ``PYTHONPATH``): per data-parallel rank, what the training did, written
to ``$MASKTHOUGHT_CAPTURE_DIR/rank<RANK>.json`` when training ends:

- ``applied_counts``: the trainer's optimizer step -> removal count in force;
- ``resets``: optimizer steps at which the optimizer state was reset;
- ``mask_hashes``: per optimizer step, a hash of the masked positions of each
  micro-batch (recorded from the masking function's own output);
- ``removed``: per optimizer step, the removed token counts per example;
- ``param_checksum``: a hash of every trained parameter after training (DDP keeps
  replicas identical only if every rank took the same optimizer steps, resets included);
- ``world_size``, ``backend``, ``parallel_mode`` (at trainer creation),
  ``micro_batches_per_epoch``, ``global_step``, logged ``losses``.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

from axolotl.integrations.base import BasePlugin
from axolotl_run import forward_record

from axolotl_maskthought.toy.tiny import OFFLINE_ENV, cpu_config

RECORD_PLUGIN = "mp_capture.RecordInProcess"
MASKTHOUGHT_PLUGIN = "axolotl_maskthought.MaskThoughtPlugin"
FORWARD_KEYS = ("input_ids", "labels", "attention_mask", "position_ids", "cu_seq_lens_q", "cu_seq_lens_k")
FA_VARLEN_KEYS = ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")
RECORD: dict = {}  # filled by RecordInProcess during train_in_process

CAPTURE_DIR_ENV = "MASKTHOUGHT_CAPTURE_DIR"
CPU_ONLY_ENV = "MASKTHOUGHT_CAPTURE_CPU_ONLY"


def _digest(tensor) -> str:
    import torch

    data = tensor.detach().to("cpu", torch.int64).contiguous().numpy().tobytes()
    shape = ",".join(map(str, tensor.shape)).encode()
    return hashlib.sha256(shape + b"|" + data).hexdigest()[:16]


def _param_checksum(model) -> str:
    import torch

    digest = hashlib.sha256()
    for name, param in sorted(model.named_parameters(), key=lambda item: item[0]):
        if param.requires_grad:
            digest.update(name.encode())
            digest.update(param.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def _rebind(replacements: dict) -> None:
    """Every module of the package that holds one of the pure functions (its own module,
    or one that imported the name) gets the recording wrapper instead; the wrapper
    calls the original."""
    by_id = {id(original): wrapper for original, wrapper in replacements.items()}
    for name, module in list(sys.modules.items()):
        if module is None or not name.startswith("axolotl_maskthought"):
            continue
        for attribute, value in list(vars(module).items()):
            if id(value) in by_id:
                setattr(module, attribute, by_id[id(value)])


def _answer_p2p_probe_without_cuda() -> None:
    """Makes ``axolotl.utils.environment.check_cuda_p2p_support`` return True, as it
    does for a CPU build of torch, when ``torch.cuda.is_available()`` is False; with a
    CUDA device it asks torch as before. Test harness only (see ``CapturePerRank.register``)."""
    import torch
    from axolotl.utils import environment

    probe = environment.check_cuda_p2p_support
    if getattr(probe, "_no_cuda_answer", False):
        return

    def check_cuda_p2p_support() -> bool:
        if not torch.cuda.is_available():
            return True
        return probe()

    check_cuda_p2p_support._no_cuda_answer = True
    environment.check_cuda_p2p_support = check_cuda_p2p_support
    print(
        f"[mp_capture] {CPU_ONLY_ENV}=1: axolotl's CUDA P2P probe answers True when torch sees no CUDA device",
        file=sys.stderr,
    )


class CapturePerRank(BasePlugin):
    def __init__(self):
        super().__init__()
        self.trainer = None
        self.record = {"resets": [], "mask_hashes": {}, "removed": {}}

    def register(self, cfg):
        # CPU only: with WORLD_SIZE > 1, axolotl's prepare_optim_env (run by load_cfg
        # after this hook) asks torch.cuda.can_device_access_peer(rank, other rank) and
        # falls back to "P2P fine" only on AssertionError, which is what a CPU build of
        # torch raises. A CUDA build (axolotl 0.21's torch from PyPI) on a machine with
        # no NVIDIA driver raises RuntimeError("Found no NVIDIA driver ...") instead and
        # the run dies. With no CUDA device, the probe answers as on a CPU build.
        if os.environ.get(CPU_ONLY_ENV) == "1":
            _answer_p2p_probe_without_cuda()

    def load_datasets(self, cfg, preprocess: bool = False):
        # CPU only: with WORLD_SIZE > 1 axolotl's normalize_config pins
        # `device_map = {"": LOCAL_RANK}` (0.19: axolotl/utils/config/__init__.py:229-230),
        # an accelerator ordinal that transformers refuses without one ("Cannot access
        # accelerator device when none is available"). This is the last hook that runs
        # before the model loader reads cfg.device_map; the model stays on the CPU.
        if os.environ.get(CPU_ONLY_ENV) == "1":
            cfg.device_map = "cpu"
        return None

    def post_trainer_create(self, cfg, trainer):
        import torch.distributed as dist

        from axolotl_maskthought.engine import optimizer_reset
        from axolotl_maskthought.ops import masking, removal

        self.trainer = trainer
        record = self.record
        # The process group is gone by post_train: note what training runs under.
        record["world_size"] = dist.get_world_size() if dist.is_initialized() else 1
        record["backend"] = dist.get_backend() if dist.is_initialized() else None
        record["parallel_mode"] = str(trainer.args.parallel_mode)

        def current_step() -> str:
            return str(trainer.state.global_step)

        original_mask = masking.mask_thought

        def recording_mask(*args, **kwargs):
            masked, positions = original_mask(*args, **kwargs)
            record["mask_hashes"].setdefault(current_step(), []).append(_digest(positions))
            return masked, positions

        original_remove = removal.remove_cot

        def recording_remove(*args, **kwargs):
            result = original_remove(*args, **kwargs)
            record["removed"].setdefault(current_step(), []).append(result.removed_per_example.tolist())
            return result

        original_reset = optimizer_reset.reset_optimizer_state

        def recording_reset(optimizer, *args, **kwargs):
            record["resets"].append(trainer.state.global_step)
            return original_reset(optimizer, *args, **kwargs)

        _rebind({original_mask: recording_mask, original_remove: recording_remove, original_reset: recording_reset})

    def post_train(self, cfg, model):
        # Called twice by axolotl; the second write has the same content.
        trainer = self.trainer
        directory = Path(os.environ[CAPTURE_DIR_ENV])
        directory.mkdir(parents=True, exist_ok=True)
        rank = int(os.environ.get("RANK", "0"))
        payload = {
            **self.record,
            "rank": rank,
            "applied_counts": {str(k): v for k, v in trainer.applied_counts.items()},
            "micro_batches_per_epoch": trainer.micro_batches_per_epoch,
            "global_step": trainer.state.global_step,
            "param_checksum": _param_checksum(trainer.model),
            "losses": [entry["loss"] for entry in trainer.state.log_history if "loss" in entry],
        }
        (directory / f"rank{rank}.json").write_text(json.dumps(payload, indent=1, sort_keys=True))


# ---- in-process runs -----------------------------------------------------------------
def _record_forward(module, args, kwargs):
    entry = forward_record(module, args, kwargs, FORWARD_KEYS)
    entry["max_length_q"] = kwargs.get("max_length_q")
    RECORD["forwards"].append(entry)


def arithmetic_workspace(directory: Path, count: int, seed: int, terms: int, **model_kwargs) -> tuple[Path, Path]:
    """``count`` generated arithmetic rows written to ``directory/arith.jsonl``, and a
    tiny model (``build_tiny``, ``model_kwargs``) whose tokenizer was trained on them."""
    from axolotl_maskthought.data.files import write_jsonl
    from axolotl_maskthought.data.generators import generate_arithmetic
    from axolotl_maskthought.toy.tiny import build_tiny

    rows = generate_arithmetic(count, seed=seed, terms=terms)
    data = Path(directory) / "arith.jsonl"
    write_jsonl(data, rows)
    model = build_tiny(Path(directory) / "model", [r["question"] + " " + r["answer"] for r in rows], **model_kwargs)
    return data, model


class RecordInProcess(BasePlugin):
    def post_trainer_create(self, cfg, trainer):
        RECORD["cfg"] = cfg
        RECORD["trainer"] = trainer
        trainer.model.register_forward_pre_hook(_record_forward, with_kwargs=True)


class EmitFlashVarlenKwargs(BasePlugin):
    """Makes the training collator add flash-attention varlen metadata to every batch,
    computed from its position ids, as axolotl 0.21's packing collators do with
    flash-attention (``emit_fa_varlen_kwargs``, axolotl 0.21 core/builders/causal.py:659)."""

    def post_trainer_create(self, cfg, trainer):
        from transformers.modeling_flash_attention_utils import prepare_fa_kwargs_from_position_ids

        collator = trainer.data_collator
        holder = collator if hasattr(collator, "inner") else None
        inner = holder.inner if holder is not None else collator

        def emitting(features, *args, **kwargs):
            batch = inner(features, *args, **kwargs)
            (cu_q, cu_k), (max_q, max_k) = prepare_fa_kwargs_from_position_ids(batch["position_ids"])
            batch.update(
                cu_seq_lens_q=cu_q, cu_seq_lens_k=cu_k.clone(), max_length_q=int(max_q), max_length_k=int(max_k)
            )
            return batch

        if holder is not None:
            holder.inner = emitting
        else:
            trainer.data_collator = trainer.train_data_collator = emitting


def run_config(base_model, output_dir, datasets, **extra) -> dict:
    """A small CPU training config (keys in ``extra`` override; ``None`` removes a key)."""
    extra.setdefault("plugins", [MASKTHOUGHT_PLUGIN, RECORD_PLUGIN])
    extra.setdefault("sequence_len", 256)
    extra.setdefault("max_steps", 4)
    return cpu_config(base_model, datasets, output_dir, **extra)


def train_in_process(config_path) -> dict:
    """What ``axolotl train`` does, here (:func:`axolotl_maskthought.toy.experiment.train_in_process`,
    the package's one in-process runner); returns {"cfg", "trainer", "forwards"} as recorded.

    The config must list ``mp_capture.RecordInProcess``. Plugins registered by earlier
    runs in this process are forgotten first, as a fresh process would have none.
    """
    from axolotl.integrations.base import PluginManager

    from axolotl_maskthought.toy.experiment import train_in_process

    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
    PluginManager.get_instance().plugins.clear()
    RECORD.clear()
    RECORD.update(cfg=None, trainer=None, forwards=[])
    train_in_process(config_path)
    if RECORD["trainer"] is None:
        raise RuntimeError(f"{RECORD_PLUGIN} saw no trainer: is it listed in `plugins:`?")
    return dict(RECORD)
