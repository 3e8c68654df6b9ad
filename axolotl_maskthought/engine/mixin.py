"""The engine: per-step CoT removal and Masked Thought for any ``transformers.Trainer``.

:class:`MaskThoughtMixin` goes before a Trainer class in the bases
(``class T(MaskThoughtMixin, Trainer)``) and owns all per-step state: the
removal schedule and the count in force, the optimizer-reset decision, the masks,
the metrics and what a checkpoint must carry. It depends on torch and transformers
only; the maths lives in :mod:`axolotl_maskthought.ops`.

Everything step-dependent happens in the trainer process, on the device: right
after the HF loop has fetched the micro-batches of an optimizer step
(``get_batch_samples``) and before the loss normaliser ``num_items_in_batch`` is
counted, so the count matches what the model sees. Evaluation batches are
transformed in ``prediction_step``, before transformers counts their labels.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from collections.abc import Callable

import torch

from axolotl_maskthought.config import CoTRemovalConfig, MaskedThoughtConfig
from axolotl_maskthought.engine.collator import COT_MASK, CoTSpanCollator
from axolotl_maskthought.engine.metrics import DeviceMetrics
from axolotl_maskthought.engine.replacement import replacement_conflict
from axolotl_maskthought.ops.masking import make_generator, mask_rate, mask_thought, step_seed
from axolotl_maskthought.ops.removal import cot_flags, remove_cot
from axolotl_maskthought.ops.schedule import (
    REMOVE_ALL,
    LossGateState,
    first_micro_batch,
    gate_advance,
    gate_observe,
    gate_opens,
    logged_count,
    optimizer_step_count,
    should_reset_optimizer,
    show_count,
    smoothing_distribution,
    start_optimizer_step,
    step_pace_count,
)

LOG = logging.getLogger("axolotl.maskthought")
STATE_FILE = "maskthought_state.json"
# Flash-attention varlen metadata that packing collators (axolotl >= 0.21,
# transformers' DataCollatorWithFlattening) compute from the position ids; it
# describes the rows before CoT removal, so it is dropped and transformers derives
# it again from the new position ids.
FA_VARLEN_KEYS = ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")


def _distributed() -> bool:
    return (
        torch.distributed.is_available()
        and torch.distributed.is_initialized()
        and torch.distributed.get_world_size() > 1
    )


class MaskThoughtMixin:
    """Trainer mixin: Stepwise Internalization (arXiv 2405.14838) and Masked Thought (arXiv 2403.02178).

    Keyword arguments added to the Trainer's: ``masked_thought`` and ``cot_removal``
    (a :class:`~axolotl_maskthought.config.MaskedThoughtConfig` /
    :class:`~axolotl_maskthought.config.CoTRemovalConfig`, a dict of their fields, or
    None = off). Both None: the trainer behaves exactly as its base class. They can
    also be set after construction with :meth:`configure_maskthought`.

    Training rows carry ``input_ids``, ``labels`` and a ``cot_mask`` column (per
    token, 1 = CoT, 0 = not; chat rows also mark their think block's layout, see
    :mod:`axolotl_maskthought.ops.removal`) when ``cot_removal`` or ``masked_thought.scope: reasoning``
    is on. The data collator is wrapped in :class:`~axolotl_maskthought.engine.collator.CoTSpanCollator`
    so that ``cot_mask`` is padded like ``input_ids``.

    Logged with the training loss: ``masked_thought/rate``,
    ``masked_thought/masked_fraction``, ``cot_removal/scheduled`` (-1 = whole CoT),
    ``cot_removal/removed_tokens_mean``, ``cot_removal/no_cot_fraction``,
    ``cot_removal/optimizer_reset``; with ``loss_gate`` also ``cot_removal/gate_loss`` (the
    stage's averaged training loss the gate decided on) and ``cot_removal/gate_threshold``
    (the level it waits for; absent before the first removal).
    """

    def __init__(self, *args, masked_thought=None, cot_removal=None, **kwargs):
        super().__init__(*args, **kwargs)
        padding_side = getattr(self.processing_class, "padding_side", "right")
        for name in ("data_collator", "train_data_collator", "eval_data_collator"):
            collator = getattr(self, name, None)
            if collator is not None and not isinstance(collator, CoTSpanCollator):
                setattr(self, name, CoTSpanCollator(collator, padding_side))
        self.masked_thought: MaskedThoughtConfig | None = None
        self.cot_removal: CoTRemovalConfig | None = None
        self.micro_batches_per_epoch: int | None = None
        self.count_in_force = 0
        self.all_cot_removed_last_batch: torch.Tensor | bool = False
        self.applied_counts: dict[int, int] = {}  # optimizer step -> count in force
        self.gate_state: LossGateState | None = None  # loss_gate pace: where the gate stands
        self._pending_step_loss: torch.Tensor | None = None  # this optimizer step's loss, not yet folded
        self.maskthought_metrics = DeviceMetrics()
        self._smoothing_probs: torch.Tensor | None = None
        self._replacement_id: int | None = None
        self._evaluation_metrics: list[Callable[[object, str], dict[str, float]]] = []
        self._evaluating = False
        # True: rows keep the width the collator gave them after CoT removal (axolotl's
        # `pad_to_sequence_len`), padded back as the collator pads; False: removal narrows them.
        self.keep_batch_width = False
        if masked_thought is not None or cot_removal is not None:
            self.configure_maskthought(masked_thought, cot_removal)

    # ---- configuration -------------------------------------------------------
    def configure_maskthought(self, masked_thought, cot_removal) -> None:
        """Switch the techniques on (validated config models, dicts of their fields, or None).

        Raises ValueError when the training data has no ``cot_mask`` column but the
        settings need it, or when the replacement token cannot be resolved.
        """
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
                "`masked_thought.scope: reasoning` need rows tokenized by "
                "axolotl_maskthought.strategies.{gsm8k,icot,chat_template} or formats.tokenize_cot"
            )
        if masked_thought is not None:
            self._replacement_id = self._resolve_replacement_id(masked_thought)

    def _resolve_replacement_id(self, config: MaskedThoughtConfig) -> int | None:
        tokenizer = self.processing_class
        if config.replacement == "random":
            if tokenizer is None or not getattr(tokenizer, "vocab_size", None):
                raise ValueError(
                    "`masked_thought.replacement: random` needs the tokenizer (`processing_class`) for its vocabulary size"
                )
            return None
        if tokenizer is None:
            raise ValueError(
                f"`masked_thought.replacement: {config.replacement}` needs the tokenizer (`processing_class`)"
            )
        if config.replacement == "pad":
            if tokenizer.pad_token_id is None:
                raise ValueError(
                    "`masked_thought.replacement: pad` but the tokenizer has no pad token; set `special_tokens.pad_token`"
                )
            token_id = tokenizer.pad_token_id
        else:
            token_id = tokenizer.convert_tokens_to_ids(config.mask_token)
            if token_id is None or token_id == tokenizer.unk_token_id:
                raise ValueError(f"`masked_thought.mask_token` {config.mask_token!r} is not in the tokenizer")
        conflict = replacement_conflict(config.replacement, token_id, tokenizer)
        if conflict:
            raise ValueError(conflict)
        return token_id

    @property
    def maskthought_active(self) -> bool:
        return self.masked_thought is not None or self.cot_removal is not None

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        if self._signature_columns is not None and COT_MASK not in self._signature_columns:
            self._signature_columns = list(self._signature_columns) + [COT_MASK]

    def create_optimizer(self, *args, **kwargs):
        optimizer = super().create_optimizer(*args, **kwargs)
        if optimizer is not None:  # also before configure_maskthought: recording is cheap and once only
            from axolotl_maskthought.engine.optimizer_reset import record_fresh_state

            record_fresh_state(optimizer)  # what a reset goes back to (Muon's use_muon, Adagrad's sum, ...)
        return optimizer

    # ---- schedule ---------------------------------------------------------------
    def get_train_dataloader(self):
        dataloader = super().get_train_dataloader()
        try:
            length = len(dataloader)
        except TypeError:
            if self.cot_removal is not None:
                raise ValueError(
                    "`cot_removal` schedules by micro-batches per epoch: the training dataset must have a length"
                ) from None
            return dataloader
        batches = torch.tensor(length, device=self.args.device)
        if _distributed():
            # Every rank must follow the same schedule, even if packing estimates differ.
            torch.distributed.all_reduce(batches, op=torch.distributed.ReduceOp.MIN)
        self.micro_batches_per_epoch = int(batches.item())
        return dataloader

    def removal_start_step(self) -> int:
        """First optimizer step of the removal phase (a pace in optimizer steps)."""
        config = self.cot_removal
        return start_optimizer_step(
            self.args.gradient_accumulation_steps, self.micro_batches_per_epoch, config.start_epoch, config.start_step
        )

    def in_full_cot_phase(self, optimizer_step: int) -> bool:
        """True while nothing is removed yet and smoothing is off (``start_epoch`` / ``start_step``)."""
        config = self.cot_removal
        if config.pace == "tokens_per_epoch":
            first = first_micro_batch(
                optimizer_step, self.args.gradient_accumulation_steps, self.micro_batches_per_epoch
            )
            return first < config.start_epoch * self.micro_batches_per_epoch
        return optimizer_step < self.removal_start_step()

    def removal_count(self, optimizer_step: int) -> int:
        """The removal count in force at ``optimizer_step`` (:data:`REMOVE_ALL` = whole CoT).

        With ``loss_gate`` the count depends on the losses seen so far: this is the gate's
        count now, whatever the step.
        """
        config = self.cot_removal
        if optimizer_step < 0:
            return 0
        if config.pace == "loss_gate":
            gated = self.gate_state.count if self.gate_state is not None else 0
            return REMOVE_ALL if config.remove_all_at is not None and gated >= config.remove_all_at else gated
        if config.pace == "steps_per_token":
            return step_pace_count(
                optimizer_step, config.steps_per_token, self.removal_start_step(), config.remove_all_at
            )
        return optimizer_step_count(
            optimizer_step,
            self.args.gradient_accumulation_steps,
            self.micro_batches_per_epoch,
            config.tokens_per_epoch,
            config.start_epoch,
            config.remove_all_at,
        )

    # ---- loss gate -------------------------------------------------------------------
    def training_step(self, model, inputs, *args, **kwargs):
        loss = super().training_step(model, inputs, *args, **kwargs)
        if self.cot_removal is not None and self.cot_removal.loss_gate is not None:
            # Summed over the micro-batches of the step, as the Trainer sums what it logs as `loss`.
            loss = loss.detach()
            self._pending_step_loss = loss if self._pending_step_loss is None else self._pending_step_loss + loss
        return loss

    def _fold_step_loss(self) -> None:
        """Fold the finished step's loss into the gate: averaged over ranks, so every rank decides alike."""
        pending, self._pending_step_loss = self._pending_step_loss, None
        if self.gate_state is None:
            self.gate_state = LossGateState(changed_at=self.removal_start_step())
        if pending is None:
            return
        value = pending.detach().float().reshape(1).to(self.args.device)
        if _distributed():
            torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.SUM)
            value = value / torch.distributed.get_world_size()
        self.gate_state = gate_observe(self.gate_state, float(value.item()), self.cot_removal.loss_gate.ema_beta)

    def _advance_gate(self, step: int) -> None:
        """Fold the last step's loss, then remove one more token at ``step`` if the gate opens."""
        gate = self.cot_removal.loss_gate
        self._fold_step_loss()
        level, threshold = self.gate_state.level, self.gate_state.threshold(gate.recovery)  # what it decides on
        if gate_opens(self.gate_state, step, gate.min_steps, gate.max_steps, gate.recovery):
            self.gate_state = gate_advance(self.gate_state, step)
        if level is not None:
            self.maskthought_metrics.add("cot_removal/gate_loss", level)
        if threshold is not None:
            self.maskthought_metrics.add("cot_removal/gate_threshold", threshold)

    def _begin_optimizer_step(self, step: int) -> None:
        if self.cot_removal.pace == "loss_gate":
            previous = self.removal_count(step)
            self._advance_gate(step)
            count = self.removal_count(step)
        else:
            count = self.removal_count(step)
            previous = self.removal_count(step - 1) if step > 0 else 0
        if self.cot_removal.reset_optimizer and count > previous:
            # The only host sync of a removal step, and only when the count grows.
            all_removed = torch.as_tensor(self.all_cot_removed_last_batch, device=self.args.device).int()
            if _distributed():
                torch.distributed.all_reduce(all_removed, op=torch.distributed.ReduceOp.MIN)
            if should_reset_optimizer(previous, count, bool(all_removed.item())) and self.optimizer is not None:
                from axolotl_maskthought.engine.optimizer_reset import reset_optimizer_state

                reset = reset_optimizer_state(self.optimizer)
                LOG.info(
                    "step %d: CoT removal count %s -> %s, optimizer state reset (%d tensors' states)",
                    step,
                    show_count(previous),
                    show_count(count),
                    reset,
                )
                self.maskthought_metrics.add("cot_removal/optimizer_reset", 1.0, "max")
        self.count_in_force = count
        self.applied_counts[step] = count

    # ---- per-step transforms --------------------------------------------------
    def get_batch_samples(self, epoch_iterator, num_batches, device):
        if not self.maskthought_active:
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
        # Counted after the transforms: the loss divisor sees the labels the model sees.
        return batch_samples, self._get_num_items_in_batch(batch_samples, device)

    def _transform_training_batch(self, batch, step: int, micro_step: int) -> None:
        cot_mask = batch.pop(COT_MASK, None)
        rank = self.args.process_index
        if self.cot_removal is not None:
            if cot_mask is None:
                raise ValueError("`cot_removal` needs the `cot_mask` column; the batch has none")
            if self.in_full_cot_phase(step):
                self.all_cot_removed_last_batch = False
            else:
                generator = make_generator(
                    step_seed(self.args.seed, rank, step, micro_step, "removal"), cot_mask.device
                )
                cot_mask = self._remove_cot(batch, cot_mask, self._smoothing_probs, generator, training=True)
        if self.masked_thought is not None:
            self._mask(batch, cot_mask, step, micro_step, rank)

    def _remove_cot(self, batch, cot_mask, smoothing_probs, generator, training: bool) -> torch.Tensor:
        """Apply the count in force to ``batch`` in place; return the new ``cot_mask``."""
        for key in FA_VARLEN_KEYS:
            batch.pop(key, None)
        result = remove_cot(
            batch,
            cot_mask,
            self.count_in_force,
            self.cot_removal.side,
            smoothing_probs=smoothing_probs,
            generator=generator,
            keep_position=self.cot_removal.keep_position,
            pad_token_id=self._pad_id(),
            padding_side=getattr(self.processing_class, "padding_side", "right"),
        )
        cot_mask = result.cot_mask
        width = batch["input_ids"].shape[1]
        batch.clear()
        batch.update(result.batch)
        if self.keep_batch_width:
            cot_mask = self._pad_back(batch, cot_mask, width)
        if training:
            self.all_cot_removed_last_batch = result.all_cot_removed_flag()
            stats = result.stat_tensors()
            metrics = self.maskthought_metrics
            metrics.add("cot_removal/scheduled", float(logged_count(self.count_in_force)))
            metrics.add("cot_removal/removed_tokens_mean", stats["removed_tokens_mean"])
            metrics.add("cot_removal/no_cot_fraction", stats["no_cot_fraction"])
        return cot_mask

    def _pad_back(self, batch, cot_mask, width: int) -> torch.Tensor:
        """Pad the (B, T') tensors of ``batch`` and ``cot_mask`` back to ``width`` columns
        after removal, as axolotl's collator pads (pad id, labels -100, mask 0, position
        ids 0, 1, ... as a padding segment of their own); returns the padded ``cot_mask``."""
        current = batch["input_ids"].shape[1]
        extra = width - current
        if extra <= 0:
            return cot_mask
        left = getattr(self.processing_class, "padding_side", "right") == "left"
        fills = {"input_ids": self._pad_id(), "labels": -100}

        def pad(key, value):
            if key == "position_ids":
                tail = torch.arange(extra, device=value.device, dtype=value.dtype).expand(value.shape[0], extra)
            else:
                tail = torch.full((value.shape[0], extra), fills.get(key, 0), device=value.device, dtype=value.dtype)
            return torch.cat([tail, value] if left else [value, tail], dim=1)

        for key, value in list(batch.items()):
            if torch.is_tensor(value) and value.dim() == 2 and value.shape[1] == current:
                batch[key] = pad(key, value)
        return pad(COT_MASK, cot_mask)

    def _mask(self, batch, cot_mask, step: int, micro_step: int, rank: int) -> None:
        config = self.masked_thought
        labels = batch["labels"]
        eligible = labels != -100
        if config.scope == "reasoning":
            if cot_mask is None:
                raise ValueError("`masked_thought.scope: reasoning` needs the `cot_mask` column; the batch has none")
            eligible = eligible & cot_flags(cot_mask)
        rate = mask_rate(step, self.state.max_steps, config.ratio, config.warmup)
        generator = make_generator(step_seed(self.args.seed, rank, step, micro_step), labels.device)
        masked, positions = mask_thought(
            batch["input_ids"],
            eligible,
            rate,
            config.replacement,
            generator,
            # The base vocabulary, as the official code draws: never an added token
            # (pad, <mask>, chat-template markers, thinking tags).
            vocab_size=self.processing_class.vocab_size,
            replacement_id=self._replacement_id,
        )
        batch["input_ids"] = masked
        self.maskthought_metrics.add("masked_thought/rate", rate)
        self.maskthought_metrics.add("masked_thought/masked_fraction", positions.sum() / eligible.sum().clamp(min=1))

    def _pad_id(self) -> int:
        tokenizer = self.processing_class
        for token_id in (getattr(tokenizer, "pad_token_id", None), getattr(tokenizer, "eos_token_id", None), 0):
            if token_id is not None:
                return token_id
        return 0

    def _transform_eval_inputs(self, inputs) -> None:
        """Evaluation: the count in force, no smoothing, no masking (in place)."""
        cot_mask = inputs.pop(COT_MASK, None)
        if cot_mask is not None and self.cot_removal is not None:
            self._remove_cot(inputs, cot_mask, None, None, training=False)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        # Before transformers counts `num_items_in_batch` from these labels.
        if self.maskthought_active:
            self._transform_eval_inputs(inputs)
        return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if COT_MASK in inputs:
            if model.training:
                inputs.pop(COT_MASK)  # plugin off, or a batch that skipped get_batch_samples
            else:
                self._transform_eval_inputs(inputs)
        return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)

    # ---- evaluation metrics ----------------------------------------------------------
    def add_evaluation_metrics(self, provider: Callable[[object, str], dict[str, float]]) -> None:
        """Compute extra metrics at every evaluation, as first-class evaluation metrics.

        ``provider(model, metric_key_prefix)`` returns ``{name: value}`` (names without the
        prefix, e.g. ``accuracy_no_cot``). Its values are merged into the evaluation loop's
        metrics as ``f"{metric_key_prefix}_{name}"`` before transformers logs them, calls
        ``on_evaluate`` and returns them from :meth:`evaluate`, so ``metric_for_best_model``,
        ``load_best_model_at_end``, ``EarlyStoppingCallback`` and ``ReduceLROnPlateau`` see
        them whatever the callback order. Runs on every rank (every rank decides the best
        checkpoint), only for :meth:`evaluate`, never for ``predict``.
        """
        self._evaluation_metrics.append(provider)

    def evaluate(self, *args, **kwargs):
        outer, self._evaluating = self._evaluating, True
        try:
            return super().evaluate(*args, **kwargs)
        finally:
            self._evaluating = outer

    def evaluation_loop(self, *args, **kwargs):
        output = super().evaluation_loop(*args, **kwargs)
        if self._evaluating and self._evaluation_metrics:
            prefix = kwargs.get("metric_key_prefix", args[4] if len(args) > 4 else "eval")
            for provider in self._evaluation_metrics:
                for name, value in provider(self.model, prefix).items():
                    output.metrics[f"{prefix}_{name}"] = value
        return output

    def log(self, logs, *args, **kwargs):
        if "loss" in logs:
            logs.update(self.maskthought_metrics.pop())
        return super().log(logs, *args, **kwargs)

    # ---- checkpoint state ---------------------------------------------------------
    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        if resume_from_checkpoint is True:
            from transformers.trainer_utils import get_last_checkpoint

            resume_from_checkpoint = get_last_checkpoint(self.args.output_dir)
        if isinstance(resume_from_checkpoint, str):
            self._load_maskthought_state(resume_from_checkpoint)
        self._add_cot_length_report()
        return super().train(resume_from_checkpoint, *args, **kwargs)

    def _add_cot_length_report(self) -> None:
        """CoT lengths vs the schedule, logged when training begins (unless an adapter added its own)."""
        from axolotl_maskthought.engine.cot_lengths import CoTLengthReportCallback

        callbacks = self.callback_handler.callbacks
        if self.cot_removal is None or any(isinstance(c, CoTLengthReportCallback) for c in callbacks):
            return
        by_steps = self.args.max_steps is not None and self.args.max_steps > 0
        self.add_callback(
            CoTLengthReportCallback(
                self.cot_removal,
                self.train_dataset,
                "max_steps" if by_steps else "num_epochs",
                None if by_steps else self.args.num_train_epochs,
            )
        )

    def _load_maskthought_state(self, checkpoint: str) -> None:
        path = os.path.join(checkpoint, STATE_FILE)
        if os.path.exists(path):
            with open(path, encoding="utf-8") as handle:
                state = json.load(handle)
            self.all_cot_removed_last_batch = bool(state.get("all_cot_removed_last_batch", False))
            self.count_in_force = int(state.get("count_in_force", 0))
            if state.get("loss_gate") is not None:
                self.gate_state = LossGateState(**state["loss_gate"])

    def maskthought_state(self) -> dict:
        """What ``maskthought_state.json`` holds: enough to resume the schedule exactly."""
        state = {
            "count_in_force": self.count_in_force,
            "all_cot_removed_last_batch": bool(self.all_cot_removed_last_batch),
        }
        if self.gate_state is not None:
            state["loss_gate"] = dataclasses.asdict(self.gate_state)
        return state

    def _save_checkpoint(self, model, trial, *args, **kwargs):
        super()._save_checkpoint(model, trial, *args, **kwargs)
        if self.cot_removal is not None and self.cot_removal.loss_gate is not None:
            self._fold_step_loss()  # every rank saves: the checkpointed step's loss goes in the state
        if self.cot_removal is None or not self.args.should_save:
            return
        from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

        folder = os.path.join(self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
        if os.path.isdir(folder):
            with open(os.path.join(folder, STATE_FILE), "w", encoding="utf-8") as handle:
                json.dump(self.maskthought_state(), handle)
