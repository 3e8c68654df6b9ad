"""The config model axolotl merges into its own: the plugin's blocks as top-level YAML keys.

``get_input_args`` names :class:`MaskThoughtArgs`; its validator runs the cross-key checks of
:mod:`~axolotl_maskthought.adapters.axolotl.validation` on the raw config, before any model loads.
"""

from __future__ import annotations

from pydantic import BaseModel, Field, model_validator

from axolotl_maskthought.config import CoTFormatConfig, CoTRemovalConfig, MaskedThoughtConfig


class MaskThoughtArgs(BaseModel):
    """Top-level keys this plugin adds to the axolotl config."""

    masked_thought: MaskedThoughtConfig | None = Field(default=None, description="Masked Thought; absent = off.")
    cot_removal: CoTRemovalConfig | None = Field(default=None, description="Stepwise Internalization; absent = off.")
    cot_format: CoTFormatConfig | None = Field(
        default=None, description="Options of the gsm8k/icot/chat_template strategies."
    )

    @model_validator(mode="before")
    @classmethod
    def _check_with_axolotl_keys(cls, data):
        if not isinstance(data, dict):
            return data
        from axolotl_maskthought.adapters.axolotl.validation import check_config

        check_config(data)
        return data


def validate_blocks(config: dict):
    """The plugin's blocks, validated as axolotl would (errors name the field)."""
    from pydantic import ValidationError

    try:
        args = MaskThoughtArgs.model_validate(config)
    except ValidationError as err:
        problems = []
        for item in err.errors():
            where = ".".join(str(part) for part in item["loc"])
            message = item["msg"].removeprefix("Value error, ")
            got = f" (got {item['input']!r})" if where and not isinstance(item.get("input"), dict) else ""
            problems.append(f"`{where}`: {message}{got}" if where else message)
        raise ValueError("; ".join(problems)) from None
    if args.masked_thought is None and args.cot_removal is None:
        raise ValueError("the config has neither a `masked_thought:` nor a `cot_removal:` block: nothing is scheduled")
    return args.masked_thought, args.cot_removal
