"""``eval`` and ``score``: greedy generation on a test file, then the papers' scoring.

Prompts come from :mod:`axolotl_maskthought.formats`, the code that built the
training sequences, so the model sees at eval exactly the prompt it was trained
on. Generation is greedy and batched with left padding; each row stops on its
own (gsm8k and ICoT no-CoT: the first EOS; ICoT with CoT: the second EOS, the
one after the answer). Scoring rules live in :mod:`axolotl_maskthought.scoring`.

Python API (used by the quickstart and the in-training accuracy callback):
:func:`evaluate_model`, :func:`load_examples`, :func:`load_model_and_tokenizer`,
:func:`generate_greedy`. torch, transformers, peft and vllm are imported inside
the functions that use them.
"""

from __future__ import annotations

import inspect
import json
import sys
import time
from pathlib import Path
from typing import Sequence

from .formats import CoTExample, gsm8k_prompt_ids, icot_prompt_ids, tokenize_gsm8k, tokenize_icot
from .scoring import (
    check_format,
    has_answer,
    infer_format,
    load_examples,
    no_answer_note,
    read_generations,
    score_generation,
    score_generations,
    summarize,
    summary_line,
    write_results,
)

__all__ = [
    "evaluate_model",
    "load_examples",
    "load_model_and_tokenizer",
    "generate_greedy",
    "build_prompts",
    "eos_stop_count",
    "kept_position_shifts",
    "register",
]

BACKENDS = ("transformers", "vllm")
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
ADAPTER_FILE = "adapter_config.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
DTYPES = ("auto", "float32", "bfloat16", "float16")
VLLM_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)  # the max_lora_rank values vLLM accepts


def _command_error(message: str) -> Exception:
    from .cli import CommandError  # lazy: cli imports this module

    return CommandError(message)


# ---------------------------------------------------------------- prompts and stopping


def build_prompts(tokenizer, examples: Sequence[CoTExample], fmt: str, template: str | None = None,
                  no_cot: bool = False) -> list[list[int]]:
    """Prompt token ids, built by the training layout's own functions."""
    if check_format(fmt) == "icot":
        return [icot_prompt_ids(tokenizer, example.question, no_cot=no_cot) for example in examples]
    if template is None:
        from .args import CoTFormatConfig

        template = CoTFormatConfig().template()
    return [gsm8k_prompt_ids(tokenizer, example.question, template, no_cot=no_cot) for example in examples]


def kept_position_shifts(tokenizer, examples: Sequence[CoTExample], fmt: str,
                         template: str | None = None) -> list[tuple[int, int]]:
    """Per no-CoT prompt: (first prompt index after the CoT's place, CoT token count).

    A model trained with ``cot_removal.keep_position`` saw the tokens after a removed
    CoT at their original positions (arXiv 2405.14838, official ``keep_position``):
    once all CoT is gone, the second separator and the answer sit ``len(cot)``
    positions further on than their index. No-CoT generation must number them the
    same way. Both values come from the training layout (``tokenize_icot`` /
    ``tokenize_gsm8k``) of each example's own CoT, so they match what training removed.
    """
    if check_format(fmt) == "gsm8k" and template is None:
        from .args import CoTFormatConfig

        template = CoTFormatConfig().template()
    shifts = []
    for example in examples:
        row = tokenize_icot(tokenizer, example) if fmt == "icot" else tokenize_gsm8k(tokenizer, example, template)
        cot = row["cot_mask"]
        shifts.append((cot.index(1), sum(cot)) if any(cot) else (0, 0))
    return shifts


def eos_stop_count(fmt: str, no_cot: bool = False) -> int:
    """Generated EOS tokens after which a row is done: ICoT with CoT generates
    ``cot EOS #### answer EOS``; everything else ends at its first EOS."""
    return 2 if (check_format(fmt) == "icot" and not no_cot) else 1


# ---------------------------------------------------------------- transformers backend


def _forward_accepts(model, name: str) -> bool:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return name in inspect.signature(base.forward).parameters


