"""``eval`` and ``score``: greedy generation on a test file, then the papers' scoring.

Argument parsing and printing only: prompts, generation and scoring are
:mod:`axolotl_maskthought.eval`. Errors name the flag or file and exit 2.
"""

from __future__ import annotations

import sys
from pathlib import Path

from axolotl_maskthought.cli import CommandError
from axolotl_maskthought.data.registry import DATASET_TYPES
from axolotl_maskthought.eval.chat import ChatSettings
from axolotl_maskthought.eval.evaluation import evaluate_model
from axolotl_maskthought.eval.loading import _has_tokenizer, load_model_and_tokenizer
from axolotl_maskthought.eval.scoring import (
    infer_format,
    load_examples,
    no_answer_note,
    read_generations,
    score_generations,
    summary_line,
    write_results,
)
from axolotl_maskthought.eval.settings import settings_from_config
from axolotl_maskthought.eval.vllm import load_vllm

BACKENDS = ("transformers", "vllm")


def _resolve(args) -> dict:
    """Model, format, template and field names from the flags and ``--config``."""
    from axolotl_maskthought.config import CoTFormatConfig

    settings = settings_from_config(args.config) if args.config else {}
    cot_format = settings.get("cot_format")
    prompt_template = getattr(args, "prompt_template", None)
    if prompt_template is not None:
        base = cot_format.model_dump() if cot_format else {}
        cot_format = CoTFormatConfig(**{**base, "prompt_template": prompt_template})
    fmt = args.format or settings.get("format")
    if fmt is None and args.config:
        evaluated = " or ".join(f"`{entry.module}`" for entry in DATASET_TYPES if entry.evaluates)
        raise CommandError(
            f"{args.config}: no dataset `type:` is {evaluated} (found {settings.get('dataset_types')}); pass --format"
        )
    fmt = infer_format(args.data, fmt)
    if fmt == "chat":
        if prompt_template is not None:
            raise CommandError("--prompt-template is the gsm8k prompt; chat prompts come from the chat template")
        # the chat template and options of --config's chat dataset (else the tokenizer's own template)
        template = settings.get("chat") or ChatSettings()
    else:
        template = (cot_format or CoTFormatConfig()).template()
    return {"settings": settings, "cot_format": cot_format, "format": fmt, "template": template}


