"""The dataset types of this package: one entry per strategy, asked by every part that
needs to know what a dataset ``type:`` is.

Training's config checks, the plugin, the in-training accuracy callback, ``eval --config``,
``eval``/``score`` (the file suffixes) and ``schedule`` (CoT lengths of the training files)
all call :func:`dataset_type`; none of them parses a ``type:`` string itself.
"""

from __future__ import annotations

from dataclasses import dataclass

STRATEGY_PREFIX = "axolotl_maskthought.strategies."


@dataclass(frozen=True)
class DatasetType:
    """One dataset type of this package.

    ``name``: the strategy (``type: axolotl_maskthought.strategies.<name>``); ``format``: the
    name ``eval``/``score`` prompt and score it by, None where they do not support it (the
    in-training accuracy callback: :attr:`accuracy_callback`); ``cot_span``: how its strategy records the ``cot_mask`` span;
    ``files``: how its local files are read (``data.files.read_rows``); ``suffixes``: the file
    suffixes whose format ``eval`` infers as this one; ``dataset_keys``: per-dataset keys
    (beyond axolotl's loader keys) its strategy reads; ``cot_format_keys``: the
    ``cot_format:`` options its strategy reads.
    """

    name: str
    format: str | None
    cot_span: str
    files: str
    suffixes: tuple[str, ...] = ()
    dataset_keys: frozenset[str] = frozenset()
    cot_format_keys: frozenset[str] = frozenset()

    @property
    def module(self) -> str:
        """The strategy's module, the ``type:`` axolotl loads."""
        return STRATEGY_PREFIX + self.name

    @property
    def evaluates(self) -> bool:
        """Whether ``eval``/``score`` support it (``--format``, ``eval --config``)."""
        return self.format is not None

    @property
    def accuracy_callback(self) -> bool:
        """Whether the in-training accuracy callback (``cot_format.eval_accuracy_samples``)
        supports it: it rebuilds prompts from the tokenized evaluation rows, which only the
        icot and gsm8k layouts allow (chat rows: ``eval --config`` after training)."""
        return self.evaluates and "eval_accuracy_samples" in self.cot_format_keys


DATASET_TYPES = (
    DatasetType(
        name="gsm8k",
        format="gsm8k",
        cot_span="the solution text before `####` (after the prompt template)",
        files="JSON lines or one JSON array of objects (question/answer fields from `cot_format`)",
        suffixes=(".jsonl", ".json"),
        cot_format_keys=frozenset(
            {
                "prompt_template",
                "question_field",
                "answer_field",
                "skip_invalid_rows",
                "eval_accuracy_samples",
                "eval_error_recovery",
            }
        ),
    ),
    DatasetType(
        name="icot",
        format="icot",
        cot_span="the tokens strictly between the two EOS separators of `question||cot #### answer`",
        files="text lines `question||cot #### answer`, one row `{text: line}` each",
        suffixes=(".txt",),
        cot_format_keys=frozenset({"skip_invalid_rows", "eval_accuracy_samples", "eval_error_recovery"}),
    ),
    DatasetType(
        name="chat_template",
        format="chat",
        cot_span="the reasoning text of assistant turns, as the chat template renders it",
        files="JSON lines or one JSON array of conversations",
        dataset_keys=frozenset({"chat_template", "chat_template_jinja"}),
        cot_format_keys=frozenset(
            {"skip_invalid_rows", "messages_field", "reasoning_field", "think_tags", "reasoning_turns"}
        ),
    ),
)
BY_NAME = {entry.name: entry for entry in DATASET_TYPES}
EVAL_FORMATS = tuple(entry.format for entry in DATASET_TYPES if entry.format is not None)  # gsm8k, icot, chat


def split_type(ds_type) -> tuple[str, str | None]:
    """``(base, prompt_style)`` of a dataset ``type:`` string, split at the first ``:`` as
    axolotl's dataset loader splits it (``axolotl.utils.data.sft._parse_dataset_type``)."""
    base, _, style = str(ds_type or "").partition(":")
    return base, (style if _ else None)


def dataset_type(ds_type) -> DatasetType | None:
    """The entry of a dataset ``type:`` value, or None when it names no strategy of this package.

    Recognised: ``axolotl_maskthought.strategies.<name>`` (the module axolotl's
    ``prompt_strategies.load`` imports), with or without a ``:suffix`` (axolotl splits
    it off as a prompt style; ``has_suffix`` tells whether one was written). Anything
    else (axolotl's own types, a dict type, ``strategies.base``, ``...icot.load``, which
    axolotl looks up among its own modules) is None.
    """
    if not isinstance(ds_type, str):
        return None
    base, _ = split_type(ds_type)
    if not base.startswith(STRATEGY_PREFIX):
        return None
    return BY_NAME.get(base[len(STRATEGY_PREFIX) :])


def has_suffix(ds_type) -> bool:
    """Whether a ``type:`` of this package carries a ``:suffix``, which axolotl's loader
    (0.19, 0.21) cannot import: it tries the module ``...strategies.<name>:suffix``."""
    return dataset_type(ds_type) is not None and split_type(ds_type)[1] is not None


def format_for_suffix(suffix: str) -> str | None:
    """The eval format of a file suffix (``.jsonl``/``.json`` gsm8k, ``.txt`` icot), or None.
    Chat files share gsm8k's suffixes: ``eval`` tells them apart by their rows
    (:func:`axolotl_maskthought.eval.scoring.infer_format`)."""
    suffix = suffix.lower()
    return next((entry.format for entry in DATASET_TYPES if entry.evaluates and suffix in entry.suffixes), None)


def dataset_entries(cfg, keys=("datasets", "test_datasets")):
    """``(key, index, type value, entry or None)`` for every dataset of ``cfg`` (a dict,
    axolotl's DictDefault or its validated config) under ``keys``, in order."""
    for key in keys:
        datasets = cfg.get(key) if hasattr(cfg, "get") else getattr(cfg, key, None)
        for index, dataset in enumerate(datasets or []):
            if hasattr(dataset, "get"):
                value = dataset.get("type")
            else:
                value = getattr(dataset, "type", None)
            yield key, index, value, dataset_type(value)