def _greedy_batch(model, prompts: Sequence[Sequence[int]], eos_token_id: int, pad_token_id: int,
                  stop_after_eos: int, max_new_tokens: int,
                  position_shifts: Sequence[tuple[int, int]] | None = None) -> list[tuple[list[int], bool]]:
    """One left-padded batch: (generated ids up to and including the stopping EOS, stopped).
    ``position_shifts[row] = (start, shift)``: prompt tokens from index ``start`` on, and
    every generated token, get position ids ``shift`` higher (see :func:`kept_position_shifts`)."""
    import torch

    device = next(model.parameters()).device
    batch, width = len(prompts), max(len(prompt) for prompt in prompts)
    input_ids = torch.full((batch, width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((batch, width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        input_ids[row, width - len(prompt):] = torch.tensor(list(prompt), dtype=torch.long)
        attention_mask[row, width - len(prompt):] = 1
    input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
    # Positions count real tokens only, so a left-padded row sees the positions it would alone.
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)  # (B, T)
    for row, (start, shift) in enumerate(position_shifts or []):
        if shift:
            position_ids[row, width - len(prompts[row]) + start:] += shift
    extra = {"logits_to_keep": 1} if _forward_accepts(model, "logits_to_keep") else {}

    generated: list[list[int]] = [[] for _ in range(batch)]
    eos_seen = [0] * batch
    done = [False] * batch
    past = None
    step_ids, step_positions = input_ids, position_ids
    for _ in range(max_new_tokens):
        out = model(input_ids=step_ids, attention_mask=attention_mask, position_ids=step_positions,
                    past_key_values=past, use_cache=True, **extra)
        past = out.past_key_values
        next_tokens = out.logits[:, -1, :].argmax(dim=-1)  # (B,)
        for row, token in enumerate(next_tokens.tolist()):
            if done[row]:
                continue
            generated[row].append(token)
            if token == eos_token_id:
                eos_seen[row] += 1
                done[row] = eos_seen[row] >= stop_after_eos
        if all(done):
            break
        # Finished rows keep decoding (their tokens are dropped) so the cache stays rectangular.
        step_ids = next_tokens[:, None]
        step_positions = step_positions[:, -1:] + 1
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones((batch, 1))], dim=1)
    return list(zip(generated, done))


def generate_greedy(model, prompts: Sequence[Sequence[int]], eos_token_id: int, pad_token_id: int | None = None,
                    stop_after_eos: int = 1, batch_size: int = 8, max_new_tokens: int = 512,
                    progress: bool = True, position_shifts: Sequence[tuple[int, int]] | None = None,
                    ) -> list[tuple[list[int], bool]]:
    """Greedy continuations of ``prompts`` with a transformers causal LM, in input order.

    Batches are formed from prompts of similar length (fewer pads); each row stops
    at its ``stop_after_eos``-th generated EOS or after ``max_new_tokens``. Returns
    (generated ids including the final EOS, whether the row stopped on EOS). The
    model is put in eval mode and its training mode restored afterwards.
    """
    import torch
    from tqdm.auto import tqdm

    if batch_size < 1 or max_new_tokens < 1:
        raise ValueError("batch size and max new tokens must be at least 1")
    pad = pad_token_id if pad_token_id is not None else eos_token_id
    order = sorted(range(len(prompts)), key=lambda index: -len(prompts[index]))
    results: list = [None] * len(prompts)
    was_training = model.training
    model.eval()
    bar = tqdm(total=len(prompts), unit="ex", desc="generating", disable=not progress, file=sys.stderr)
    try:
        with torch.no_grad():  # not inference_mode: a training model's caches must stay usable by autograd
            for start in range(0, len(order), batch_size):
                indices = order[start:start + batch_size]
                rows = _greedy_batch(model, [prompts[i] for i in indices], eos_token_id, pad, stop_after_eos,
                                     max_new_tokens, [position_shifts[i] for i in indices] if position_shifts else None)
                for index, row in zip(indices, rows):
                    results[index] = row
                bar.update(len(indices))
    finally:
        bar.close()
        model.train(was_training)
    return results


def _has_weights(directory: Path) -> bool:
    return any((directory / name).is_file() for name in WEIGHT_FILES)


def model_kind(directory: str | Path) -> str | None:
    """``adapter`` (a LoRA adapter_config.json), ``weights`` (full model files) or None."""
    directory = Path(directory)
    if (directory / ADAPTER_FILE).is_file():
        return "adapter"
    if _has_weights(directory):
        return "weights"
    return None


def _check_model_dir(model_path: str | Path) -> tuple[Path, str]:
    directory = Path(model_path)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: no such model directory")
    kind = model_kind(directory)
    if kind is None:
        raise _command_error(
            f"{directory}: no model weights ({', '.join(WEIGHT_FILES[::2])}) or LoRA adapter ({ADAPTER_FILE}) found"
        )
    return directory, kind


def _adapter_base(directory: Path, base_model: str | None) -> str:
    if base_model:
        return str(base_model)
    base = json.loads((directory / ADAPTER_FILE).read_text(encoding="utf-8")).get("base_model_name_or_path")
    if not base:
        raise _command_error(f"{directory / ADAPTER_FILE}: no `base_model_name_or_path`; pass --base-model")
    return base


def _has_tokenizer(directory: Path) -> bool:
    return any((directory / name).is_file() for name in TOKENIZER_FILES)


def _tokenizer_source(directory: Path, fallback: str | None) -> str:
    if _has_tokenizer(directory) or not fallback:
        return str(directory)
    return str(fallback)


def _torch_dtype(dtype: str):
    import torch

    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
    if dtype != "auto":
        return getattr(torch, dtype)
    if torch.cuda.is_available():
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def load_model_and_tokenizer(model_path: str | Path, base_model: str | None = None,
                             tokenizer_path: str | None = None, dtype: str = "auto"):
    """(model, tokenizer) from an axolotl output directory or a model directory.

    A LoRA adapter (``adapter_config.json``) is applied with peft to ``base_model``
    (default: the adapter's ``base_model_name_or_path``) and merged. The tokenizer
    is ``tokenizer_path``, else the directory's own, else the base model's.
    """
    directory, kind = _check_model_dir(model_path)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = _torch_dtype(dtype)
    base = _adapter_base(directory, base_model) if kind == "adapter" else None
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path or _tokenizer_source(directory, base))
    if kind == "adapter":
        try:
            from peft import PeftModel
        except ImportError:
            raise _command_error(f"{directory} is a LoRA adapter: loading it needs the `peft` package") from None
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch_dtype)
        if len(tokenizer) > model.get_input_embeddings().num_embeddings:  # tokens added in training
            model.resize_token_embeddings(len(tokenizer))
        model = PeftModel.from_pretrained(model, str(directory)).merge_and_unload()
    else:
        model = AutoModelForCausalLM.from_pretrained(str(directory), dtype=torch_dtype)
    model.to("cuda" if torch.cuda.is_available() else "cpu")
    model.eval()
    return model, tokenizer


