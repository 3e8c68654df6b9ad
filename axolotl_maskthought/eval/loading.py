"""Load a trained model for evaluation: full weights or a LoRA adapter (merged with peft), and its tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


ADAPTER_FILE = "adapter_config.json"


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


DTYPES = ("auto", "float32", "bfloat16", "float16")


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
        raise ValueError(
            f"{directory}: no model weights ({', '.join(WEIGHT_FILES[::2])}) or LoRA adapter ({ADAPTER_FILE}) found"
        )
    return directory, kind


def _adapter_base(directory: Path, base_model: str | None) -> str:
    if base_model:
        return str(base_model)
    base = json.loads((directory / ADAPTER_FILE).read_text(encoding="utf-8")).get("base_model_name_or_path")
    if not base:
        raise ValueError(f"{directory / ADAPTER_FILE}: no `base_model_name_or_path`; pass --base-model")
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


def load_model_and_tokenizer(
    model_path: str | Path, base_model: str | None = None, tokenizer_path: str | None = None, dtype: str = "auto"
):
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
            raise ValueError(f"{directory} is a LoRA adapter: loading it needs the `peft` package") from None
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch_dtype)
        if len(tokenizer) > model.get_input_embeddings().num_embeddings:  # tokens added in training
            model.resize_token_embeddings(len(tokenizer))
        model = PeftModel.from_pretrained(model, str(directory)).merge_and_unload()
    else:
        model = AutoModelForCausalLM.from_pretrained(str(directory), dtype=torch_dtype)
    model.to("cuda" if torch.cuda.is_available() else "cpu")
    model.eval()
    return model, tokenizer
