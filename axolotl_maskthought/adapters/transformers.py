"""The plain transformers / TRL adapter: the engine mixed into a Trainer class.

    from axolotl_maskthought.adapters.transformers import MaskThoughtTrainer, with_maskthought
    trainer = MaskThoughtTrainer(model=..., args=..., train_dataset=rows, processing_class=tokenizer,
                                 masked_thought={"ratio": 0.4}, cot_removal={"tokens_per_epoch": 8})
    SFT = with_maskthought(trl.SFTTrainer)   # or any Trainer subclass (LLaMA-Factory, ...)

Rows carry ``input_ids``, ``labels`` and ``cot_mask``: make them with
:func:`axolotl_maskthought.data.formats.tokenize_cot`, or with this package's
axolotl strategies. The data collator is wrapped so that ``cot_mask`` is padded.
"""

from __future__ import annotations

from transformers import Trainer

from axolotl_maskthought.engine import MaskThoughtMixin


class MaskThoughtTrainer(MaskThoughtMixin, Trainer):
    """``transformers.Trainer`` with Masked Thought and Stepwise Internalization (see :class:`MaskThoughtMixin`)."""


def with_maskthought(trainer_cls: type) -> type:
    """``trainer_cls`` with the engine mixed in; it accepts ``masked_thought=`` and ``cot_removal=``.

    Raises TypeError when ``trainer_cls`` is not a ``transformers.Trainer`` subclass.
    """
    if not (isinstance(trainer_cls, type) and issubclass(trainer_cls, Trainer)):
        raise TypeError(f"with_maskthought needs a transformers.Trainer subclass, got {trainer_cls!r}")
    if issubclass(trainer_cls, MaskThoughtMixin):
        return trainer_cls
    return type(f"MaskThought{trainer_cls.__name__}", (MaskThoughtMixin, trainer_cls), {"__module__": __name__})