# ---------------------------------------------------------------- vLLM backend


def _import_vllm():
    try:
        import vllm
    except ImportError:
        raise _command_error("--backend vllm needs the `vllm` package, which is not installed (pip install vllm)") from None
    return vllm


def load_vllm(model_path: str | Path, base_model: str | None = None, tokenizer_path: str | None = None,
              dtype: str = "auto"):
    """(vllm.LLM, transformers tokenizer, LoRARequest or None) for ``model_path``."""
    vllm = _import_vllm()
    directory, kind = _check_model_dir(model_path)
    from transformers import AutoTokenizer

    base = _adapter_base(directory, base_model) if kind == "adapter" else None
    tokenizer_source = tokenizer_path or _tokenizer_source(directory, base)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_source)
    if kind == "adapter":
        from vllm.lora.request import LoRARequest

        rank = int(json.loads((directory / ADAPTER_FILE).read_text(encoding="utf-8")).get("r", 16))
        max_rank = min((r for r in VLLM_LORA_RANKS if r >= rank), default=rank)
        llm = vllm.LLM(model=base, tokenizer=tokenizer_source, dtype=dtype, enable_lora=True, max_lora_rank=max_rank)
        return llm, tokenizer, LoRARequest("adapter", 1, str(directory))
    return vllm.LLM(model=str(directory), tokenizer=tokenizer_source, dtype=dtype), tokenizer, None


