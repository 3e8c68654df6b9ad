"""Instruments of bench/gpu_check.py: step timer, reset detector, sync counter, op recorder.

A :class:`Probe` follows one ``train()`` through the trainer's callback hooks
(:func:`callback`) and its ``get_batch_samples`` (:func:`probed`):

- the ``timed`` optimizer steps after ``warmup`` are timed between two
  ``torch.cuda.synchronize()`` calls; peak memory is read at their end;
- a step that begins with an empty optimizer state (after step 0) counts as a
  reset: ``reset_optimizer_state`` clears torch optimizers' state;
- on the ``check`` steps that follow:
  * ``torch.cuda.set_sync_debug_mode("warn")`` makes torch warn at every
    synchronising CUDA call; each warning is counted for the optimizer step it
    falls in and attributed to the innermost Python frame outside torch;
  * :class:`OpRecorder` (a ``TorchFunctionMode``) records the torch calls made by
    this package's code inside ``get_batch_samples`` (the dataloader's host work
    excluded): how many, whether any returns a tensor off the training device,
    and which read tensor data on the host (the CPU stand-in for sync counting);
  * a forward pre-hook records the devices of the model's inputs, and each raw
    batch is kept beside its transformed batch, to measure what the transforms did.
"""

from __future__ import annotations

import collections
import contextlib
import os
import sys
import time
import warnings
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

PACKAGE = "axolotl_maskthought"
SYNC_WARNING = "called a synchronizing CUDA operation"
# Calls that read tensor data on the host (a sync on CUDA); boolean-mask indexing is checked apart.
HOST_READS = {
    "item",
    "tolist",
    "__bool__",
    "__int__",
    "__float__",
    "__index__",
    "nonzero",
    "argwhere",
    "masked_select",
    "unique",
    "unique_consecutive",
    "cpu",
    "numpy",
    "repeat_interleave",
}
_TORCH_DIR = os.path.dirname(torch.__file__)


def site(depth: int = 2) -> str:
    """``path:line`` of the innermost caller outside torch, ``warnings`` and this module."""
    frame = sys._getframe(depth)
    while frame is not None:
        name = frame.f_code.co_filename
        if not (
            name.startswith(_TORCH_DIR)
            or name.startswith("<")
            or name == __file__
            or os.path.basename(name) == "warnings.py"
        ):
            parts = Path(name).parts
            for anchor in (PACKAGE, "transformers", "accelerate", "peft"):
                if anchor in parts:
                    return "/".join(parts[parts.index(anchor) :]) + f":{frame.f_lineno}"
            return f"{os.path.basename(name)}:{frame.f_lineno}"
        frame = frame.f_back
    return "?"


def origin(where: str) -> str:
    """The package a :func:`site` lies in (``other`` for scripts)."""
    return where.split("/")[0] if "/" in where else "other"


def _tensors(tree) -> list[torch.Tensor]:
    return [leaf for leaf in tree_leaves(tree) if isinstance(leaf, torch.Tensor)]


class OpRecorder(TorchFunctionMode):
    """Hands the torch calls made from this package's code to the probe, unless ``paused``."""

    def __init__(self, probe: Probe):
        super().__init__()
        self.probe, self.paused = probe, False

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if not self.paused:
            where = site()
            if where.startswith(PACKAGE):
                self.probe.note_op(getattr(func, "__name__", str(func)), args, out, where)
        return out


