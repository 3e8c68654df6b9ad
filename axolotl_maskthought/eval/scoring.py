"""Answer extraction, scoring and the eval file formats. Pure Python (no torch).

Three scoring rules, the first two as in the two papers' evaluations:

* ``gsm8k`` (Masked Thought): the number after the first ``#### `` (regex
  ``#### (-?[0-9.,]+)``), commas stripped, correct if within 1e-4 of the gold
  number. In no-CoT mode the prompt already ends with ``####``, so the scored text
  is ``'####' + generation``.
* ``icot`` (Stepwise Internalization): the text after the first ``####``,
  stripped, commas removed, compared with the gold answer as an exact string.
* ``chat`` (conversations, :mod:`axolotl_maskthought.eval.chat`): the generation up to the
  end of the turn; with CoT, the text after the first closing think tag (``</think>``).
  Stripped of whitespace, correct when it equals the gold answer (the final assistant
  content without reasoning, stripped) or when both parse as numbers (commas removed)
  within 1e-4, as gsm8k compares them.

``load_examples`` reads the gold data through :mod:`axolotl_maskthought.data.formats`,
the parsers the training strategies use, and names the file and 1-based row of a
bad line. ``read_generations``/``write_results`` are the ``eval``/``score`` files.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from pathlib import Path

from axolotl_maskthought.data.files import parse_json_line, read_jsonl_rows, read_rows, read_text_lines
from axolotl_maskthought.data.formats import ANSWER_MARK, CoTExample, parse_gsm8k_row, parse_icot_line
from axolotl_maskthought.data.registry import EVAL_FORMATS, format_for_suffix

GSM8K_ANSWER = re.compile(r"#### (-?[0-9.,]+)")
TOLERANCE = 1e-4
CLOSE_TAG = "</think>"  # the default closing think tag (`cot_format.think_tags`)
CONVERSATION_FIELDS = ("messages", "conversations")


def check_format(fmt: str) -> str:
    if fmt not in EVAL_FORMATS:
        raise ValueError(f"unknown format {fmt!r}: expected one of {', '.join(EVAL_FORMATS)}")
    return fmt


def infer_format(path: str | Path, fmt: str | None = None) -> str:
    """``fmt`` when given, else from the suffix: ``.jsonl``/``.json`` → gsm8k, ``.txt`` → icot;
    a ``.jsonl``/``.json`` file whose first row holds a ``messages`` or ``conversations``
    list → chat."""
    if fmt is not None:
        return check_format(fmt)
    suffix = Path(path).suffix.lower()
    fmt = format_for_suffix(suffix)
    if fmt is None:
        raise ValueError(
            f"{path}: cannot tell the format from the suffix {suffix or '(none)'!r}; "
            f"pass --format {'|'.join(EVAL_FORMATS)}"
        )
    if fmt == "gsm8k" and _holds_conversations(Path(path)):
        return "chat"
    return fmt


def _holds_conversations(path: Path) -> bool:
    """Whether the first row of a JSON file is a conversation (unreadable files: False,
    :func:`load_examples` names their error)."""
    try:
        rows = read_rows(path)
    except (OSError, ValueError):
        return False
    first = rows[0][1] if rows else None
    return isinstance(first, dict) and any(isinstance(first.get(name), list) for name in CONVERSATION_FIELDS)


def _number(text: str) -> float | None:
    """``text`` as a finite float with commas removed, or None."""
    try:
        value = float(text.replace(",", ""))
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def extract_gsm8k_answer(text: str) -> str | None:
    """The number after the first ``#### ``, commas stripped (``'1,234'`` → ``'1234'``)."""
    match = GSM8K_ANSWER.search(text)
    return match.group(1).replace(",", "") if match else None


def extract_icot_answer(text: str) -> str | None:
    """The text after the first ``####``, stripped, commas removed."""
    if ANSWER_MARK not in text:
        return None
    return text.split(ANSWER_MARK, 1)[1].strip().replace(",", "")


def extract_chat_answer(text: str, no_cot: bool = False, close_tag: str = CLOSE_TAG) -> str | None:
    """A chat generation's answer: no CoT, the whole text; with CoT, the text after the
    first ``close_tag`` (None when there is none); stripped of whitespace."""
    if no_cot:
        return text.strip()
    if close_tag not in text:
        return None
    return text.split(close_tag, 1)[1].strip()


