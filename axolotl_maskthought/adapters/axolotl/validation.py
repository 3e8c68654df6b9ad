"""Checks that span this plugin's blocks and axolotl's own keys (raw config dict)."""

from __future__ import annotations

STRATEGY_PREFIX = "axolotl_maskthought.strategies."
SPAN_STRATEGIES = ("gsm8k", "icot", "chat_template")


def _get(obj, key, default=None):
    if obj is None:
        return default
    if isinstance(obj, dict):
        return obj.get(key, default)
    return getattr(obj, key, default)


def span_recording_types() -> list[str]:
    return [STRATEGY_PREFIX + name for name in SPAN_STRATEGIES]


def datasets_without_cot_span(datasets) -> list[tuple[int, str]]:
    """(index, type) of dataset entries whose strategy records no CoT span."""
    missing = []
    for index, dataset in enumerate(datasets or []):
        ds_type = str(_get(dataset, "type", "") or "")
        if ds_type.split(":")[0] not in span_recording_types():
            missing.append((index, ds_type))
    return missing


def check_config(data: dict) -> None:
    """Raise ValueError naming the field when the blocks cannot work with the rest."""
    masked = data.get("masked_thought")
    removal = data.get("cot_removal")
    if masked is None and removal is None:
        return

    needs_span = []
    if _get(masked, "scope") == "reasoning":
        needs_span.append("`masked_thought.scope: reasoning`")
    if removal is not None:
        needs_span.append("`cot_removal`")
    if needs_span:
        for key in ("datasets", "test_datasets"):
            for index, ds_type in datasets_without_cot_span(data.get(key)):
                raise ValueError(
                    f"{' and '.join(needs_span)} needs the CoT span, but `{key}[{index}].type` "
                    f"is {ds_type!r}, which records none; use one of "
                    f"{', '.join(span_recording_types())}"
                )

    if _get(masked, "replacement") == "mask_token" and data.get("adapter") in ("lora", "qlora"):
        if not data.get("lora_modules_to_save"):
            raise ValueError(
                "`masked_thought.replacement: mask_token` with `adapter: "
                f"{data.get('adapter')}` adds a token whose embedding rows must train and be "
                "saved with the adapter: set `lora_modules_to_save: [embed_tokens, lm_head]` "
                "(your model's input and output embedding modules), or use "
                "`replacement: random` or `pad`"
            )

    if _get(removal, "keep_position") and data.get("sample_packing"):
        # Packed rows carry no attention mask: examples are told apart by position ids
        # that restart, and sdpa/eager read any gap in them as a new example.
        raise ValueError(
            "`cot_removal.keep_position: true` cannot be combined with `sample_packing: true`: "
            "the kept position ids jump over the removed tokens, and packed attention reads "
            "the jump as the start of another example, cutting the question off; set one to false"
        )

    if removal is not None and data.get("rl"):
        raise ValueError("`cot_removal` works with supervised fine-tuning only; remove `rl`")
    if masked is not None and data.get("rl"):
        raise ValueError("`masked_thought` works with supervised fine-tuning only; remove `rl`")
