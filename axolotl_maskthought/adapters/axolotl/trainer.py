"""The trainer: applies CoT removal, then Masked Thought, to each training micro-batch.

Everything step-dependent happens here, in the trainer process and on the
device, right after the HF loop has fetched the micro-batches of an optimizer
step (``get_batch_samples``) and before the loss normaliser is counted, so the
number of trained tokens matches what the model sees. The maths lives in
``masking``, ``schedule`` and ``removal``; this module only wires it in.
"""

from __future__ import annotations

import json
import logging
import math
import os

import torch
from axolotl.core.trainers.base import AxolotlTrainer

from ...args import CoTRemovalConfig, MaskedThoughtConfig
from ...collator import COT_MASK, CoTSpanCollator
from ...ops.masking import make_generator, mask_rate, mask_thought, step_seed
from ...ops.removal import remove_cot
from ...ops.schedule import (
    REMOVE_ALL,
    first_micro_batch,
    in_full_cot_epochs,
    optimizer_step_count,
    should_reset_optimizer,
    smoothing_distribution,
)

LOG = logging.getLogger("axolotl.maskthought")
STATE_FILE = "maskthought_state.json"
# Flash-attention varlen metadata that axolotl >= 0.21's packing collators compute from
# the position ids (`emit_fa_varlen_kwargs`); it describes the rows before CoT removal,
# so it is dropped and transformers derives it again from the new position ids.
FA_VARLEN_KEYS = ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1