def generate_vllm(llm, prompts: Sequence[Sequence[int]], eos_token_id: int, stop_after_eos: int = 1,
                  max_new_tokens: int = 512, lora_request=None, progress: bool = True) -> list[tuple[list[int], bool]]:
    """Greedy continuations with vLLM, same contract as :func:`generate_greedy`.

    vLLM stops a request at a token, not at its n-th occurrence, so each round
    generates up to the next EOS and feeds the unfinished rows back (greedy: the
    same tokens as one long run).
    """
    vllm = _import_vllm()
    generated: list[list[int]] = [[] for _ in prompts]
    done = [False] * len(prompts)
    pending = list(range(len(prompts)))
    for _ in range(stop_after_eos):
        pending = [i for i in pending if len(generated[i]) < max_new_tokens]
        if not pending:
            break
        requests = [{"prompt_token_ids": list(prompts[i]) + generated[i]} for i in pending]
        # Only the tokenizer's EOS ends a segment (as in the transformers backend), not the
        # model's other end-of-turn ids.
        params = [vllm.SamplingParams(temperature=0.0, max_tokens=max_new_tokens - len(generated[i]),
                                      stop_token_ids=[eos_token_id], ignore_eos=True, detokenize=False)
                  for i in pending]
        outputs = llm.generate(requests, params, lora_request=lora_request, use_tqdm=progress)
        still_pending = []
        for index, output in zip(pending, outputs):
            completion = output.outputs[0]
            tokens = list(completion.token_ids)
            stopped = completion.finish_reason == "stop"
            if stopped and (not tokens or tokens[-1] != eos_token_id):
                tokens.append(eos_token_id)
            generated[index].extend(tokens)
            if stopped and generated[index].count(eos_token_id) >= stop_after_eos:
                done[index] = True
            elif stopped:
                still_pending.append(index)
        pending = still_pending
    return list(zip(generated, done))


def _is_vllm(model) -> bool:
    return type(model).__module__.split(".")[0] == "vllm"


# ---------------------------------------------------------------- evaluation


