"""A measuring plugin for benchmark runs: ``plugins: [steptimer.StepTimerPlugin]``.

Times each optimizer step as the interval between consecutive ``on_step_end``
calls. The HF loop fetches a step's micro-batches (``get_batch_samples``, where
MaskThoughtTrainer applies its transforms) *before* ``on_step_begin``, so an
on_step_begin→on_step_end timer would miss exactly the cost being measured.
Writes the list of step durations to ``$STEPTIMER_OUT`` at the end of training.

With ``STEPTIMER_CYCLE=1`` (a MaskThoughtTrainer with both blocks configured),
the steps cycle through the modes off / masked_thought / cot_removal / both by
switching the trainer's blocks at each ``on_step_end``: an A/B/C/D comparison
inside one process, where all modes see the same machine noise. Each block of
four steps takes the modes in a different (seeded) order, so no mode always
follows the same one.
"""

from __future__ import annotations

import json
import os
import random
import time

from axolotl.integrations.base import BasePlugin
from transformers import TrainerCallback

MODES = ("off", "masked_thought", "cot_removal", "both")


class StepTimer(TrainerCallback):
    def __init__(self, trainer=None):
        self.trainer = trainer if os.environ.get("STEPTIMER_CYCLE") == "1" else None
        self.blocks = None
        self.last = None
        self.durations: list[float] = []
        self.modes: list[str] = []

    def _set_mode(self, index: int) -> None:
        if self.trainer is None:
            return
        block, position = divmod(index, len(MODES))
        mode = random.Random(block).sample(MODES, len(MODES))[position]
        masked_thought, cot_removal = self.blocks
        self.trainer.masked_thought = masked_thought if mode in ("masked_thought", "both") else None
        self.trainer.cot_removal = cot_removal if mode in ("cot_removal", "both") else None
        self.modes.append(mode)

    def on_train_begin(self, args, state, control, **kwargs):
        if self.trainer is not None:
            self.blocks = (self.trainer.masked_thought, self.trainer.cot_removal)
            if None in self.blocks:
                raise ValueError("STEPTIMER_CYCLE needs both masked_thought and cot_removal configured")
        self._set_mode(0)
        self.last = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        now = time.perf_counter()
        self.durations.append(now - self.last)
        self._set_mode(len(self.durations))
        self.last = time.perf_counter()

    def on_train_end(self, args, state, control, **kwargs):
        path = os.environ.get("STEPTIMER_OUT")
        if path:
            with open(path, "w") as handle:
                json.dump(
                    {
                        "step_seconds": self.durations,
                        "step_modes": self.modes[: len(self.durations)],
                        "log_history": state.log_history,
                    },
                    handle,
                )


def float_metrics(trainer) -> None:
    """Work around an int metric (``cot_removal/scheduled``) that crashes axolotl's
    ``log`` (torch.mean of a Long tensor): store every metric value as a float."""
    store = trainer.store_metrics

    def store_as_float(metrics, *args, **kwargs):
        fixed = {}
        for key, value in metrics.items():
            if isinstance(value, tuple):
                fixed[key] = (float(value[0]), *value[1:])
            else:
                fixed[key] = float(value)
        return store(fixed, *args, **kwargs)

    trainer.store_metrics = store_as_float


class StepTimerPlugin(BasePlugin):
    def add_callbacks_post_trainer(self, cfg, trainer):
        float_metrics(trainer)
        return [StepTimer(trainer)]
