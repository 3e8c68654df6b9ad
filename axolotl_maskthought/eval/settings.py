"""What ``eval --config`` reads from a training YAML: model, tokenizer, format and prompt options."""

from __future__ import annotations

from pathlib import Path

from axolotl_maskthought.data.registry import dataset_type
from axolotl_maskthought.eval.chat import ChatSettings
from axolotl_maskthought.eval.loading import model_kind


def settings_from_config(path: str | Path) -> dict:
    """What ``eval --config`` takes from a training YAML: ``model`` (output_dir when it
    holds weights or an adapter, else base_model; ``trained`` says which), ``base_model``, ``tokenizer``,
    ``format`` (from the first dataset whose ``type`` the registry says ``eval`` supports, None if
    none), ``cot_format`` and ``chat`` (the :class:`~axolotl_maskthought.eval.chat.ChatSettings`
    of the config's top-level chat keys and its first ``chat_template`` dataset entry, used when
    the format is chat)."""
    import yaml

    from axolotl_maskthought.config import CoTFormatConfig

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
    datasets = [d for d in cfg.get("datasets") or [] if isinstance(d, dict)]
    types = [d.get("type") for d in datasets]
    evaluated = [(d, entry) for d, entry in zip(datasets, map(dataset_type, types)) if entry and entry.evaluates]
    formats = [entry.format for _, entry in evaluated]
    try:
        cot_format = CoTFormatConfig(**(cfg.get("cot_format") or {}))
    except ValueError as err:
        raise ValueError(f"{path}: `cot_format`: {err}") from None
    chat_entries = [d for d, entry in evaluated if entry.format == "chat"]
    chat = ChatSettings.from_config(cfg, chat_entries[0] if chat_entries else None)
    removal = cfg.get("cot_removal")
    return {
        "model": str(output_dir if trained else base_model),
        "trained": trained,
        "base_model": base_model,
        "tokenizer": cfg.get("tokenizer_config"),
        "format": formats[0] if formats else None,
        "dataset_types": types,
        "cot_format": cot_format,
        "chat": chat,
        "keep_position": bool(isinstance(removal, dict) and removal.get("keep_position")),
    }