def run_eval(args) -> int:
    if args.backend not in BACKENDS:
        raise ValueError(f"unknown backend {args.backend!r}: expected one of {', '.join(BACKENDS)}")
    if not args.model and not args.config:
        raise CommandError("eval needs a MODEL directory or --config CFG.yml")
    if args.keep_position and not args.no_cot:
        raise CommandError("--keep-position shifts the positions of no-CoT prompts: it needs --no-cot")
    if args.inject_error:
        if args.no_cot:
            raise CommandError("--inject-error corrupts the model's CoT: it cannot be combined with --no-cot")
        if args.backend != "transformers":
            raise CommandError("--inject-error feeds a corrupted CoT prefix: use --backend transformers")
    resolved = _resolve(args)
    settings, fmt = resolved["settings"], resolved["format"]
    if fmt == "chat" and args.inject_error:
        raise CommandError("--inject-error corrupts an icot or gsm8k CoT; it does not support chat data")
    examples = load_examples(args.data, fmt, resolved["cot_format"], limit=args.limit)
    model_path = args.model or settings["model"]
    if not args.model and not settings["trained"]:
        print(f"note: {args.config}: `output_dir` holds no weights; evaluating `base_model`", file=sys.stderr)
    base_model = args.base_model or settings.get("base_model")
    tokenizer_path = args.tokenizer
    if tokenizer_path is None and settings.get("tokenizer") and not _has_tokenizer(Path(model_path)):
        tokenizer_path = settings["tokenizer"]  # the model dir's own tokenizer (with added tokens) wins
    lora_request = None
    if args.backend == "vllm":
        model, tokenizer, lora_request = load_vllm(model_path, base_model, tokenizer_path, args.dtype)
    else:
        model, tokenizer = load_model_and_tokenizer(model_path, base_model, tokenizer_path, args.dtype)
    keep_position = bool(args.no_cot and (args.keep_position or settings.get("keep_position")))
    if keep_position:
        source = "--keep-position" if args.keep_position else f"{args.config}: `cot_removal.keep_position`"
        print(
            f"note: {source}: no-CoT positions after the question are shifted by each example's CoT length, "
            "as in training",
            file=sys.stderr,
        )
    result = evaluate_model(
        model,
        tokenizer,
        examples,
        fmt,
        resolved["template"],
        args.no_cot,
        args.batch_size,
        args.max_new_tokens,
        progress=not args.no_progress,
        lora_request=lora_request,
        keep_position=keep_position,
    )
    predictions = result.pop("predictions")
    recovery = None
    if args.inject_error:
        from axolotl_maskthought.eval.error_injection import evaluate_error_recovery

        recovery = evaluate_error_recovery(
            model,
            tokenizer,
            examples,
            fmt,
            resolved["template"],
            args.error_seed,
            args.inject_error,
            args.batch_size,
            args.max_new_tokens,
            progress=not args.no_progress,
        )
    summary = {
        **result,
        "model": str(model_path),
        "data": str(args.data),
        "format": fmt,
        "no_cot": args.no_cot,
        "keep_position": keep_position,
        "backend": args.backend,
        "batch_size": args.batch_size,
        "max_new_tokens": args.max_new_tokens,
        "prompt_template": resolved["template"] if fmt == "gsm8k" else None,
        "chat_template": resolved["template"].describe() if fmt == "chat" else None,
        "unfinished": sum(1 for row in predictions if not row["finished"]),
    }
    print(
        f"{args.data}: {summary_line(summary)} [{fmt}, {'no CoT' if args.no_cot else 'CoT'}, {args.backend}, "
        f"batch {args.batch_size}]"
    )
    note = no_answer_note(predictions, fmt, args.no_cot)
    if note:
        print(note)
    if recovery is not None:
        error_rows = recovery.pop("predictions")
        rules = ", ".join(f"{count} by {name}" for name, count in recovery["rules"].items() if count)
        print(
            f"after one injected CoT error (first half of the CoT, seed {args.error_seed}; {rules or 'none'}"
            + (f"; {recovery['skipped']} examples without CoT skipped" if recovery["skipped"] else "")
            + f"): {summary_line(recovery)}"
        )
        print(f"recovery: accuracy {recovery['accuracy']:.4f} after the error against {summary['accuracy']:.4f} clean")
        summary["after_error"] = {**recovery, "rule": args.inject_error, "seed": args.error_seed}
    if args.output:
        print(f"wrote {write_results(args.output, predictions, summary)}/{{predictions.jsonl,summary.json}}")
        if recovery is not None:
            write_results(Path(args.output) / "after_error", error_rows, summary["after_error"])
            print(f"wrote {Path(args.output) / 'after_error'}/{{predictions.jsonl,summary.json}}")
    return 0


def run_score(args) -> int:
    from axolotl_maskthought.config import CoTFormatConfig

    resolved = _resolve(args)
    fmt = resolved["format"]
    examples = load_examples(args.data, fmt, resolved["cot_format"], limit=args.limit)
    generations = read_generations(args.predictions, args.field)
    if len(generations) != len(examples):
        raise ValueError(
            f"{args.predictions}: {len(generations)} generations for {len(examples)} examples in {args.data} "
            "(same order, one per example; --limit N scores the first N)"
        )
    close_tag = (resolved["cot_format"] or CoTFormatConfig()).think_tags[1]
    rows, summary = score_generations(examples, generations, fmt, args.no_cot, close_tag)
    summary.update(data=str(args.data), predictions=str(args.predictions), format=fmt, no_cot=args.no_cot)
    print(f"{args.data}: {summary_line(summary)} [{fmt}, {'no CoT' if args.no_cot else 'CoT'}]")
    note = no_answer_note(rows, fmt, args.no_cot)
    if note:
        print(note)
    if args.output:
        print(f"wrote {write_results(args.output, rows, summary)}/{{predictions.jsonl,summary.json}}")
    return 0


