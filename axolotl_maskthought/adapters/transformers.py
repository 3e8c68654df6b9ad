"""The plain transformers / TRL adapter: the engine mixed into a Trainer class.

    from axolotl_maskthought.adapters.transformers import MaskThoughtTrainer, with_maskthought
    trainer = MaskThoughtTrainer(model=..., args=..., train_dataset=rows, processing_class=tokenizer,
                                 masked_thought={"ratio": 0.4}, cot_removal={"tokens_per_epoch": 8})
    SFT = with_maskthought(trl.SFTTrainer)   # or any Trainer subclass (LLaMA-Factory, ...)

Rows carry ``input_ids``, ``labels`` and ``cot_mask``: make them with
:func:`axolotl_maskthought.data.formats.tokenize_cot`, or with this package's
axolotl strategies. The data collator is wrapped so that ``cot_mask`` is padded.

Rows without ``cot_mask`` (e.g. TRL's own formats, tokenized by ``SFTTrainer``:
conversational rows with ``reasoning_content`` or ``<think>…</think>`` in the assistant
content, prompt/completion rows with the block in the completion) get the span derived
from the think tags' token ids once the trainer has tokenized them
(:func:`axolotl_maskthought.data.think_spans.add_think_spans`; tags: ``think_tags=``).
"""

from __future__ import annotations

from transformers import Trainer

from axolotl_maskthought.config import MaskedThoughtConfig
from axolotl_maskthought.data.think_spans import DEFAULT_THINK_TAGS, add_think_spans
from axolotl_maskthought.engine import MaskThoughtMixin


class ThinkSpanMixin:
    """Derives ``cot_mask`` from the think tags for rows the trainer tokenized without one.

    Keyword argument ``think_tags`` (default ``("<think>", "</think>")``). Runs after the
    base trainer's ``__init__`` (which tokenizes, truncates and packs TRL datasets), so the
    span always matches the tokens; only when ``cot_removal`` or
    ``masked_thought.scope: reasoning`` needs a span and the rows have none.
    """

    def __init__(self, *args, masked_thought=None, cot_removal=None, think_tags=DEFAULT_THINK_TAGS, **kwargs):
        super().__init__(*args, **kwargs)
        if isinstance(masked_thought, dict):
            masked_thought = MaskedThoughtConfig(**masked_thought)
        needs_span = cot_removal is not None or (masked_thought is not None and masked_thought.scope == "reasoning")
        if needs_span:
            self.train_dataset = self._with_think_spans(self.train_dataset, think_tags)
            if isinstance(self.eval_dataset, dict):
                self.eval_dataset = {k: self._with_think_spans(v, think_tags) for k, v in self.eval_dataset.items()}
            else:
                self.eval_dataset = self._with_think_spans(self.eval_dataset, think_tags)
        if masked_thought is not None or cot_removal is not None:
            self.configure_maskthought(masked_thought, cot_removal)

    def _with_think_spans(self, dataset, think_tags):
        columns = getattr(dataset, "column_names", None)
        if dataset is None or columns is None or "cot_mask" in columns or "input_ids" not in columns:
            return dataset
        return add_think_spans(dataset, self.processing_class, think_tags)


class MaskThoughtTrainer(ThinkSpanMixin, MaskThoughtMixin, Trainer):
    """``transformers.Trainer`` with Masked Thought and Stepwise Internalization (see :class:`MaskThoughtMixin`)."""


def with_maskthought(trainer_cls: type) -> type:
    """``trainer_cls`` with the engine mixed in; it accepts ``masked_thought=`` and ``cot_removal=``.

    Raises TypeError when ``trainer_cls`` is not a ``transformers.Trainer`` subclass.
    """
    if not (isinstance(trainer_cls, type) and issubclass(trainer_cls, Trainer)):
        raise TypeError(f"with_maskthought needs a transformers.Trainer subclass, got {trainer_cls!r}")
    if issubclass(trainer_cls, MaskThoughtMixin):
        return trainer_cls
    return type(
        f"MaskThought{trainer_cls.__name__}", (ThinkSpanMixin, MaskThoughtMixin, trainer_cls), {"__module__": __name__}
    )
