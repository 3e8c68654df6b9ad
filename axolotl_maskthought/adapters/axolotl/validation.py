"""Checks that span this plugin's blocks and axolotl's own keys (raw config dict).

:func:`check_config` runs inside axolotl's config validation, before any model is
loaded. A setting the user wrote is never ignored silently: a setting that cannot
work, or that would be overridden or have no effect with our blocks, is refused
(``ValueError``) or, where training still does what was asked, warned about; both
name the key in backticks.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from axolotl_maskthought.config import MaskedThoughtConfig
from axolotl_maskthought.data.registry import DATASET_TYPES, dataset_entries, dataset_type, has_suffix, split_type
from axolotl_maskthought.engine.optimizer_support import DEEPSPEED_VERIFIED, reset_support

LOG = logging.getLogger("axolotl.maskthought.config")

# Per-dataset keys that axolotl's loader reads whatever the strategy is.
LOADER_DATASET_KEYS = frozenset(
    {
        "path",
        "ds_type",
        "data_files",
        "name",
        "revision",
        "split",
        "trust_remote_code",
        "shards",
        "shards_idx",
        "preprocess_shards",
        "type",
        "weight",
    }
)
# What axolotl's own validation writes into every dataset entry's `message_property_mappings`.
AXOLOTL_FILLED_MAPPINGS = {"role": "role", "content": "content"}
# Where an axolotl per-dataset key's meaning lives for our strategies.
DATASET_KEY_HINTS = {
    "field_messages": "`cot_format.messages_field`",
    "field_thinking": "`cot_format.reasoning_field` (or `cot_format.think_tags` for inline reasoning)",
    "template_thinking_key": "`cot_format.reasoning_field`",
    "split_thinking": "`cot_format.think_tags`",
    "field": "`cot_format.question_field` and `cot_format.answer_field`",
    "chat_template": "the top-level `chat_template` (read by the chat_template strategy only)",
    "chat_template_jinja": "the top-level `chat_template_jinja` (read by the chat_template strategy only)",
}
# `cot_format` keys and the strategies that read them (the registry's order).
COT_FORMAT_READERS = {
    option: tuple(entry.name for entry in DATASET_TYPES if option in entry.cot_format_keys)
    for option in sorted({option for entry in DATASET_TYPES for option in entry.cot_format_keys})
}


def _get(obj, key, default=None):
    if obj is None:
        return default
    if isinstance(obj, dict):
        return obj.get(key, default)
    return getattr(obj, key, default)


def span_recording_types() -> list[str]:
    return [entry.module for entry in DATASET_TYPES]


def strategy_name(ds_type) -> str | None:
    """``gsm8k`` / ``icot`` / ``chat_template`` for this package's ``type:`` (the registry's
    answer, :func:`axolotl_maskthought.data.registry.dataset_type`), else None."""
    entry = dataset_type(ds_type)
    return entry.name if entry is not None else None


def datasets_without_cot_span(datasets) -> list[tuple[int, str]]:
    """(index, type) of dataset entries whose strategy records no CoT span."""
    missing = []
    for index, dataset in enumerate(datasets or []):
        ds_type = str(_get(dataset, "type", "") or "")
        if strategy_name(ds_type) is None:
            missing.append((index, ds_type))
    return missing


def _our_strategies(data: dict) -> set[str]:
    return {
        name
        for key in ("datasets", "test_datasets")
        for dataset in data.get(key) or []
        if (name := strategy_name(_get(dataset, "type"))) is not None
    }


def check_config(data: dict) -> None:
    """Raise ValueError naming the field when the blocks cannot work with the rest;
    log a warning naming it when a setting would have no effect."""
    masked = data.get("masked_thought")
    removal = data.get("cot_removal")
    strategies = _our_strategies(data)
    if masked is None and removal is None and not strategies:
        return

    _check_dataset_keys(data)
    _check_cot_format(data, strategies)
    if masked is None and removal is None:
        if data.get("reward_model") or data.get("process_reward_model"):
            _refuse_trainer_keys(data, "this package's dataset strategies")
        return

    blocks = " and ".join(
        f"`{name}`" for name, block in (("masked_thought", masked), ("cot_removal", removal)) if block is not None
    )
    if data.get("rl"):
        raise ValueError(
            f"{blocks} work{'s' if ' and ' not in blocks else ''} with supervised fine-tuning only; remove `rl`"
        )
    _refuse_trainer_keys(data, blocks)
    _check_other_trainer_plugins(data, blocks)
    _check_span(data, masked, removal)
    _check_row_transforms(data, masked, removal, blocks)
    _check_masked_thought(data, masked)
    if removal is not None:
        _check_cot_removal(data, removal)
    if data.get("torch_compile") and data.get("torch_compile") != "auto":
        # the transforms run in get_batch_samples, outside the compiled model; nothing here has compiled one
        LOG.warning(
            "`torch_compile: %s` with %s is not tested with this package: the CoT transforms run before the "
            "compiled forward%s, so expect recompilations; set `torch_compile: false` if the run slows down",
            data.get("torch_compile"),
            blocks,
            " and CoT removal changes the batch width as it goes" if removal is not None else "",
        )


# ---- the trainer ---------------------------------------------------------------------
def _refuse_trainer_keys(data: dict, what: str) -> None:
    # The plugin's trainer is asked for first: axolotl would never build these trainers.
    for key, trainer in (("reward_model", "reward-model"), ("process_reward_model", "process-reward-model")):
        if data.get(key):
            raise ValueError(
                f"`{key}: true` asks for axolotl's {trainer} trainer, but {what} train with this "
                f"package's causal-LM trainer, which would replace it; remove `{key}` or {what}"
            )


def _check_other_trainer_plugins(data: dict, blocks: str) -> None:
    """Another plugin that supplies the trainer class: only one of the two can win."""
    try:
        from axolotl.integrations.base import PluginManager
        from axolotl.utils.dict import DictDefault
    except ImportError:  # pragma: no cover - axolotl is a dependency of this adapter
        return
    cfg = DictDefault(data)
    for name, plugin in list(PluginManager.get_instance().plugins.items()):
        if type(plugin).__module__.startswith("axolotl_maskthought."):
            continue
        try:
            trainer_cls = plugin.get_trainer_cls(cfg)
        except Exception:  # noqa: BLE001 - a foreign plugin reading an unvalidated config
            continue
        if trainer_cls is not None:
            raise ValueError(
                f"`plugins`: {name} supplies its own trainer ({trainer_cls.__name__}), and {blocks} "
                "need this package's trainer; axolotl uses the first plugin's trainer only, so one of "
                "the two would be ignored. Remove that plugin, or train without this package's blocks"
            )


# ---- datasets and the CoT span -------------------------------------------------------
def _check_span(data: dict, masked, removal) -> None:
    needs_span = []
    if _get(masked, "scope") == "reasoning":
        needs_span.append("`masked_thought.scope: reasoning`")
    if removal is not None:
        needs_span.append("`cot_removal`")
    if not needs_span:
        return
    for key in ("datasets", "test_datasets"):
        for index, ds_type in datasets_without_cot_span(data.get(key)):
            raise ValueError(
                f"{' and '.join(needs_span)} needs the CoT span, but `{key}[{index}].type` "
                f"is {ds_type!r}, which records none; use one of "
                f"{', '.join(span_recording_types())}"
            )
    if data.get("pretraining_dataset"):
        raise ValueError(
            f"{' and '.join(needs_span)} needs the CoT span, which `pretraining_dataset` rows do not "
            f"carry; train on `datasets` of type {', '.join(span_recording_types())}"
        )


def _check_row_transforms(data: dict, masked, removal, blocks: str) -> None:
    """axolotl steps between tokenization and the model that the CoT span cannot follow
    (docs/seams.md has the whole list and what happens at each)."""
    needs_span = removal is not None or _get(masked, "scope") == "reasoning"
    if data.get("streaming") and removal is not None:
        raise ValueError(
            "`streaming: true` with `cot_removal`: the removal schedule counts micro-batches per epoch, "
            "and a streamed dataset has no length; train from a prepared (non-streaming) dataset"
        )
    if data.get("streaming") and data.get("sample_packing") and needs_span:
        raise ValueError(
            "`streaming: true` with `sample_packing: true` packs rows keeping `input_ids` only, so the CoT "
            "span (`cot_mask`) that `masked_thought.scope: reasoning` needs is dropped; set `streaming: false` "
            "or `sample_packing: false`"
        )
    if data.get("use_pose") and removal is not None:
        raise ValueError(
            "`use_pose: true` with `cot_removal`: removal rebuilds each example's position ids (from 0, or "
            "the originals with `keep_position`), which would overwrite PoSE's skipped positions; set "
            "`use_pose: false`"
        )
    for key in ("context_parallel_size", "sequence_parallel_degree"):
        if (data.get(key) or 1) > 1:
            raise ValueError(
                f"`{key}: {data.get(key)}` splits each sequence across ranks; {blocks} act on whole rows "
                f"(the CoT span, removal, masks) and were not verified with split sequences; set `{key}: 1`"
            )


def _written_dataset_keys(dataset) -> dict:
    """The keys of a ``datasets`` entry the user wrote (axolotl may have parsed the entry
    into its pydantic model already, filling in defaults)."""
    if isinstance(dataset, dict):
        return {k: v for k, v in dataset.items() if v is not None}
    written = {k: getattr(dataset, k, None) for k in getattr(dataset, "model_fields_set", ())}
    if written.get("message_property_mappings") == AXOLOTL_FILLED_MAPPINGS:
        del written["message_property_mappings"]  # axolotl fills it in for every entry
    return {k: v for k, v in written.items() if v is not None}


def _check_dataset_keys(data: dict) -> None:
    """axolotl strategy options written on a dataset of ours: our strategies never read them."""
    for key in ("datasets", "test_datasets"):
        for index, dataset in enumerate(data.get(key) or []):
            ds_type = _get(dataset, "type")
            entry = dataset_type(ds_type)
            if entry is None:
                continue
            if has_suffix(ds_type):
                raise ValueError(
                    f"`{key}[{index}].type` is {ds_type!r}: axolotl's loader cannot import a strategy of this "
                    f"package with a `:` suffix (it looks for a module named so); write `{split_type(ds_type)[0]}`"
                )
            for option in _written_dataset_keys(dataset):
                if option in LOADER_DATASET_KEYS or option in entry.dataset_keys:
                    continue
                hint = DATASET_KEY_HINTS.get(option)
                raise ValueError(
                    f"`{key}[{index}].{option}` is an option of axolotl's own prompt strategies; "
                    f"`{entry.module}` does not read it" + (f": use {hint}" if hint else "; remove it")
                )


def _check_cot_format(data: dict, strategies: set[str]) -> None:
    block = data.get("cot_format")
    if not isinstance(block, dict):
        return
    for option in block:
        readers = COT_FORMAT_READERS.get(option)
        if readers and not strategies.intersection(readers):
            LOG.warning(
                "`cot_format.%s` has no effect: it is read by the %s strateg%s of this package, and no "
                "entry of `datasets` or `test_datasets` uses %s",
                option,
                " and ".join(readers),
                "y" if len(readers) == 1 else "ies",
                "it" if len(readers) == 1 else "them",
            )
    if block.get("eval_accuracy_samples"):
        if not data.get("val_set_size") and not data.get("test_datasets"):
            raise ValueError(
                "`cot_format.eval_accuracy_samples` needs evaluation data: set `val_set_size` or `test_datasets`"
            )
        if not strategies.intersection(COT_FORMAT_READERS["eval_accuracy_samples"]):
            raise ValueError(
                "`cot_format.eval_accuracy_samples` works with the `icot` and `gsm8k` strategies of this "
                "package; no entry of `datasets` or `test_datasets` uses them (chat_template rows: remove "
                "`cot_format.eval_accuracy_samples` and score them after training with "
                "`axolotl-maskthought eval --config CONFIG --data TEST.jsonl [--no-cot]`)"
            )
        # the rows the callback generates on: test_datasets, else the val_set_size split of datasets
        evaluation = "test_datasets" if data.get("test_datasets") else "datasets"
        for key, index, ds_type, entry in dataset_entries(data, keys=(evaluation,)):
            if entry is not None and not entry.accuracy_callback:
                raise ValueError(
                    f"`cot_format.eval_accuracy_samples` generates on icot and gsm8k evaluation rows only, and "
                    f"`{key}[{index}]` ({ds_type}) puts other rows in the evaluation set; remove "
                    "`cot_format.eval_accuracy_samples`"
                    + ("" if key == "test_datasets" else " or name icot/gsm8k `test_datasets`")
                    + " and score chat rows after training with "
                    "`axolotl-maskthought eval --config CONFIG --data TEST.jsonl [--no-cot]`"
                )


# ---- the blocks ----------------------------------------------------------------------
def _check_masked_thought(data: dict, masked) -> None:
    if masked is None:
        return
    if data.get("train_on_inputs") and _get(masked, "scope", "response") == "response":
        LOG.warning(
            "`train_on_inputs: true` with `masked_thought.scope: response`: every trained token is eligible, "
            "so the question and prompt inputs are masked too, which the paper avoids (masking the question "
            "as well scored 36.3 against 41.6 for SFT); set `train_on_inputs: false` or "
            "`masked_thought.scope: reasoning` to mask the response or the CoT only"
        )
    replacement = _get(masked, "replacement", "random")
    mask_token = _get(masked, "mask_token")
    if mask_token is not None and replacement != "mask_token":
        message = (
            f"`masked_thought.mask_token` is used only with `replacement: mask_token`, but `replacement` "
            f"is {replacement!r}; set `masked_thought.replacement: mask_token` or remove `mask_token`"
        )
        if mask_token != MaskedThoughtConfig.model_fields["mask_token"].default:
            raise ValueError(message)
        LOG.warning("%s (it has no effect)", message)  # the default written out, as in the README
    if replacement == "mask_token" and data.get("adapter") in ("lora", "qlora"):
        if not data.get("lora_modules_to_save"):
            raise ValueError(
                "`masked_thought.replacement: mask_token` with `adapter: "
                f"{data.get('adapter')}` adds a token whose embedding rows must train and be "
                "saved with the adapter: set `lora_modules_to_save: [embed_tokens, lm_head]` "
                "(your model's input and output embedding modules), or use "
                "`replacement: random` or `pad`"
            )


def _check_cot_removal(data: dict, removal) -> None:
    if _get(removal, "keep_position") and data.get("sample_packing"):
        # Packed rows carry no attention mask: examples are told apart by position ids
        # that restart, and sdpa/eager read any gap in them as a new example.
        raise ValueError(
            "`cot_removal.keep_position: true` cannot be combined with `sample_packing: true`: "
            "the kept position ids jump over the removed tokens, and packed attention reads "
            "the jump as the start of another example, cutting the question off; set one to false"
        )
    start_epoch = _get(removal, "start_epoch") or 0
    if start_epoch and not data.get("max_steps"):
        epochs = data.get("num_epochs") or 1
        try:
            never = float(start_epoch) >= float(epochs)
        except (TypeError, ValueError):
            never = False
        if never:
            raise ValueError(
                f"`cot_removal.start_epoch: {start_epoch}` with `num_epochs: {epochs}`: removal would "
                "start after the last epoch, so no CoT token would ever be removed; lower "
                "`cot_removal.start_epoch` or raise `num_epochs`"
            )
    start_step, max_steps = _get(removal, "start_step"), data.get("max_steps")
    if isinstance(start_step, int) and isinstance(max_steps, int) and max_steps > 0 and start_step >= max_steps:
        raise ValueError(
            f"`cot_removal.start_step: {start_step}` with `max_steps: {max_steps}`: removal would start after the "
            "last step, so no CoT token would ever be removed; lower `cot_removal.start_step` or raise `max_steps`"
        )
    if _get(removal, "reset_optimizer", True) is not False:
        _check_optimizer_reset(data)


def _deepspeed_config(data: dict) -> dict | None:
    value = data.get("deepspeed")
    if isinstance(value, dict):
        return value
    if isinstance(value, (str, Path)) and Path(value).is_file():
        try:
            loaded = json.loads(Path(value).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None  # axolotl reports an unreadable file itself
        return loaded if isinstance(loaded, dict) else None
    return None


def _check_optimizer_reset(data: dict) -> None:
    """The reset must leave the optimizer exactly as a freshly built one (see optimizer_support)."""
    fix = "set `cot_removal.reset_optimizer: false` to train without resets"
    deepspeed = _deepspeed_config(data)
    if deepspeed is not None:
        offload = _get(_get(deepspeed.get("zero_optimization"), "offload_optimizer"), "device")
        if str(offload).lower() == "nvme":
            raise ValueError(
                "`cot_removal.reset_optimizer` cannot reset optimizer state that DeepSpeed keeps on NVMe "
                "(`deepspeed` config: `zero_optimization.offload_optimizer.device: nvme`); offload to "
                f"`cpu` instead, or {fix}"
            )
        ds_optimizer = deepspeed.get("optimizer")
        if isinstance(ds_optimizer, dict):
            ds_type = str(ds_optimizer.get("type", ""))
            if data.get("optimizer") is not None:
                LOG.warning(
                    "`optimizer: %s` has no effect: the `deepspeed` config has an `optimizer` section "
                    "(type %s), and DeepSpeed builds that optimizer instead",
                    data.get("optimizer"),
                    ds_type,
                )
            if ds_type.lower() not in DEEPSPEED_VERIFIED:
                LOG.warning(
                    "`cot_removal.reset_optimizer`: the reset was verified with DeepSpeed optimizer types %s, "
                    "not %r (the `deepspeed` config's `optimizer.type`); if it keeps state outside "
                    "`optimizer.state`, resets are incomplete. To be safe, %s",
                    ", ".join(sorted(DEEPSPEED_VERIFIED)),
                    ds_type,
                    fix,
                )
            return
    optimizer = str(data.get("optimizer") or "adamw_torch_fused")  # axolotl's default
    support, reason = reset_support(optimizer)
    if support == "refused":
        raise ValueError(
            f"`optimizer: {optimizer}` cannot be reset by `cot_removal.reset_optimizer`: {reason}; "
            f"choose another `optimizer`, or {fix}"
        )
    if support in ("unverified", "unknown"):
        why = f" ({reason})" if reason else ""
        LOG.warning(
            "`optimizer: %s` with `cot_removal.reset_optimizer`: the reset of this optimizer was not "
            "verified%s; if it keeps state outside `optimizer.state`, resets are incomplete. To be "
            "safe, %s",
            optimizer,
            why,
            fix,
        )


# ---- once axolotl's tokenizer is known -------------------------------------------------
def check_replacement_token(cfg) -> None:
    """Refuse a Masked Thought replacement id that is a structural token of the tokenizer
    axolotl builds (EOS, BOS, chat turn markers, this config's think tags).

    The tokenizer is not known while the config is validated: axolotl's
    ``load_tokenizer`` decides the pad token (EOS when the tokenizer has none, with
    its own warning) and adds ``special_tokens`` / ``tokens``. The plugin calls this
    from ``load_datasets`` (before any row is tokenized) and again from
    ``pre_model_load`` (commands that skip ``load_datasets``), so the run stops
    before the model loads. Raises ValueError naming the keys.
    """
    masked = _get(cfg, "masked_thought")
    replacement = _get(masked, "replacement", "random")
    if masked is None or replacement == "random":
        return
    from axolotl.loaders import load_tokenizer

    from axolotl_maskthought.engine.replacement import replacement_conflict

    tokenizer = load_tokenizer(cfg)
    if replacement == "pad":
        token_id = tokenizer.pad_token_id
    else:
        token_id = tokenizer.convert_tokens_to_ids(_get(masked, "mask_token") or "<mask>")
    think_tags = ()
    if "chat_template" in _our_strategies(cfg):
        block = _get(cfg, "cot_format")
        think_tags = tuple(_get(block, "think_tags", None) or ("<think>", "</think>"))
    conflict = replacement_conflict(replacement, token_id, tokenizer, think_tags)
    if conflict:
        raise ValueError(conflict)