def _common_flags(parser) -> None:
    parser.add_argument(
        "--data",
        required=True,
        help="test file: .jsonl (gsm8k, or chat: rows with `messages`/`conversations`) or .txt (icot lines)",
    )
    parser.add_argument("--format", help="gsm8k, icot or chat (default: from --config's dataset type, else the file)")
    parser.add_argument(
        "--config", help="training YAML: model, tokenizer, format, prompt template or chat template and fields"
    )
    parser.add_argument(
        "--no-cot",
        action="store_true",
        help="answer without CoT: gsm8k prompts end with `####`, icot prompts with both EOS, chat prompts with "
        "the template's empty reasoning (Qwen3: `<think>\\n\\n</think>\\n\\n`)",
    )
    parser.add_argument("--limit", type=int, help="only the first N examples")
    parser.add_argument("--output", help="directory for predictions.jsonl and summary.json")


def register(subparsers) -> None:
    """Add the ``eval`` and ``score`` subcommands."""
    evaluate = subparsers.add_parser(
        "eval",
        help="greedy generation on a test file and accuracy",
        description="Greedy, batched generation with the training prompt layout, scored as in the papers "
        "(gsm8k: number after '#### ' within 1e-4; icot: exact answer after '####'; chat: the answer, after "
        "'</think>' with CoT, equal to the final assistant content, or as numbers within 1e-4).",
    )
    evaluate.add_argument("model", nargs="?", help="axolotl output dir (full weights or LoRA adapter) or model dir")
    _common_flags(evaluate)
    evaluate.add_argument(
        "--keep-position",
        action="store_true",
        help="with --no-cot: number positions as `cot_removal.keep_position` trained them (default: from --config)",
    )
    evaluate.add_argument(
        "--inject-error",
        nargs="?",
        const="digit",
        choices=("digit", "token"),
        metavar="RULE",
        help="also score the answer after one error in the gold CoT prefix (Masked Thought's recovery test): a "
        "seeded token in the CoT's first half replaced, digit d -> (d+1) mod 10 (`digit`, the default; examples "
        "without a digit token there fall back to `token`) or any other base-vocabulary token (`token`); the model "
        "continues greedily",
    )
    evaluate.add_argument(
        "--error-seed", type=int, default=0, help="seed of --inject-error's positions and tokens (default: %(default)s)"
    )
    evaluate.add_argument("--batch-size", type=int, default=8, help="prompts generated together (default: %(default)s)")
    evaluate.add_argument(
        "--max-new-tokens",
        type=int,
        default=512,
        help="generation stops after this many new tokens per prompt (default: %(default)s)",
    )
    evaluate.add_argument("--backend", default="transformers", help="transformers or vllm (default: %(default)s)")
    evaluate.add_argument("--prompt-template", help="gsm8k prompt: alpaca, plain or a string with {question}")
    evaluate.add_argument("--base-model", help="base model of a LoRA adapter (default: its adapter_config)")
    evaluate.add_argument("--tokenizer", help="tokenizer directory (default: the model's, else the base model's)")
    evaluate.add_argument(
        "--dtype", default="auto", help="auto (fp32 on CPU, bf16/fp16 on GPU), float32, ... (default: %(default)s)"
    )
    evaluate.add_argument("--no-progress", action="store_true", help="no progress bar")
    evaluate.set_defaults(func=run_eval)

    score = subparsers.add_parser(
        "score",
        help="score generations made elsewhere",
        description="Score one generation per example (JSON lines, same order as --data) with eval's rules.",
    )
    _common_flags(score)
    score.add_argument("--predictions", required=True, help="JSON lines with a generation per example, in order")
    score.add_argument("--field", default="generation", help="field holding the generation (default: %(default)s)")
    score.set_defaults(func=run_score)
