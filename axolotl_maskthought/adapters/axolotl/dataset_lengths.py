"""The training rows of an axolotl YAML, counted and tokenized as axolotl will see them.

``dataset_rows`` counts the rows of the ``datasets:`` files; ``training_cot_lengths`` tokenizes
them with the config's tokenizer and this package's strategies, applying ``sequence_len`` as
axolotl does (drop, or cut with ``excess_length_strategy: truncate``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from axolotl_maskthought.data.files import count_rows

# ---- CoT lengths of the training data ----------------------------------------------------------------
COT_SAMPLE_ROWS = 20_000  # more rows are sampled: tokenizing costs ~0.3 ms a row


@dataclass
class TrainingCoTLengths:
    """CoT tokens per tokenized training row (None when they cannot be computed, ``note`` says why)."""

    lengths: list[int] | None
    note: str


def _tokenizer(config: dict):
    from transformers import AutoTokenizer

    source = config.get("tokenizer_config") or config.get("base_model")
    if not source:
        raise OSError("the config has no `base_model` or `tokenizer_config`")
    tokenizer = AutoTokenizer.from_pretrained(str(source), trust_remote_code=bool(config.get("trust_remote_code")))
    # what axolotl's load_tokenizer adds from the YAML
    special = {key: value for key, value in (config.get("special_tokens") or {}).items() if value}
    if special:
        tokenizer.add_special_tokens(special)
    if config.get("tokens"):
        tokenizer.add_tokens(list(config["tokens"]))
    return tokenizer, str(source)


def training_cot_lengths(config: dict, sample_rows: int | None = COT_SAMPLE_ROWS, seed: int = 0) -> TrainingCoTLengths:
    """CoT lengths of the ``datasets:`` files, tokenized as training tokenizes them.

    Each entry must be a local file with a type of this package's strategies; its
    rows are tokenized by that strategy with the config's tokenizer
    (``tokenizer_config`` or ``base_model``, plus ``special_tokens`` and ``tokens``).
    Rows longer than ``sequence_len`` are left out as axolotl drops them (or cut,
    with ``excess_length_strategy: truncate``). Above ``sample_rows`` rows a seeded
    random sample is tokenized (None or 0: all). A bad row raises the strategy's
    error naming the file and row.
    """
    import importlib
    import random

    from axolotl_maskthought.data.files import local_file, read_rows
    from axolotl_maskthought.data.registry import dataset_type
    from axolotl_maskthought.strategies.base import cut_row

    entries = config.get("datasets") or []
    modules = []
    for index, entry in enumerate(entries):
        ds_type = str(entry.get("type", "")) if isinstance(entry, dict) else ""
        registered = dataset_type(ds_type)
        if registered is None:
            return TrainingCoTLengths(
                None, f"`datasets[{index}]` ({ds_type or 'no type'}) is not one of this package's strategies"
            )
        modules.append(registered.module)
        if local_file(entry) is None:
            return TrainingCoTLengths(None, f"`datasets[{index}]` is not a local file")
    try:
        tokenizer, source = _tokenizer(config)
    except (OSError, ValueError) as err:
        return TrainingCoTLengths(None, f"the tokenizer could not be loaded ({str(err).splitlines()[0]})")
    sequence_len = config.get("sequence_len")
    truncate = str(config.get("excess_length_strategy") or "drop").lower() == "truncate"
    rows = []
    for entry, module in zip(entries, modules):
        try:
            strategy = importlib.import_module(module).load(tokenizer, config, entry)
        except ValueError as err:
            raise ValueError(str(err)) from None
        keep = strategy.filter_rows or (lambda row: True)
        rows += [(strategy, row) for _, row in read_rows(local_file(entry)) if keep(row)]
    total = len(rows)
    if sample_rows and total > sample_rows:
        rows = random.Random(seed).sample(rows, sample_rows)
    lengths, too_long = [], 0
    for strategy, row in rows:
        # the strategy cuts rows itself under `truncate` (its `length_limit`): count the cut ones first
        limit = getattr(strategy, "length_limit", None)
        strategy.length_limit = None
        try:
            example = strategy.tokenize_prompt(row)
        finally:
            strategy.length_limit = limit
        if sequence_len and len(example["input_ids"]) > sequence_len:
            too_long += 1
            if not truncate:
                continue
            example = cut_row(example, limit)
        lengths.append(sum(1 for flag in example["cot_mask"] if flag > 0))
    scope = (
        f"all {total} rows" if len(rows) == total else f"a random sample of {len(rows)} of {total} rows (--cot-rows)"
    )
    note = f"tokenized {scope} with the tokenizer of {source}"
    if too_long:
        note += f"; {too_long} longer than sequence_len {sequence_len} " + (
            "truncated" if truncate else "left out, as axolotl drops them"
        )
    return TrainingCoTLengths(lengths, note)


def dataset_rows(config: dict) -> int:
    """Rows of every `datasets:` entry that is a local file; anything else needs --dataset-size."""
    entries = config.get("datasets") or []
    if not entries:
        raise ValueError("the config has no `datasets:`; pass --dataset-size")
    total = 0
    for index, entry in enumerate(entries):
        files = entry.get("data_files") if isinstance(entry, dict) else None
        if isinstance(files, (list, tuple)):
            paths = list(files)
        else:
            paths = [files or (entry.get("path") if isinstance(entry, dict) else None)]
        for name in paths:
            path = Path(str(name)) if name else None
            if path is None or not path.is_file():
                raise ValueError(
                    f"`datasets[{index}]` ({name!r}) is not a local file whose rows can be counted; "
                    "pass --dataset-size N"
                )
            if path.suffix not in (".jsonl", ".json", ".txt"):
                raise ValueError(
                    f"`datasets[{index}]`: cannot count rows of {path.suffix or 'this'} files; pass --dataset-size N"
                )
            total += count_rows(path)
    return total
