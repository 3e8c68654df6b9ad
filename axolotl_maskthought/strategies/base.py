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
        return self.tokenize(example)