def scored_text(generation: str, fmt: str, no_cot: bool = False) -> str:
    """What the answer is extracted from: a gsm8k no-CoT prompt ends with ``####``."""
    return ANSWER_MARK + generation if (no_cot and fmt == "gsm8k") else generation


def extract_answer(generation: str, fmt: str, no_cot: bool = False, close_tag: str = CLOSE_TAG) -> str | None:
    """The model's answer in ``generation`` (the text after the prompt), or None.
    ``close_tag``: the closing think tag of chat generations."""
    if check_format(fmt) == "chat":
        return extract_chat_answer(generation, no_cot, close_tag)
    text = scored_text(generation, fmt, no_cot)
    return extract_gsm8k_answer(text) if fmt == "gsm8k" else extract_icot_answer(text)


def has_answer(extracted: str | None, fmt: str) -> bool:
    """Whether an answer could be read at all: gsm8k, a number after ``#### ``; icot,
    some text after ``####``; chat, some text (after the closing think tag with CoT).
    False is a format failure, not a wrong answer."""
    if extracted is None:
        return False
    if check_format(fmt) in ("icot", "chat"):
        return extracted != ""
    return _number(extracted) is not None


def normalize_gold(gold: str) -> str:
    return gold.strip().replace(",", "")


def is_correct(extracted: str | None, gold: str, fmt: str) -> bool:
    """gsm8k: both numbers within 1e-4; icot: equal strings (commas removed); chat: equal
    stripped strings, or both numbers within 1e-4."""
    if extracted is None:
        return False
    if check_format(fmt) == "icot":
        return extracted == normalize_gold(gold)
    if fmt == "chat" and extracted.strip() == gold.strip():
        return True
    predicted, expected = _number(extracted), _number(gold.strip())
    return predicted is not None and expected is not None and abs(predicted - expected) <= TOLERANCE


def score_generation(
    generation: str, gold: str, fmt: str, no_cot: bool = False, close_tag: str = CLOSE_TAG
) -> tuple[str | None, bool]:
    """(extracted answer, correct) for one generation (``close_tag``: chat's closing think tag)."""
    extracted = extract_answer(generation, fmt, no_cot, close_tag)
    return extracted, is_correct(extracted, gold, fmt)


def _parse_example(row, fmt: str, question_field: str, answer_field: str) -> CoTExample:
    if fmt == "icot":
        return parse_icot_line(row)
    example = parse_gsm8k_row(row, question_field, answer_field)
    if _number(example.answer) is None:
        raise ValueError(f"gold answer {example.answer!r} is not a number")
    return example


def load_examples(path: str | Path, fmt: str, cot_format=None, limit: int | None = None) -> list:
    """The gold examples of ``path``: gsm8k = JSON lines (fields from ``cot_format``,
    a :class:`~axolotl_maskthought.config.CoTFormatConfig`, default question/answer),
    icot = ``question||cot #### answer`` lines, chat = JSON lines or one JSON array of
    conversations ending with an assistant turn (:class:`~axolotl_maskthought.eval.chat.ChatExample`,
    fields and think tags from ``cot_format``). Blank lines are skipped; a bad row
    raises ``ValueError`` naming the file and its 1-based line (array: item). gsm8k gold
    answers must be numbers."""
    path = Path(path)
    fmt = check_format(fmt)
    if fmt == "chat":
        return _load_chat_examples(path, cot_format, limit)
    question_field = getattr(cot_format, "question_field", "question")
    answer_field = getattr(cot_format, "answer_field", "answer")
    examples = []
    for number, line in read_text_lines(path):
        if limit is not None and len(examples) >= limit:
            break
        row = line if fmt == "icot" else parse_json_line(path, number, line, require_object=True)
        try:
            examples.append(_parse_example(row, fmt, question_field, answer_field))
        except ValueError as err:
            raise ValueError(f"{path}: row {number}: {err}") from None
    if not examples:
        raise ValueError(f"{path}: no examples")
    return examples


def _load_chat_examples(path: Path, cot_format, limit: int | None) -> list:
    from axolotl_maskthought.eval.chat import parse_chat_example

    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    examples = []
    for number, row in read_rows(path):
        if limit is not None and len(examples) >= limit:
            break
        try:
            examples.append(parse_chat_example(row, cot_format, source=f"{path}: row {number}"))
        except ValueError as err:
            raise ValueError(f"{path}: row {number}: {err}") from None
    if not examples:
        raise ValueError(f"{path}: no examples")
    return examples