def evaluate_model(model, tokenizer, examples: Sequence[CoTExample], fmt: str, template: str | None = None,
                   no_cot: bool = False, batch_size: int = 8, max_new_tokens: int = 512, progress: bool = True,
                   lora_request=None, keep_position: bool = False) -> dict:
    """Generate greedily for ``examples`` and score the answers.

    ``model``: a transformers causal LM (any mode, any device; restored after) or a
    ``vllm.LLM`` (then ``lora_request`` may name an adapter). ``template``: the
    gsm8k prompt template (default Alpaca). Returns ``accuracy``, ``correct``,
    ``n``, ``wrong``, ``no_answer`` (generations with no answer to read, counted
    apart from wrong ones), ``seconds``, ``examples_per_second`` (generation only) and
    ``predictions``: per example ``prompt`` (decoded, special tokens shown),
    ``generation`` (decoded without special tokens; what is scored), ``extracted``,
    ``gold``, ``correct`` and ``finished`` (False when max_new_tokens cut it off).
    ``keep_position`` (for a model trained with ``cot_removal.keep_position``, only
    with ``no_cot``): positions after the prompt's CoT place are shifted by the
    example's CoT length, as in training (:func:`kept_position_shifts`); raises
    ``ValueError`` with vLLM, which takes no position ids.
    """
    fmt = check_format(fmt)
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no eos_token; generation could never stop")
    prompts = build_prompts(tokenizer, examples, fmt, template, no_cot)
    stop_after_eos = eos_stop_count(fmt, no_cot)
    shifts = kept_position_shifts(tokenizer, examples, fmt, template) if keep_position and no_cot else None
    started = time.perf_counter()
    if _is_vllm(model):
        if shifts:
            raise ValueError("keep_position generation needs explicit position ids: use the transformers backend")
        outputs = generate_vllm(model, prompts, eos, stop_after_eos, max_new_tokens, lora_request, progress)
    else:
        outputs = generate_greedy(model, prompts, eos, tokenizer.pad_token_id, stop_after_eos, batch_size,
                                  max_new_tokens, progress, shifts)
    seconds = time.perf_counter() - started
    predictions = []
    for example, prompt, (generated_ids, finished) in zip(examples, prompts, outputs):
        generation = tokenizer.decode(generated_ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        extracted, correct = score_generation(generation, example.answer, fmt, no_cot)
        predictions.append({
            "prompt": tokenizer.decode(prompt, skip_special_tokens=False, clean_up_tokenization_spaces=False),
            "generation": generation,
            "extracted": extracted,
            "gold": example.answer,
            "correct": correct,
            "finished": finished,
        })
    answered = [has_answer(row["extracted"], fmt) for row in predictions]
    summary = summarize([row["correct"] for row in predictions], answered, seconds)
    return {**summary, "predictions": predictions}


# ---------------------------------------------------------------- config and CLI


def _format_from_type(dataset_type) -> str | None:
    if isinstance(dataset_type, str) and dataset_type.startswith("axolotl_maskthought.strategies."):
        name = dataset_type.rsplit(".", 1)[1]
        return name if name in ("gsm8k", "icot") else None
    return None


def settings_from_config(path: str | Path) -> dict:
    """What ``eval --config`` takes from a training YAML: ``model`` (output_dir when it
    holds weights or an adapter, else base_model; ``trained`` says which), ``base_model``, ``tokenizer``,
    ``format`` (from the first dataset's ``type``, None if not ours) and ``cot_format``."""
    import yaml

    from .args import CoTFormatConfig

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such config file")
    cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(cfg, dict):
        raise ValueError(f"{path}: not a YAML mapping")
    base_model, output_dir = cfg.get("base_model"), cfg.get("output_dir")
    trained = bool(output_dir and Path(output_dir).is_dir() and model_kind(output_dir))
    if not trained and not base_model:
        raise ValueError(f"{path}: `output_dir` holds no weights and `base_model` is not set")
    types = [d.get("type") for d in cfg.get("datasets") or [] if isinstance(d, dict)]
    formats = [fmt for fmt in map(_format_from_type, types) if fmt]
    try:
        cot_format = CoTFormatConfig(**(cfg.get("cot_format") or {}))
    except ValueError as err:
        raise ValueError(f"{path}: `cot_format`: {err}") from None
    removal = cfg.get("cot_removal")
    return {
        "model": str(output_dir if trained else base_model),
        "trained": trained,
        "base_model": base_model,
        "tokenizer": cfg.get("tokenizer_config"),
        "format": formats[0] if formats else None,
        "dataset_types": types,
        "cot_format": cot_format,
        "keep_position": bool(isinstance(removal, dict) and removal.get("keep_position")),
    }


def _resolve(args) -> dict:
    """Model, format, template and field names from the flags and ``--config``."""
    from .args import CoTFormatConfig

    settings = settings_from_config(args.config) if args.config else {}
    cot_format = settings.get("cot_format")
    prompt_template = getattr(args, "prompt_template", None)
    if prompt_template is not None:
        base = cot_format.model_dump() if cot_format else {}
        cot_format = CoTFormatConfig(**{**base, "prompt_template": prompt_template})
    fmt = args.format or settings.get("format")
    if fmt is None and args.config:
        raise _command_error(
            f"{args.config}: no dataset `type:` is axolotl_maskthought.strategies.gsm8k or .icot "
            f"(found {settings.get('dataset_types')}); pass --format"
        )
    fmt = infer_format(args.data, fmt)
    template = (cot_format or CoTFormatConfig()).template()
    return {"settings": settings, "cot_format": cot_format, "format": fmt, "template": template}


def run_eval(args) -> int:
    if args.backend not in BACKENDS:
        raise ValueError(f"unknown backend {args.backend!r}: expected one of {', '.join(BACKENDS)}")
    if not args.model and not args.config:
        raise _command_error("eval needs a MODEL directory or --config CFG.yml")
    if args.keep_position and not args.no_cot:
        raise _command_error("--keep-position shifts the positions of no-CoT prompts: it needs --no-cot")
    resolved = _resolve(args)
    settings, fmt = resolved["settings"], resolved["format"]
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
        print(f"note: {source}: no-CoT positions after the question are shifted by each example's CoT length, "
              "as in training", file=sys.stderr)
    result = evaluate_model(model, tokenizer, examples, fmt, resolved["template"], args.no_cot, args.batch_size,
                            args.max_new_tokens, progress=not args.no_progress, lora_request=lora_request,
                            keep_position=keep_position)
    predictions = result.pop("predictions")
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
        "unfinished": sum(1 for row in predictions if not row["finished"]),
    }
    print(f"{args.data}: {summary_line(summary)} [{fmt}, {'no CoT' if args.no_cot else 'CoT'}, {args.backend}, "
          f"batch {args.batch_size}]")
    note = no_answer_note(predictions, fmt, args.no_cot)
    if note:
        print(note)
    if args.output:
        print(f"wrote {write_results(args.output, predictions, summary)}/{{predictions.jsonl,summary.json}}")
    return 0


