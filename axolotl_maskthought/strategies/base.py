"""What the gsm8k and icot strategies share: options, row checks, the axolotl protocol."""

from __future__ import annotations

import functools
import hashlib
import logging
from collections.abc import Callable
from pathlib import Path

from axolotl_maskthought.config import CoTFormatConfig
from axolotl_maskthought.data.files import local_file, read_rows
from axolotl_maskthought.data.formats import CoTExample

LOG = logging.getLogger("axolotl.maskthought.strategies")


def format_options(cfg) -> CoTFormatConfig:
    """The validated `cot_format:` block (defaults when absent)."""
    block = cfg.get("cot_format") if cfg is not None else None
    if isinstance(block, CoTFormatConfig):
        return block
    return CoTFormatConfig(**(dict(block) if block else {}))


@functools.lru_cache(maxsize=1)
def tokenization_code_fingerprint() -> str:
    """12 hex digits of sha256 over the source of the modules that lay examples out
    as tokens (``formats.py``, ``strategies/*.py``).

    Prepared data and the ``datasets`` map cache are keyed by it, so a layout changed
    by newer code is never served from a cache that older code wrote.
    """
    package = Path(__file__).resolve().parent.parent
    digest = hashlib.sha256()
    for path in [package / "data" / "formats.py", *sorted((package / "strategies").glob("*.py"))]:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def _is_test_entry(cfg, ds_cfg) -> bool:
    """Whether axolotl loads ``ds_cfg`` as a ``test_datasets`` entry (it passes the entry
    itself; a copy, e.g. one of several ``name``s, is matched by its path and type)."""
    train, test = list(cfg.get("datasets") or []), list(cfg.get("test_datasets") or [])
    if any(ds_cfg is entry for entry in test):
        return True
    if any(ds_cfg is entry for entry in train):
        return False

    def same(entry) -> bool:
        return all(_field(entry, key) == _field(ds_cfg, key) for key in ("path", "type", "data_files"))

    return any(same(entry) for entry in test) and not any(same(entry) for entry in train)


def _field(entry, key):
    return entry.get(key) if hasattr(entry, "get") else getattr(entry, key, None)


def excess_length_limit(cfg, ds_cfg) -> int | None:
    """The length axolotl will cut this dataset's rows to, or None when it cuts none.

    axolotl's ``excess_length_strategy: truncate`` cuts ``input_ids``, ``labels``,
    ``attention_mask`` and ``position_ids`` of rows longer than ``sequence_len``
    (``eval_sequence_len`` for ``test_datasets``) and leaves every other column
    (``cot_mask``) at its old length. Our strategies therefore cut each row
    themselves, every column alike, so that axolotl's cut is a no-op for them.
    None: ``drop``/``raise`` (whole rows go or stay), ``skip_prepare_dataset`` and
    ``streaming`` (axolotl applies no length policy), or no ``sequence_len``.
    """
    if cfg is None or str(cfg.get("excess_length_strategy") or "drop").lower() != "truncate":
        return None
    if cfg.get("skip_prepare_dataset") or cfg.get("streaming"):
        return None
    eval_len = cfg.get("eval_sequence_len")
    if eval_len and ds_cfg is not None and _is_test_entry(cfg, ds_cfg):
        return int(eval_len)
    return int(cfg["sequence_len"]) if cfg.get("sequence_len") else None


def cut_row(tokens: dict, limit: int | None) -> dict:
    """``tokens`` with every per-token column (lists as long as ``input_ids``) cut to
    ``limit`` entries, as axolotl's ``truncate_long_seq`` cuts its four columns."""
    length = len(tokens["input_ids"])
    if limit is None or length <= limit:
        return tokens
    return {
        key: value[:limit] if isinstance(value, list) and len(value) == length else value
        for key, value in tokens.items()
    }


class CoTStrategy:
    """axolotl's strategy protocol: ``tokenize_prompt(row) -> dict`` plus ``filter_rows``.

    ``parse`` turns a raw row into a :class:`CoTExample` or raises ``ValueError``;
    ``tokenize`` lays it out as tokens. A local file is checked in full when the
    strategy is loaded, so a bad row fails before tokenization with file and row.
    """

    supports_batched = False

    def __init__(self, tokenizer, cfg, ds_cfg, parse: Callable[[dict], CoTExample]):
        self.tokenizer = tokenizer
        self.options = format_options(cfg)
        # `datasets` fingerprints a map by pickling the strategy (its attributes, not its
        # code): with this attribute a changed layout misses the map cache.
        self.code_fingerprint = tokenization_code_fingerprint()
        self.train_on_inputs = bool(cfg.get("train_on_inputs")) if cfg is not None else False
        self.parse = parse
        # axolotl's length policy applied here, to every column (see excess_length_limit)
        self.length_limit = excess_length_limit(cfg, ds_cfg)
        self.filter_rows = self._is_valid if self.options.skip_invalid_rows else None
        path = local_file(ds_cfg)
        if path is not None and path.suffix in (".jsonl", ".json", ".txt", ""):
            self.check_file(path)

    def check_file(self, path: Path) -> int:
        skipped = 0
        for number, row in read_rows(path):
            try:
                self.parse(row)
            except ValueError as err:
                if not self.options.skip_invalid_rows:
                    raise ValueError(
                        f"{path}: row {number}: {err} (set `cot_format.skip_invalid_rows: true` to skip such rows)"
                    ) from None
                skipped += 1
        if skipped:
            LOG.warning("%s: skipping %d invalid rows (cot_format.skip_invalid_rows)", path, skipped)
        return skipped

    def _is_valid(self, row) -> bool:
        try:
            self.parse(row)
        except ValueError:
            return False
        return True

    def tokenize(self, example: CoTExample) -> dict:
        raise NotImplementedError

    def tokenize_prompt(self, row) -> dict:
        try:
            example = self.parse(row)
        except ValueError as err:
            raise ValueError(f"invalid row {dict(row)!r}: {err}") from None
        return cut_row(self.tokenize(example), self.length_limit)
