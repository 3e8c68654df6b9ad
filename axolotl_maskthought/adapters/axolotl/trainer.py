"""The axolotl trainer: ``AxolotlTrainer`` with the engine mixed in.

axolotl asks plugins for the trainer class before it reads ``trainer_cls:``, so
when the user names their own class there, :func:`trainer_class` mixes the engine
into that class instead of dropping it.
"""

from __future__ import annotations

import importlib

from axolotl.core.trainers.base import AxolotlTrainer

from axolotl_maskthought.engine import MaskThoughtMixin


class MaskThoughtTrainer(MaskThoughtMixin, AxolotlTrainer):
    """AxolotlTrainer with per-step CoT removal and Masked Thought (see :class:`MaskThoughtMixin`)."""


def trainer_class(trainer_cls: str | None) -> type:
    """The trainer class for a config: ours, or the user's ``trainer_cls`` with the engine mixed in.

    Raises ValueError naming `trainer_cls` when it cannot be imported or is not a
    subclass of ``AxolotlTrainer``.
    """
    if not trainer_cls:
        return MaskThoughtTrainer
    module_name, _, class_name = trainer_cls.rpartition(".")
    try:
        user_cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError, ValueError) as error:
        raise ValueError(f"`trainer_cls` {trainer_cls!r} could not be imported: {error}") from error
    if not (isinstance(user_cls, type) and issubclass(user_cls, AxolotlTrainer)):
        raise ValueError(
            f"`trainer_cls` {trainer_cls!r} must subclass axolotl's AxolotlTrainer to be combined "
            "with `masked_thought` / `cot_removal`"
        )
    if issubclass(user_cls, MaskThoughtMixin):
        return user_cls
    return type(f"MaskThought{user_cls.__name__}", (MaskThoughtMixin, user_cls), {"__module__": __name__})
