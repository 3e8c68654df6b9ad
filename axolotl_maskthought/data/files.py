"""Reading and writing the files the package works with: JSON lines, JSON arrays, text lines.

One reader per file kind; every error names the file and the 1-based row.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path


# ---- readers: text lines, JSON lines, JSON arrays --------------------------------------------
def read_text_lines(path: str | Path) -> Iterator[tuple[int, str]]:
    """(1-based line number, line without its newline) of the non-blank lines of ``path``.

    Raises:
        FileNotFoundError: ``path`` is not a file (the message names it).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if line.strip():
                yield number, line.rstrip("\n")


def parse_json_line(path: str | Path, number: int, line: str, require_object: bool = False):
    """The JSON value of line ``number`` of ``path``.

    Raises:
        ValueError: ``{path}: row {number}: not valid JSON (...)``, or ``not a JSON object``
            when ``require_object`` and the value is not one.
    """
    try:
        row = json.loads(line)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: row {number}: not valid JSON ({err.msg})") from None
    if require_object and not isinstance(row, dict):
        raise ValueError(f"{path}: row {number}: not a JSON object")
    return row


def read_jsonl_rows(
    path: str | Path, limit: int | None = None, require_object: bool = False
) -> Iterator[tuple[int, object]]:
    """(1-based line number, JSON value) of a JSON-lines file, blank lines skipped, at most
    ``limit`` rows; errors name the file and row (:func:`parse_json_line`)."""
    for count, (number, line) in enumerate(read_text_lines(path)):
        if limit is not None and count >= limit:
            return
        yield number, parse_json_line(path, number, line, require_object)


def read_jsonl(path: str | Path, limit: int | None = None) -> list:
    """The JSON values of a JSON-lines file (blank lines skipped), at most ``limit``."""
    return [row for _, row in read_jsonl_rows(path, limit)]


def is_json_array(path: Path) -> bool:
    """A ``.json`` file whose text starts with ``[`` (one JSON array, which axolotl also loads)."""
    if path.suffix != ".json":
        return False
    with open(path, encoding="utf-8") as handle:
        return handle.read(1024).lstrip().startswith("[")


def read_json_array(path: str | Path) -> list[tuple[int, object]]:
    """(1-based index, item) of a file holding one JSON array.

    Raises:
        ValueError: ``{path}: not a valid JSON array (...)``.
    """
    try:
        items = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not a valid JSON array ({err.msg}, line {err.lineno})") from None
    if not isinstance(items, list):
        raise ValueError(f"{path}: not a valid JSON array")
    return list(enumerate(items, start=1))


def read_rows(path: Path) -> list[tuple[int, object]]:
    """(1-based row number, row) of a dataset file as axolotl loads it: a ``.json`` array's
    items, the values of ``.jsonl``/``.json`` lines, else each text line as ``{"text": line}``.
    Blank lines are skipped; errors name the file and row."""
    if is_json_array(path):
        return read_json_array(path)
    if path.suffix in (".jsonl", ".json"):
        return list(read_jsonl_rows(path))
    return [(number, {"text": line}) for number, line in read_text_lines(path)]


def count_rows(path: Path) -> int:
    """Rows of a local file: a .json array's items, else non-blank lines (.jsonl, JSON lines, .txt)."""
    if is_json_array(path):
        return len(read_json_array(path))
    return sum(1 for _ in read_text_lines(path))


# ---- writers ----------------------------------------------------------------------------------
def write_lines(path: str | Path, lines: Iterable[str]) -> int:
    """Write one line per item (newline-terminated, UTF-8), creating parent directories.

    Returns the number of lines written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    with open(path, "w", encoding="utf-8", newline="\n") as handle:
        for line in lines:
            handle.write(line + "\n")
            written += 1
    return written


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> int:
    """Write rows as JSON lines; returns the number written."""
    return write_lines(path, (json.dumps(row, ensure_ascii=False) for row in rows))


def local_file(ds_cfg) -> Path | None:
    """The dataset's local file, when it is one (hub datasets are checked row by row)."""
    if not ds_cfg:
        return None
    files = ds_cfg.get("data_files")
    if isinstance(files, (list, tuple)) and len(files) == 1:
        files = files[0]
    candidate = files if isinstance(files, str) else ds_cfg.get("path")
    if candidate and Path(candidate).is_file():
        return Path(candidate)
    return None
