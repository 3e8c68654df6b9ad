"""The axolotl plugin: ``plugins: [axolotl_maskthought.MaskThoughtPlugin]``.

Every hook does nothing unless the config has a ``masked_thought:`` or
``cot_removal:`` block or a dataset of this package (axolotl 0.21 registers
installed plugins on every run).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from pathlib import Path

from axolotl.integrations.base import BasePlugin

from axolotl_maskthought.adapters.axolotl.validation import check_replacement_token
from axolotl_maskthought.data.registry import dataset_entries

LOG = logging.getLogger("axolotl.maskthought")


def _uses_strategies(cfg) -> bool:
    return any(entry is not None for *_, entry in dataset_entries(cfg))


def is_active(cfg) -> bool:
    return bool(cfg.get("masked_thought") or cfg.get("cot_removal") or _uses_strategies(cfg))


def _mask_token(cfg) -> str | None:
    block = cfg.get("masked_thought")
    if block and block.get("replacement") == "mask_token":
        return block.get("mask_token") or "<mask>"
    return None


PREPARED_KEY = re.compile(r"maskthought-[0-9a-f]{12}")


def tokenization_fingerprint(cfg) -> str:
    """12 hex digits keying prepared data by what of this plugin changes tokenized rows
    and axolotl's prepared-data hash does not see: the `cot_format:` options (defaults
    filled in, the template as text), the added mask token, the package's
    tokenization code, and under `excess_length_strategy: truncate` the lengths the
    strategies cut rows to (axolotl's hash has no `excess_length_strategy` or
    `eval_sequence_len`).

    Raises:
        pydantic.ValidationError: the `cot_format:` block is invalid.
    """
    from axolotl_maskthought.strategies.base import format_options, tokenization_code_fingerprint

    options = format_options(cfg)
    # eval_accuracy_samples only picks rows to generate on; a template name and its text give the same rows.
    layout = options.model_dump(mode="json", exclude={"eval_accuracy_samples"})
    layout["prompt_template"] = options.template()
    payload = {"code": tokenization_code_fingerprint(), "cot_format": layout, "mask_token": _mask_token(cfg)}
    if str(cfg.get("excess_length_strategy") or "drop").lower() == "truncate":
        # our strategies cut rows themselves then; axolotl's hash sees `sequence_len` only
        payload["truncate"] = [cfg.get("sequence_len"), cfg.get("eval_sequence_len")]
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:12]


def key_prepared_path(cfg) -> None:
    """Point `dataset_prepared_path` at ``<path>/maskthought-<fingerprint>``, `<path>`
    being the user's value or axolotl's default ``last_run_prepared``, which axolotl
    saves to and loads from even when the key is unset.

    axolotl's own hash of prepared data ignores plugin keys, so without this a run
    would load rows tokenized under other `cot_format:` settings. Idempotent: a path
    keyed already (a reloaded config) is re-keyed, never nested. No-op when the plugin
    is inactive.
    """
    if not is_active(cfg):
        return
    from pydantic import ValidationError

    try:
        key = f"maskthought-{tokenization_fingerprint(cfg)}"
    except ValidationError:
        return  # axolotl's validation reports the bad `cot_format:` block next
    from axolotl.common.const import DEFAULT_DATASET_PREPARED_PATH

    base = Path(cfg.get("dataset_prepared_path") or DEFAULT_DATASET_PREPARED_PATH)
    if PREPARED_KEY.fullmatch(base.name):
        base = base.parent
    keyed = str(base / key)
    if cfg.get("dataset_prepared_path") != keyed:
        cfg["dataset_prepared_path"] = keyed
        LOG.info("prepared data keyed by plugin settings: %s", keyed)


def _merge_with_training_tokenizer(cfg) -> None:
    """`axolotl merge-lora` with an added `<mask>`: the merged folder must get the
    tokenizer training used, not the base model's.

    axolotl's memory-efficient merge copies the base model's tokenizer files beside the
    merged weights, whose embeddings have the added rows. From axolotl 0.21 on, the
    plugin's ``post_lora_merge`` then writes the training tokenizer; before it, no hook
    runs after that merge, so the legacy merge (which saves axolotl's tokenizer, built
    from the same config as in training) is chosen, and an explicit
    `merge_method: memory_efficient` is refused.
    """
    if hasattr(BasePlugin, "post_lora_merge"):
        return
    method = cfg.get("merge_method")
    if method is None:
        cfg["merge_method"] = "legacy"
        LOG.warning(
            "merge-lora: `merge_method: legacy` (the memory-efficient merge of this axolotl version would "
            "write the base model's tokenizer, without the mask token, beside the merged model)"
        )
    elif method != "legacy":
        raise ValueError(
            f"`merge_method: {method}` with `masked_thought.replacement: mask_token`: this axolotl version's "
            "memory-efficient merge writes the base model's tokenizer, without the added mask token, beside "
            "the merged model; use `merge_method: legacy` (or axolotl >= 0.21)"
        )


class MaskThoughtPlugin(BasePlugin):
    """Masked Thought and Stepwise Internalization for axolotl."""

    def get_input_args(self) -> str:
        return "axolotl_maskthought.adapters.axolotl.args.MaskThoughtArgs"

    def register(self, cfg: dict):
        from axolotl_maskthought.adapters.axolotl.versions import warn_if_untested_axolotl

        warn_if_untested_axolotl()  # the earliest hook: every axolotl command passes here
        if is_active(cfg) and cfg.get("trainer_cls"):
            from axolotl_maskthought.adapters.axolotl.trainer import trainer_class

            trainer_class(cfg["trainer_cls"])  # fail on a bad `trainer_cls` before any model loads
        # The <mask> token goes through axolotl's own `tokens:` so that the tokenizer
        # and the embedding resize stay axolotl's; we only initialise its rows.
        token = _mask_token(cfg)
        if token is not None:
            tokens = list(cfg.get("tokens") or [])
            if token not in tokens:
                cfg["tokens"] = tokens + [token]
                LOG.info("`tokens`: added %s for `masked_thought.replacement: mask_token`", token)
            if cfg.get("merge_lora"):
                _merge_with_training_tokenizer(cfg)
        # Here, on the raw config, because every axolotl command (train, preprocess,
        # evaluate, ...) and in-process `load_cfg` passes through it before any data is
        # loaded; `load_datasets` is not called by all of them.
        key_prepared_path(cfg)

    def load_datasets(self, cfg, preprocess: bool = False):
        key_prepared_path(cfg)  # a no-op after register; for configs set up without it
        # the earliest hook with axolotl's tokenizer decided: before any row is tokenized
        check_replacement_token(cfg)
        return None  # axolotl loads the data itself

    def pre_model_load(self, cfg):
        check_replacement_token(cfg)  # for commands that do not call load_datasets

    def pre_lora_load(self, cfg, model):
        token = _mask_token(cfg)
        if token is None:
            return
        from transformers import AutoTokenizer

        from axolotl_maskthought.engine.embeddings import init_rows_to_mean

        base = AutoTokenizer.from_pretrained(cfg.get("tokenizer_config") or cfg["base_model"])
        if token in base.get_vocab():
            return  # trained already (a merged model, or a tokenizer that has it)
        from axolotl.loaders import load_tokenizer

        token_id = load_tokenizer(cfg).convert_tokens_to_ids(token)
        init_rows_to_mean(model, [token_id], existing_rows=len(base))
        LOG.info("initialised %s (id %d) embedding rows to the mean of %d rows", token, token_id, len(base))

    def post_lora_merge(self, cfg, adapter_path: str, output_path: str):
        """axolotl >= 0.21, after `merge-lora` saved ``output_path``: write the tokenizer
        training used (axolotl's, from the same config, so with the mask token) over the
        base model's, which the memory-efficient merge copied there.

        Raises:
            ValueError: the merged model has fewer embedding rows than that tokenizer.
        """
        if _mask_token(cfg) is None:
            return
        from axolotl.loaders import load_tokenizer
        from transformers import AutoConfig

        tokenizer = load_tokenizer(cfg)
        rows = AutoConfig.from_pretrained(output_path).get_text_config().vocab_size
        if rows < len(tokenizer):
            raise ValueError(
                f"{output_path}: the merged model has {rows} embedding rows but training's tokenizer has "
                f"{len(tokenizer)} tokens; was {adapter_path} trained with `lora_modules_to_save: [embed_tokens, lm_head]`?"
            )
        kwargs = {}
        if cfg.get("tokenizer_save_jinja_files") is not None:
            kwargs["save_jinja_files"] = cfg.get("tokenizer_save_jinja_files")
        tokenizer.save_pretrained(output_path, **kwargs)
        LOG.info("%s: wrote training's tokenizer (%d tokens)", output_path, len(tokenizer))

    def post_lora_load(self, cfg, model):
        if _mask_token(cfg) is None or cfg.get("adapter") not in ("lora", "qlora"):
            return
        from axolotl_maskthought.ops.embeddings import untrainable_embeddings

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
        from axolotl_maskthought.adapters.axolotl.trainer import trainer_class

        return trainer_class(cfg.get("trainer_cls"))

    def add_callbacks_post_trainer(self, cfg, trainer):
        """Answer accuracy at evaluation steps when `cot_format.eval_accuracy_samples` > 0."""
        block = cfg.get("cot_format")
        if not block or not block.get("eval_accuracy_samples"):
            return []
        from axolotl_maskthought.eval.callback import build_accuracy_callback

        callback = build_accuracy_callback(cfg, trainer)
        return [callback] if callback is not None else []

    def post_trainer_create(self, cfg, trainer):
        from axolotl_maskthought.engine import MaskThoughtMixin

        if isinstance(trainer, MaskThoughtMixin):
            trainer.configure_maskthought(cfg.get("masked_thought"), cfg.get("cot_removal"))
            # `pad_to_sequence_len: true` asks for batches of one width: removal must not narrow them
            trainer.keep_batch_width = bool(cfg.get("pad_to_sequence_len"))
            if trainer.cot_removal is not None:  # CoT lengths vs the schedule, logged when training begins
                from axolotl_maskthought.engine.cot_lengths import CoTLengthReportCallback

                length_setting = "max_steps" if cfg.get("max_steps") else "num_epochs"
                trainer.add_callback(
                    CoTLengthReportCallback(
                        trainer.cot_removal, trainer.train_dataset, length_setting, cfg.get("num_epochs")
                    )
                )
