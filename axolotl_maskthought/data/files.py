"""Reading and writing the files the package works with: JSON lines, JSON arrays, text lines.

One reader per file kind; every error names the file and the 1-based row.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path


# ---- dataset size ------------------------------------------------------------------------------
def count_rows(path: Path) -> int:
    """Rows of a local file: a .json array's items, else non-blank lines (.jsonl, JSON lines, .txt)."""
    with open(path, encoding="utf-8") as handle:
        if path.suffix == ".json" and handle.read(1024).lstrip().startswith("["):
            import json

            handle.seek(0)
            return len(json.load(handle))
        handle.seek(0)
        return sum(1 for line in handle if line.strip())


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


def read_jsonl(path: str | Path, limit: int | None = None) -> list[dict]:
    """The JSON objects of a JSON-lines file (blank lines skipped), at most ``limit``."""
    rows = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if limit is not None and len(rows) >= limit:
                break
            if line.strip():
                rows.append(json.loads(line))
    return rows


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


def read_rows(path: Path) -> list[tuple[int, object]]:
    """(1-based line number, row) for a .jsonl/.json-lines or text file; blank lines skipped.

    A .json file holding one JSON array (which axolotl also loads) gives (1-based index, row).
    """
    rows = []
    if path.suffix == ".json":
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
        if text.lstrip().startswith("["):
            try:
                return list(enumerate(json.loads(text), start=1))
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}: not a valid JSON array ({err.msg}, line {err.lineno})") from None
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            if path.suffix in (".jsonl", ".json"):
                try:
                    rows.append((number, json.loads(line)))
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path}: row {number}: not valid JSON ({err.msg})") from None
            else:
                rows.append((number, {"text": line.rstrip("\n")}))
    return rows
