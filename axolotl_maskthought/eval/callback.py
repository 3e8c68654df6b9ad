"""Answer accuracy during training: greedy generation at each evaluation.

Enabled by ``cot_format.eval_accuracy_samples: N`` (N > 0). At every evaluation
the callback generates greedily on the first N rows of the trainer's evaluation
set (the ``val_set_size`` split or ``test_datasets``) and logs
``eval_accuracy_cot`` (the model writes its chain of thought) and
``eval_accuracy_no_cot`` (the prompt ends where the answer begins) at the same
step as ``eval_loss``, so wandb / tensorboard plot them side by side. With
``cot_format.eval_error_recovery`` also ``eval_accuracy_after_error``: the model
continues the gold CoT after one injected error
(:mod:`axolotl_maskthought.eval.error_injection`, digit rule, seed 0).

The evaluation rows are tokenized already; they are turned back into
question / CoT / answer by decoding the spans the strategies recorded, then
prompted exactly as ``eval`` prompts them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from transformers import TrainerCallback

from axolotl_maskthought.data.formats import ANSWER_MARK, IGNORE_INDEX, CoTExample
from axolotl_maskthought.data.registry import EVAL_FORMATS, dataset_entries

LOG = logging.getLogger("axolotl.maskthought")
METRIC_COT = "eval_accuracy_cot"
METRIC_NO_COT = "eval_accuracy_no_cot"
METRIC_AFTER_ERROR = "eval_accuracy_after_error"


# ---- examples from tokenized rows ------------------------------------------------
def example_from_tokens(
    tokenizer,
    input_ids: Sequence[int],
    labels: Sequence[int],
    cot_mask: Sequence[int],
    fmt: str,
    template: str | None = None,
) -> CoTExample:
    """Recover the CoTExample a strategy tokenized (inverse of ``formats.tokenize_*``).

    The prompt ends where the CoT span starts (or, for an empty CoT, where the
    labels start); the answer is the text after ``####`` in what follows the span.
    """
    cot_positions = [i for i, flag in enumerate(cot_mask) if flag > 0]
    if cot_positions:
        prompt_end, cot_end = cot_positions[0], cot_positions[-1] + 1
    else:
        trained = [i for i, label in enumerate(labels) if label != IGNORE_INDEX]
        if not trained:
            raise ValueError("row has neither a CoT span nor trained tokens")
        prompt_end = cot_end = trained[0]
    decode = lambda ids: tokenizer.decode(list(ids), skip_special_tokens=True)  # noqa: E731
    prompt_text = decode(input_ids[:prompt_end])
    rest = decode(input_ids[cot_end:])
    if ANSWER_MARK not in rest:
        raise ValueError(f"no `{ANSWER_MARK}` after the CoT span")
    answer = rest.split(ANSWER_MARK, 1)[1].strip()
    if fmt == "icot":
        question = prompt_text.strip()
    elif fmt == "gsm8k":
        prefix, _, suffix = (template or "{question}").partition("{question}")
        question = prompt_text
        if prefix.strip() and question.startswith(prefix):
            question = question[len(prefix) :]
        if suffix.strip() and question.rstrip().endswith(suffix.strip()):
            question = question.rstrip()[: -len(suffix.strip())]
        question = question.strip()
    else:
        raise ValueError(f"format {fmt!r}: the accuracy callback takes gsm8k or icot rows (of {EVAL_FORMATS})")
    return CoTExample(question, decode(input_ids[prompt_end:cot_end]).strip(), answer)


def examples_from_dataset(dataset, tokenizer, fmt: str, template: str | None, limit: int) -> list[CoTExample]:
    """The first ``limit`` rows of a tokenized dataset (``input_ids``, ``labels``, ``cot_mask``)."""
    if isinstance(dataset, dict):  # several evaluation sets: the first
        dataset = next(iter(dataset.values()))
    if "cot_mask" not in dataset.column_names:
        raise ValueError("the evaluation data has no `cot_mask` column: use a dataset `type:` of this package")
    rows = dataset.select(range(min(limit, len(dataset))))
    return [
        example_from_tokens(tokenizer, row["input_ids"], row["labels"], row["cot_mask"], fmt, template) for row in rows
    ]


# ---- accuracy ---------------------------------------------------------------------------
def answer_accuracy(
    model,
    tokenizer,
    examples: Sequence[CoTExample],
    fmt: str,
    template: str | None = None,
    no_cot: bool = False,
    batch_size: int = 32,
    max_new_tokens: int = 64,
    keep_position: bool = False,
) -> float:
    """Greedy answer accuracy, generated and scored exactly as ``eval`` does
    (``keep_position``: see ``evaluate.evaluate_model``)."""
    from axolotl_maskthought.eval.evaluation import evaluate_model

    result = evaluate_model(
        model,
        tokenizer,
        list(examples),
        fmt,
        template,
        no_cot,
        batch_size,
        max_new_tokens,
        progress=False,
        keep_position=keep_position,
    )
    return float(result["accuracy"])


# ---- the callback ------------------------------------------------------------------------
class AnswerAccuracyCallback(TrainerCallback):
    """``eval_accuracy_cot`` / ``eval_accuracy_no_cot`` at every evaluation, as evaluation metrics.

    With a trainer that has the engine (``MaskThoughtMixin``: the axolotl plugin's
    trainer, ``MaskThoughtTrainer``, ``with_maskthought(...)``) the accuracies are
    computed inside ``evaluate()`` (see ``MaskThoughtMixin.add_evaluation_metrics``): they
    are logged in the same entry as ``eval_loss``, returned by ``trainer.evaluate()``,
    and usable as ``metric_for_best_model`` (``load_best_model_at_end``, early stopping).
    The names follow the evaluation's prefix (``eval_``; with several evaluation sets,
    ``eval_<first set>_``, the set the rows come from).

    With any other trainer they are added to the metrics in ``on_evaluate`` and logged
    in their own entry: callbacks listed before this one (e.g. ``EarlyStoppingCallback``)
    and ``metric_for_best_model`` do not see them there.
    """

    def __init__(
        self,
        trainer,
        examples: Sequence[CoTExample],
        fmt: str,
        template: str | None,
        max_new_tokens: int = 64,
        batch_size: int = 32,
        keep_position: bool = False,
        error_recovery: bool = False,
    ):
        self.trainer = trainer
        self.keep_position = keep_position
        self.error_recovery = error_recovery
        self.examples = list(examples)
        self.fmt, self.template = fmt, template
        self.max_new_tokens, self.batch_size = max_new_tokens, batch_size
        eval_dataset = getattr(trainer, "eval_dataset", None)
        # several evaluation sets: the rows come from the first, so only its evaluation reports them
        self.prefix_suffix = f"_{next(iter(eval_dataset))}" if isinstance(eval_dataset, dict) else None
        self.registered = hasattr(trainer, "add_evaluation_metrics")
        if self.registered:
            trainer.add_evaluation_metrics(self)

    def accuracies(self, model) -> dict[str, float]:
        """``{"accuracy_cot": ..., "accuracy_no_cot": ...}`` on this callback's rows (and
        ``accuracy_after_error`` with ``error_recovery``)."""
        tokenizer = self.trainer.processing_class
        values = {
            METRIC_COT.removeprefix("eval_"): answer_accuracy(
                model, tokenizer, self.examples, self.fmt, self.template, False, self.batch_size, self.max_new_tokens
            ),
            METRIC_NO_COT.removeprefix("eval_"): answer_accuracy(
                model,
                tokenizer,
                self.examples,
                self.fmt,
                self.template,
                True,
                self.batch_size,
                self.max_new_tokens,
                self.keep_position,
            ),
        }
        if self.error_recovery:
            from axolotl_maskthought.eval.error_injection import evaluate_error_recovery

            values[METRIC_AFTER_ERROR.removeprefix("eval_")] = float(
                evaluate_error_recovery(
                    model,
                    tokenizer,
                    self.examples,
                    self.fmt,
                    self.template,
                    batch_size=self.batch_size,
                    max_new_tokens=self.max_new_tokens,
                    progress=False,
                )["accuracy"]
            )
        return values

    def __call__(self, model, metric_key_prefix: str) -> dict[str, float]:
        """The evaluation-metrics provider (``MaskThoughtMixin.add_evaluation_metrics``)."""
        if not self.examples or model is None:
            return {}
        if self.prefix_suffix is not None and not metric_key_prefix.endswith(self.prefix_suffix):
            return {}
        return self.accuracies(model)

    def on_evaluate(self, args, state, control, model=None, metrics=None, **kwargs):
        if self.registered or not self.examples or model is None or not state.is_world_process_zero:
            return
        values = {f"eval_{name}": value for name, value in self.accuracies(model).items()}
        if metrics is not None:
            metrics.update(values)  # the dict evaluate() returns
        self.trainer.log(values)


def dataset_format(cfg) -> str | None:
    """``icot`` / ``gsm8k`` from the first evaluation (else training) dataset whose ``type:``
    the registry (:func:`axolotl_maskthought.data.registry.dataset_type`) says this callback
    supports (``accuracy_callback``: not chat rows, which ``eval --config`` scores after training)."""
    for *_, entry in dataset_entries(cfg, keys=("test_datasets", "datasets")):
        if entry is not None and entry.accuracy_callback:
            return entry.format
    return None


def build_accuracy_callback(cfg, trainer) -> AnswerAccuracyCallback | None:
    """The callback when ``cot_format.eval_accuracy_samples`` > 0, else None."""
    from axolotl_maskthought.strategies.base import format_options

    options = format_options(cfg)
    if options.eval_accuracy_samples <= 0:
        return None
    if trainer.eval_dataset is None:
        raise ValueError(
            "`cot_format.eval_accuracy_samples` needs evaluation data: set `val_set_size` or `test_datasets`"
        )
    fmt = dataset_format(cfg)
    if fmt is None:
        raise ValueError(
            "`cot_format.eval_accuracy_samples` works with the `icot` and `gsm8k` strategies of this package"
        )
    template = options.template()
    examples = examples_from_dataset(
        trainer.eval_dataset, trainer.processing_class, fmt, template, options.eval_accuracy_samples
    )
    # Room for the longest full solution of these rows, plus a margin.
    tokenizer = trainer.processing_class
    longest = max((len(tokenizer(f" {e.cot} {ANSWER_MARK} {e.answer}")["input_ids"]) for e in examples), default=0)
    LOG.info("answer accuracy on %d evaluation rows at each evaluation (%s)", len(examples), fmt)
    removal = cfg.get("cot_removal")
    keep_position = bool(
        removal.get("keep_position") if isinstance(removal, dict) else getattr(removal, "keep_position", False)
    )
    return AnswerAccuracyCallback(
        trainer,
        examples,
        fmt,
        template,
        max_new_tokens=longest + 8,
        keep_position=keep_position,
        error_recovery=options.eval_error_recovery,
    )