class MaskThoughtTrainer(AxolotlTrainer):
    """AxolotlTrainer with per-step CoT removal and Masked Thought."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        padding_side = getattr(self.processing_class, "padding_side", "right")
        self.data_collator = CoTSpanCollator(self.data_collator, padding_side)
        self.train_data_collator = self.data_collator
        if self.eval_data_collator is not None:
            self.eval_data_collator = CoTSpanCollator(self.eval_data_collator, padding_side)
        self.masked_thought: MaskedThoughtConfig | None = None
        self.cot_removal: CoTRemovalConfig | None = None
        self.micro_batches_per_epoch: int | None = None
        self.count_in_force = 0
        self.all_cot_removed_last_batch = False
        self.applied_counts: dict[int, int] = {}  # optimizer step -> count (for tests, `schedule`)
        self._resume_checkpoint: str | None = None
        self._replacement_id: int | None = None

    # ---- configuration -------------------------------------------------------
    def configure_maskthought(self, masked_thought, cot_removal) -> None:
        """Called by the plugin once the trainer exists (validated blocks or dicts)."""
        if isinstance(masked_thought, dict):
            masked_thought = MaskedThoughtConfig(**masked_thought)
        if isinstance(cot_removal, dict):
            cot_removal = CoTRemovalConfig(**cot_removal)
        self.masked_thought, self.cot_removal = masked_thought, cot_removal
        self._smoothing_probs = (
            smoothing_distribution(cot_removal.smoothing_lambda)
            if cot_removal is not None and math.isfinite(cot_removal.smoothing_lambda or math.inf)
            else None  # null / .inf: no smoothing
        )
        needs_span = cot_removal is not None or (masked_thought is not None and masked_thought.scope == "reasoning")
        columns = getattr(self.train_dataset, "column_names", None)
        if needs_span and columns is not None and COT_MASK not in columns:
            raise ValueError(
                "the training data has no CoT span (`cot_mask` column): `cot_removal` and "
                "`masked_thought.scope: reasoning` need a dataset `type:` of "
                "axolotl_maskthought.strategies.{gsm8k,icot,chat_template}"
            )
        if masked_thought is not None:
            self._replacement_id = self._resolve_replacement_id(masked_thought)

    def _resolve_replacement_id(self, config: MaskedThoughtConfig) -> int | None:
        tokenizer = self.processing_class
        if config.replacement == "pad":
            if tokenizer.pad_token_id is None:
                raise ValueError("`masked_thought.replacement: pad` but the tokenizer has no pad token; set `special_tokens.pad_token`")
            return tokenizer.pad_token_id
        if config.replacement == "mask_token":
            token_id = tokenizer.convert_tokens_to_ids(config.mask_token)
            if token_id is None or token_id == tokenizer.unk_token_id:
                raise ValueError(f"`masked_thought.mask_token` {config.mask_token!r} is not in the tokenizer")
            return token_id
        return None

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        if self._signature_columns is not None and COT_MASK not in self._signature_columns:
            self._signature_columns = list(self._signature_columns) + [COT_MASK]

    def create_optimizer(self, *args, **kwargs):
        optimizer = super().create_optimizer(*args, **kwargs)
        if optimizer is not None:
            from ...ops.optimizer_reset import record_fresh_state

            record_fresh_state(optimizer)  # what a CoT-removal reset goes back to
        return optimizer

    # ---- schedule ---------------------------------------------------------------
    def get_train_dataloader(self):
        dataloader = super().get_train_dataloader()
        batches = torch.tensor(len(dataloader), device=self.args.device)
        if _distributed():
            # Every rank must follow the same schedule, even if packing estimates differ.
            torch.distributed.all_reduce(batches, op=torch.distributed.ReduceOp.MIN)
        self.micro_batches_per_epoch = int(batches.item())
        return dataloader

    def removal_count(self, optimizer_step: int) -> int:
        config = self.cot_removal
        if optimizer_step < 0:
            return 0
        return optimizer_step_count(
            optimizer_step,
            self.args.gradient_accumulation_steps,
            self.micro_batches_per_epoch,
            config.tokens_per_epoch,
            config.start_epoch,
            config.remove_all_at,
        )

    def _begin_optimizer_step(self, step: int) -> None:
        count = self.removal_count(step)
        previous = self.removal_count(step - 1) if step > 0 else 0
        if self.cot_removal.reset_optimizer and count > previous:
            all_removed = torch.tensor(int(self.all_cot_removed_last_batch), device=self.args.device)
            if _distributed():
                torch.distributed.all_reduce(all_removed, op=torch.distributed.ReduceOp.MIN)
            if should_reset_optimizer(previous, count, bool(all_removed.item())) and self.optimizer is not None:
                from ...ops.optimizer_reset import reset_optimizer_state

                reset = reset_optimizer_state(self.optimizer)
                LOG.info("step %d: CoT removal count %s -> %s, optimizer state reset (%d tensors' states)",
                         step, _show(previous), _show(count), reset)
                self.store_metrics({"cot_removal/optimizer_reset": (1.0, "max")}, "train")
        self.count_in_force = count
        self.applied_counts[step] = count

    # ---- per-step transforms --------------------------------------------------
    def get_batch_samples(self, epoch_iterator, num_batches, device):
        if self.masked_thought is None and self.cot_removal is None:
            return super().get_batch_samples(epoch_iterator, num_batches, device)
        batch_samples = []
        for _ in range(num_batches):
            try:
                batch_samples.append(next(epoch_iterator))
            except StopIteration:
                break
        step = self.state.global_step
        if self.cot_removal is not None:
            self._begin_optimizer_step(step)
        for micro_step, batch in enumerate(batch_samples):
            self._transform_training_batch(batch, step, micro_step)
        return batch_samples, self._get_num_items_in_batch(batch_samples, device)

    def _transform_training_batch(self, batch, step: int, micro_step: int) -> None:
        cot_mask = batch.pop(COT_MASK, None)
        rank = self.args.process_index
        if self.cot_removal is not None:
            first = first_micro_batch(step, self.args.gradient_accumulation_steps, self.micro_batches_per_epoch)
            if cot_mask is None:
                raise ValueError("`cot_removal` needs the `cot_mask` column; the batch has none")
            if in_full_cot_epochs(first, self.micro_batches_per_epoch, self.cot_removal.start_epoch):
                self.all_cot_removed_last_batch = False
            else:
                generator = make_generator(step_seed(self.args.seed, rank, step, micro_step, "removal"), cot_mask.device)
                for key in FA_VARLEN_KEYS:
                    batch.pop(key, None)
                result = remove_cot(
                    {**batch, COT_MASK: cot_mask},
                    cot_mask,
                    self.count_in_force,
                    self.cot_removal.side,
                    smoothing_probs=self._smoothing_probs,
                    generator=generator,
                    keep_position=self.cot_removal.keep_position,
                    pad_token_id=self._pad_id(),
                    padding_side=getattr(self.processing_class, "padding_side", "right"),
                )
                cot_mask = result.batch.pop(COT_MASK)
                batch.clear()
                batch.update(result.batch)
                self.all_cot_removed_last_batch = result.all_cot_removed
                stats = result.stats()
                self.store_metrics(
                    {
                        "cot_removal/scheduled": float(_show(self.count_in_force)),  # floats: axolotl averages them
                        "cot_removal/removed_tokens_mean": stats["removed_tokens_mean"],
                        "cot_removal/no_cot_fraction": stats["no_cot_fraction"],
                    },
                    "train",
                )
        if self.masked_thought is not None:
            self._mask(batch, cot_mask, step, micro_step, rank)

    def _mask(self, batch, cot_mask, step: int, micro_step: int, rank: int) -> None:
        config = self.masked_thought
        labels = batch["labels"]
        eligible = labels != -100
        if config.scope == "reasoning":
            if cot_mask is None:
                raise ValueError("`masked_thought.scope: reasoning` needs the `cot_mask` column; the batch has none")
            eligible = eligible & (cot_mask != 0)
        rate = mask_rate(step, self.state.max_steps, config.ratio, config.warmup)
        generator = make_generator(step_seed(self.args.seed, rank, step, micro_step), labels.device)
        masked, positions = mask_thought(
            batch["input_ids"],
            eligible,
            rate,
            config.replacement,
            generator,
            vocab_size=len(self.processing_class),
            replacement_id=self._replacement_id,
        )
        batch["input_ids"] = masked
        eligible_count = int(eligible.sum().item())
        self.store_metrics(
            {
                "masked_thought/rate": rate,
                "masked_thought/masked_fraction": positions.sum().item() / max(1, eligible_count),
            },
            "train",
        )

    def _pad_id(self) -> int:
        tokenizer = self.processing_class
        for token_id in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0):
            if token_id is not None:
                return token_id
        return 0

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        cot_mask = inputs.pop(COT_MASK, None)
        if cot_mask is not None and not model.training and self.cot_removal is not None:
            # Evaluation: the count in force, no smoothing, no masking.
            for key in FA_VARLEN_KEYS:
                inputs.pop(key, None)
            result = remove_cot(
                {**inputs},
                cot_mask,
                self.count_in_force,
                self.cot_removal.side,
                keep_position=self.cot_removal.keep_position,
                pad_token_id=self._pad_id(),
                padding_side=getattr(self.processing_class, "padding_side", "right"),
            )
            inputs.clear()
            inputs.update(result.batch)
        return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)

    # ---- checkpoint state ---------------------------------------------------------
    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        if resume_from_checkpoint is True:
            from transformers.trainer_utils import get_last_checkpoint

            resume_from_checkpoint = get_last_checkpoint(self.args.output_dir)
        if isinstance(resume_from_checkpoint, str):
            self._load_maskthought_state(resume_from_checkpoint)
        return super().train(resume_from_checkpoint, *args, **kwargs)

    def _load_maskthought_state(self, checkpoint: str) -> None:
        path = os.path.join(checkpoint, STATE_FILE)
        if os.path.exists(path):
            with open(path, encoding="utf-8") as handle:
                state = json.load(handle)
            self.all_cot_removed_last_batch = bool(state.get("all_cot_removed_last_batch", False))
            self.count_in_force = int(state.get("count_in_force", 0))

    def _save_checkpoint(self, model, trial, *args, **kwargs):
        super()._save_checkpoint(model, trial, *args, **kwargs)
        if self.cot_removal is None or not self.args.should_save:
            return
        from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

        folder = os.path.join(self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
        if os.path.isdir(folder):
            with open(os.path.join(folder, STATE_FILE), "w", encoding="utf-8") as handle:
                json.dump(
                    {
                        "count_in_force": self.count_in_force,
                        "all_cot_removed_last_batch": self.all_cot_removed_last_batch,
                    },
                    handle,
                )


def _show(count: int) -> int:
    """Counts as logged: -1 stands for "the whole CoT"."""
    return -1 if count == REMOVE_ALL else count