def read_generations(path: str | Path, field: str = "generation") -> list[str]:
    """The ``field`` string of every JSON line of ``path`` (one per example, in order)."""
    path = Path(path)
    generations = []
    for number, row in read_jsonl_rows(path, require_object=True):
        value = row.get(field)
        if not isinstance(value, str):
            raise ValueError(f"{path}: row {number}: no string field `{field}`")
        generations.append(value)
    return generations


def summarize(correct: Sequence[bool], answered: Sequence[bool], seconds: float | None = None) -> dict:
    """accuracy, correct, n, ``wrong`` (an answer, not the gold one), ``no_answer``
    (nothing to extract: see :func:`has_answer`) and, when timed, seconds and
    examples_per_second. ``correct`` and ``answered`` hold one flag per example."""
    if len(correct) != len(answered):
        raise ValueError(f"{len(correct)} correct flags for {len(answered)} answered flags")
    n = len(correct)
    hits = sum(1 for flag in correct if flag)
    no_answer = sum(1 for flag in answered if not flag)
    return {
        "accuracy": hits / n if n else 0.0,
        "correct": hits,
        "n": n,
        "wrong": n - hits - no_answer,
        "no_answer": no_answer,
        "seconds": seconds,
        "examples_per_second": (n / seconds if seconds else None),
    }


def score_generations(
    examples: Sequence[CoTExample],
    generations: Sequence[str],
    fmt: str,
    no_cot: bool = False,
    close_tag: str = CLOSE_TAG,
) -> tuple[list[dict], dict]:
    """Per-example rows (generation, extracted, gold, correct) and the summary."""
    if len(generations) != len(examples):
        raise ValueError(f"{len(generations)} generations for {len(examples)} examples")
    rows = []
    for example, generation in zip(examples, generations):
        extracted, correct = score_generation(generation, example.answer, fmt, no_cot, close_tag)
        rows.append({"generation": generation, "extracted": extracted, "gold": example.answer, "correct": correct})
    answered = [has_answer(row["extracted"], fmt) for row in rows]
    return rows, summarize([row["correct"] for row in rows], answered)


def summary_line(summary: dict) -> str:
    """``accuracy A (c/n); w wrong, k with no answer (...)``, then unfinished rows and speed."""
    if summary.get("format") == "chat":
        unreadable = "an empty answer" if summary.get("no_cot") else "no closing think tag, or nothing after it"
    else:
        unreadable = f"no `{ANSWER_MARK}`, or nothing to read after it"
    line = (
        f"accuracy {summary['accuracy']:.4f} ({summary['correct']}/{summary['n']}); "
        f"{summary['wrong']} wrong, {summary['no_answer']} with no answer ({unreadable})"
    )
    if summary.get("unfinished"):
        line += f"; {summary['unfinished']} cut off at max_new_tokens"
    if summary.get("examples_per_second"):
        line += f", {summary['examples_per_second']:.2f} examples/s"
    return line


def no_answer_note(rows: Sequence[dict], fmt: str, no_cot: bool = False) -> str | None:
    """A hint when generations have no answer: how many, the first one, and the likely cause."""
    missing = [row for row in rows if not has_answer(row["extracted"], fmt)]
    if not missing:
        return None
    note = (
        f"note: {len(missing)} of {len(rows)} generations have no answer to read, "
        f"e.g. {missing[0]['generation'][:100]!r}"
    )
    if no_cot and fmt == "icot":
        note += (
            "; a model that writes CoT here was trained with CoT left at its last step "
            "(`axolotl-maskthought schedule CONFIG` reports it); one that writes no `####` at all "
            "is undertrained for this task"
        )
    if fmt == "chat" and not no_cot:
        note += "; with CoT the answer is read after the closing think tag (`cot_format.think_tags`)"
    return note


def write_results(output_dir: str | Path, rows: Sequence[dict], summary: dict) -> Path:
    """``predictions.jsonl`` (one row per example) and ``summary.json`` in ``output_dir``."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    with open(output_dir / "predictions.jsonl", "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    (output_dir / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return output_dir
