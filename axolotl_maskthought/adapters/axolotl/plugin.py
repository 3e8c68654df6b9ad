"""The axolotl plugin: ``plugins: [axolotl_maskthought.MaskThoughtPlugin]``.

Every hook does nothing unless the config has a ``masked_thought:`` or
``cot_removal:`` block or a dataset of this package (axolotl 0.21 registers
installed plugins on every run).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from axolotl.integrations.base import BasePlugin

from .validation import STRATEGY_PREFIX

LOG = logging.getLogger("axolotl.maskthought")


def _uses_strategies(cfg) -> bool:
    for key in ("datasets", "test_datasets"):
        for dataset in cfg.get(key) or []:
            ds_type = dataset.get("type") if hasattr(dataset, "get") else None
            if isinstance(ds_type, str) and ds_type.startswith(STRATEGY_PREFIX):
                return True
    return False


def is_active(cfg) -> bool:
    return bool(cfg.get("masked_thought") or cfg.get("cot_removal") or _uses_strategies(cfg))


def _mask_token(cfg) -> str | None:
    block = cfg.get("masked_thought")
    if block and block.get("replacement") == "mask_token":
        return block.get("mask_token") or "<mask>"
    return None


def tokenization_fingerprint(cfg) -> str:
    """What of this plugin's settings changes tokenized data (axolotl's hash sees none of it)."""
    from ... import __version__

    payload = {
        "version": __version__,
        "cot_format": dict(cfg.get("cot_format") or {}),
        "mask_token": _mask_token(cfg),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:12]


class MaskThoughtPlugin(BasePlugin):
    """Masked Thought and Stepwise Internalization for axolotl."""

    def get_input_args(self) -> str:
        return "axolotl_maskthought.args.MaskThoughtArgs"

    def register(self, cfg: dict):
        if is_active(cfg) and cfg.get("trainer_cls"):
            from .trainer import trainer_class

            trainer_class(cfg["trainer_cls"])  # fail on a bad `trainer_cls` before any model loads
        # The <mask> token goes through axolotl's own `tokens:` so that the tokenizer
        # and the embedding resize stay axolotl's; we only initialise its rows.
        token = _mask_token(cfg)
        if token is not None:
            tokens = list(cfg.get("tokens") or [])
            if token not in tokens:
                cfg["tokens"] = tokens + [token]

    def load_datasets(self, cfg, preprocess: bool = False):
        if _uses_strategies(cfg) and cfg.get("dataset_prepared_path"):
            base = Path(cfg["dataset_prepared_path"])
            suffix = f"maskthought-{tokenization_fingerprint(cfg)}"
            if base.name != suffix:
                cfg["dataset_prepared_path"] = str(base / suffix)
                LOG.info("prepared data keyed by plugin settings: %s", cfg["dataset_prepared_path"])
        return None  # axolotl loads the data itself

    def pre_lora_load(self, cfg, model):
        token = _mask_token(cfg)
        if token is None:
            return
        from transformers import AutoTokenizer

        from ...ops.embeddings import init_rows_to_mean

        base = AutoTokenizer.from_pretrained(cfg.get("tokenizer_config") or cfg["base_model"])
        if token in base.get_vocab():
            return  # trained already (a merged model, or a tokenizer that has it)
        from axolotl.loaders import load_tokenizer

        token_id = load_tokenizer(cfg).convert_tokens_to_ids(token)
        init_rows_to_mean(model, [token_id], existing_rows=len(base))
        LOG.info("initialised %s (id %d) embedding rows to the mean of %d rows", token, token_id, len(base))

    def post_lora_load(self, cfg, model):
        if _mask_token(cfg) is None or cfg.get("adapter") not in ("lora", "qlora"):
            return
        from ...ops.embeddings import untrainable_embeddings

        missing = untrainable_embeddings(model)
        if missing:
            raise ValueError(
                f"`masked_thought.replacement: mask_token` with LoRA: the {' and '.join(missing)} do not "
                "train, so the new token's rows would never be learned or saved; list your model's "
                "embedding modules in `lora_modules_to_save` (e.g. [embed_tokens, lm_head])"
            )

    def get_trainer_cls(self, cfg):
        if not is_active(cfg) or cfg.get("rl"):
            return None
        from .trainer import trainer_class

        return trainer_class(cfg.get("trainer_cls"))

    def add_callbacks_post_trainer(self, cfg, trainer):
        """Answer accuracy at evaluation steps when `cot_format.eval_accuracy_samples` > 0."""
        block = cfg.get("cot_format")
        if not block or not block.get("eval_accuracy_samples"):
            return []
        from ...callbacks import build_accuracy_callback

        callback = build_accuracy_callback(cfg, trainer)
        return [callback] if callback is not None else []

    def post_trainer_create(self, cfg, trainer):
        from ...engine import MaskThoughtMixin

        if isinstance(trainer, MaskThoughtMixin):
            trainer.configure_maskthought(cfg.get("masked_thought"), cfg.get("cot_removal"))
            if trainer.cot_removal is not None:  # CoT lengths vs the schedule, logged when training begins
                from ...cot_lengths import CoTLengthReportCallback

                length_setting = "max_steps" if cfg.get("max_steps") else "num_epochs"
                trainer.add_callback(CoTLengthReportCallback(
                    trainer.cot_removal, trainer.train_dataset, length_setting, cfg.get("num_epochs")))