def run_score(args) -> int:
    resolved = _resolve(args)
    fmt = resolved["format"]
    examples = load_examples(args.data, fmt, resolved["cot_format"], limit=args.limit)
    generations = read_generations(args.predictions, args.field)
    if len(generations) != len(examples):
        raise ValueError(
            f"{args.predictions}: {len(generations)} generations for {len(examples)} examples in {args.data} "
            "(same order, one per example; --limit N scores the first N)"
        )
    rows, summary = score_generations(examples, generations, fmt, args.no_cot)
    summary.update(data=str(args.data), predictions=str(args.predictions), format=fmt, no_cot=args.no_cot)
    print(f"{args.data}: {summary_line(summary)} [{fmt}, {'no CoT' if args.no_cot else 'CoT'}]")
    note = no_answer_note(rows, fmt, args.no_cot)
    if note:
        print(note)
    if args.output:
        print(f"wrote {write_results(args.output, rows, summary)}/{{predictions.jsonl,summary.json}}")
    return 0


def _common_flags(parser) -> None:
    parser.add_argument("--data", required=True, help="test file: .jsonl (gsm8k) or .txt (icot lines)")
    parser.add_argument("--format", help="gsm8k or icot (default: from --config's dataset type, else the suffix)")
    parser.add_argument("--config", help="training YAML: model, tokenizer, prompt template and format")
    parser.add_argument("--no-cot", action="store_true",
                        help="answer without CoT: gsm8k prompts end with `####`, icot prompts with both EOS")
    parser.add_argument("--limit", type=int, help="only the first N examples")
    parser.add_argument("--output", help="directory for predictions.jsonl and summary.json")


def register(subparsers) -> None:
    """Add the ``eval`` and ``score`` subcommands."""
    evaluate = subparsers.add_parser(
        "eval", help="greedy generation on a test file and accuracy",
        description="Greedy, batched generation with the training prompt layout, scored as in the papers "
        "(gsm8k: number after '#### ' within 1e-4; icot: exact answer after '####').")
    evaluate.add_argument("model", nargs="?", help="axolotl output dir (full weights or LoRA adapter) or model dir")
    _common_flags(evaluate)
    evaluate.add_argument("--keep-position", action="store_true",
                          help="with --no-cot: number positions as `cot_removal.keep_position` trained them "
                               "(default: from --config)")
    evaluate.add_argument("--batch-size", type=int, default=8)
    evaluate.add_argument("--max-new-tokens", type=int, default=512)
    evaluate.add_argument("--backend", default="transformers", help="transformers (default) or vllm")
    evaluate.add_argument("--prompt-template", help="gsm8k prompt: alpaca, plain or a string with {question}")
    evaluate.add_argument("--base-model", help="base model of a LoRA adapter (default: its adapter_config)")
    evaluate.add_argument("--tokenizer", help="tokenizer directory (default: the model's, else the base model's)")
    evaluate.add_argument("--dtype", default="auto", help="auto (fp32 on CPU, bf16/fp16 on GPU), float32, ...")
    evaluate.add_argument("--no-progress", action="store_true", help="no progress bar")
    evaluate.set_defaults(func=run_eval)

    score = subparsers.add_parser(
        "score", help="score generations made elsewhere",
        description="Score one generation per example (JSON lines, same order as --data) with eval's rules.")
    _common_flags(score)
    score.add_argument("--predictions", required=True, help="JSON lines with a generation per example, in order")
    score.add_argument("--field", default="generation", help="field holding the generation (default: generation)")
    score.set_defaults(func=run_score)
