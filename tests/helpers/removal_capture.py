"""Test plugin for the CoT-removal end-to-end tests: what step each forward belongs to,
and the AdamW ``step`` of one trained parameter after every optimizer step.

List it in ``plugins:`` after ``axolotl_run.CapturePlugin``: both register a forward
pre-hook on the trainer's model, so ``FORWARD_STEPS[i]`` belongs to
``axolotl_run.FORWARDS[i]``.
"""

from __future__ import annotations

from axolotl.integrations.base import BasePlugin
from transformers import TrainerCallback

PLUGIN = "removal_capture.RemovalCapturePlugin"

FORWARD_STEPS: list[tuple[int, bool]] = []  # (trainer.state.global_step, model.training) per forward
ADAM_STEPS: dict[int, int] = {}  # optimizer step index -> state["step"] right after optimizer.step()
PARAMETER: dict[str, str] = {}  # "name": the parameter whose state is recorded


def reset() -> None:
    FORWARD_STEPS.clear()
    ADAM_STEPS.clear()
    PARAMETER.clear()


class _AdamStepRecorder(TrainerCallback):
    """Reads ``trainer.optimizer`` (not the callback's copy) at every ``on_optimizer_step``:
    called right after ``optimizer.step()``, before ``global_step`` is incremented."""

    def __init__(self, trainer):
        self.trainer = trainer

    def on_optimizer_step(self, args, state, control, **kwargs):
        optimizer = self.trainer.optimizer
        parameter = optimizer.param_groups[0]["params"][0]
        if not PARAMETER:
            names = {id(p): n for n, p in self.trainer.model.named_parameters()}
            PARAMETER["name"] = names.get(id(parameter), "?")
        ADAM_STEPS[state.global_step] = int(optimizer.state[parameter]["step"])


class RemovalCapturePlugin(BasePlugin):
    def post_trainer_create(self, cfg, trainer):
        trainer.add_callback(_AdamStepRecorder(trainer))

        def record_step(module, args, kwargs):
            FORWARD_STEPS.append((trainer.state.global_step, bool(module.training)))

        trainer.model.register_forward_pre_hook(record_step, with_kwargs=True)