class Probe:
    """Measurements of one run at a time (:meth:`begin` starts a run, :meth:`record` returns it)."""

    def __init__(self, warmup: int, timed: int, check: int, device: torch.device):
        self.warmup, self.timed, self.check = warmup, timed, check
        self.device, self.cuda = device, device.type == "cuda"
        self.checking = False

    def begin(self, trainer) -> None:
        self.trainer, self.t0, self.step_seconds, self.peak_bytes = trainer, None, None, None
        self.resets, self.checking = 0, False
        self.syncs: list[collections.Counter] = []
        self.sync_sites, self.host_reads, self.host_outputs = (collections.Counter() for _ in range(3))
        self.ops, self.forward_devices, self.batch_devices, self.pairs = 0, set(), set(), []
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        self.start_bytes = torch.cuda.memory_allocated() if self.cuda else None

    # ---- callback hooks ----
    def step_begin(self, step: int) -> None:
        optimizer = getattr(self.trainer, "optimizer", None)
        while optimizer is not None and hasattr(getattr(optimizer, "optimizer", None), "state"):
            optimizer = optimizer.optimizer  # accelerate's wrapper -> the torch optimizer
        if step > 0 and optimizer is not None and not any(optimizer.state.values()):
            self.resets += 1

    def step_end(self, step: int) -> None:
        """``step``: optimizer steps done. Opens the sync bucket of the next step while checking."""
        if step == self.warmup and self.timed:
            self._synchronize()
            self.t0 = time.perf_counter()
        elif step == self.warmup + self.timed:
            self._synchronize()
            self.step_seconds = (time.perf_counter() - self.t0) / self.timed if self.timed else None
            self.peak_bytes = torch.cuda.max_memory_allocated() if self.cuda else None
            self._set_checking(True)
        elif step == self.warmup + self.timed + self.check:
            self._set_checking(False)
        if self.checking:
            self.syncs.append(collections.Counter())

    def _synchronize(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def _set_checking(self, on: bool) -> None:
        self.checking = on
        if self.cuda:
            torch.cuda.set_sync_debug_mode("warn" if on else 0)

    # ---- sync counting ----
    @contextlib.contextmanager
    def warnings_counted(self):
        """Route torch's sync warnings to :meth:`on_warning`, every one (no de-duplication)."""
        with warnings.catch_warnings():
            warnings.filterwarnings("always", message=f".*{SYNC_WARNING}")
            self._showwarning = warnings.showwarning
            warnings.showwarning = self.on_warning
            yield

    def on_warning(self, message, category, filename, lineno, file=None, line=None):
        if SYNC_WARNING not in str(message):
            return self._showwarning(message, category, filename, lineno, file, line)
        if self.checking and self.syncs:
            where = site()
            self.syncs[-1][origin(where)] += 1
            self.sync_sites[where] += 1

    def count_syncs(self, fn) -> int:
        """Synchronisations counted while ``fn()`` runs (the method's self-test). Needs CUDA."""
        torch.cuda.synchronize()
        self.syncs, self.sync_sites = [collections.Counter()], collections.Counter()
        with self.warnings_counted():
            self._set_checking(True)
            try:
                fn()
            finally:
                self._set_checking(False)
        return sum(self.syncs[0].values())

    # ---- op recording and effects ----
    def note_op(self, name: str, args, out, where: str) -> None:
        self.ops += 1
        if any(t.device.type != self.device.type for t in _tensors(out)):
            self.host_outputs[f"{where} {name}"] += 1
        index = args[1] if name in ("__getitem__", "__setitem__", "index_put_") and len(args) > 1 else None
        if name in HOST_READS or any(t.dtype == torch.bool for t in _tensors(index)):
            self.host_reads[f"{where} {name}"] += 1

    def forward_hook(self, module, args, kwargs):
        if self.checking:
            self.forward_devices.update(str(t.device) for t in _tensors((args, kwargs)))

    def record(self, mode: str) -> dict:
        """The run's figures; the masked fraction (masked_thought only) and tokens removed per row."""
        changed = eligible = removed = rows = 0
        for raw, new in self.pairs:
            rows += raw["input_ids"].shape[0]
            removed += int(raw["attention_mask"].sum() - new["attention_mask"].sum())
            if mode == "masked_thought":  # same positions before and after
                trained = raw["labels"] != -100
                changed += int(((raw["input_ids"] != new["input_ids"]) & trained).sum())
                eligible += int(trained.sum())
        return {
            "step_seconds": self.step_seconds,
            "peak_bytes": self.peak_bytes,
            "start_bytes": self.start_bytes,
            "resets": self.resets,
            "syncs_per_step": [dict(c) for c in self.syncs] if self.cuda else None,
            "sync_sites": dict(self.sync_sites),
            "transform_ops_per_step": self.ops / max(1, self.check),
            "host_reads": dict(self.host_reads),
            "host_outputs": dict(self.host_outputs),
            "forward_devices": sorted(self.forward_devices),
            "batch_devices": sorted(self.batch_devices),
            "masked_fraction": changed / eligible if eligible else None,
            "removed_tokens_per_row": removed / rows if rows else None,
            "check_steps": self.check,
        }


def callback(probe: Probe):
    """A ``TrainerCallback`` driving ``probe``'s step hooks."""
    from transformers import TrainerCallback

    class ProbeCallback(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            probe.step_begin(state.global_step)

        def on_step_end(self, args, state, control, **kwargs):
            probe.step_end(state.global_step)

    return ProbeCallback()


def probed(cls):
    """``cls`` whose ``get_batch_samples`` is recorded by ``self.probe`` on its check steps."""

    class Probed(cls):
        probe: Probe | None = None

        def get_batch_samples(self, epoch_iterator, num_batches, device):
            probe = self.probe
            if probe is None or not probe.checking:
                return super().get_batch_samples(epoch_iterator, num_batches, device)
            recorder, raw = OpRecorder(probe), []

            def fetch():  # the dataloader's host work is not the transform's: not recorded
                recorder.paused = True
                try:
                    for batch in epoch_iterator:
                        raw.append({k: batch[k].clone() for k in ("input_ids", "labels", "attention_mask")})
                        recorder.paused = False
                        yield batch
                        recorder.paused = True
                finally:
                    recorder.paused = False

            with recorder:
                batches, num_items = super().get_batch_samples(fetch(), num_batches, device)
            for before, batch in zip(raw, batches):
                probe.pairs.append((before, dict(batch)))
                probe.batch_devices.update(str(t.device) for t in _tensors(dict(batch)))
            return batches, num_items

    Probed.__name__ = Probed.__qualname__ = f"Probed{cls.__name__}"
    return Probed
