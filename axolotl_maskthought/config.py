"""Config blocks of the plugin. Each field's description is its documentation.

axolotl merges :class:`MaskThoughtArgs` into its own config model, so the three
blocks are top-level YAML keys validated with the rest of the config, before any
model is loaded.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

PROMPT_TEMPLATES = {
    "alpaca": (
        "Below is an instruction that describes a task. "
        "Write a response that appropriately completes the request.\n\n"
        "### Instruction:\n{question}\n\n### Response:\n"
    ),
    "plain": "Question: {question}\nAnswer: ",
}


class MaskedThoughtConfig(BaseModel):
    """`masked_thought:` block — Masked Thought (arXiv 2403.02178)."""

    model_config = ConfigDict(extra="forbid")

    ratio: float = Field(
        default=0.4,
        ge=0.0,
        le=1.0,
        description="Probability that an eligible token's input is replaced (labels stay). "
        "Paper: 0.4 with random tokens (GSM8K), 0.2 with <mask> (MATH/MetaMath).",
    )
    replacement: Literal["random", "mask_token", "pad"] = Field(
        default="random",
        description="What replaces a selected input: a uniformly random token id, the "
        "`mask_token`, or the tokenizer's pad token.",
    )
    mask_token: str = Field(
        default="<mask>",
        min_length=1,
        description="Token used when replacement is mask_token; added to the tokenizer if "
        "missing, its input and output embedding rows initialised to the mean of the others.",
    )
    warmup: float = Field(
        default=0.66,
        ge=0.0,
        le=1.0,
        description="Fraction of optimizer steps over which the rate ramps linearly from 0 "
        "(rate = ratio * step / (warmup * max_steps + 1), capped); 0 = full rate from step 0.",
    )
    scope: Literal["response", "reasoning"] = Field(
        default="response",
        description="response = every trained token (labels != -100: reasoning, answer, EOS; "
        "the paper); reasoning = only the CoT span recorded by this package's strategies.",
    )


DEFAULT_TOKENS_PER_EPOCH = 8.0
"""The paper's Δ, used when no pace is written."""


class LossGateConfig(BaseModel):
    """`cot_removal.loss_gate:` block — a removal pace that waits for the training loss."""

    model_config = ConfigDict(extra="forbid")

    min_steps: int = Field(
        ge=1,
        description="Fewest optimizer steps between two removals; the first token goes this many steps after "
        "the start, whatever the loss.",
    )
    max_steps: int = Field(
        ge=1,
        description="Most optimizer steps between two removals: the next token goes then even if the loss has "
        "not recovered. `schedule` prints each token's earliest and latest step from these two bounds.",
    )
    recovery: float = Field(
        default=0.8,
        gt=0.0,
        le=1.0,
        description="Fraction of the last removal's loss jump that must be recovered before the next token "
        "goes: the stage's averaged training loss <= before + (1 - recovery) x (peak - before), where before "
        "is the average just before the removal and peak its highest value since. A token whose loss floor sits "
        "more than (1 - recovery) x its jump above the last one waits for max_steps.",
    )
    ema_beta: float = Field(
        default=0.98,
        ge=0.0,
        lt=1.0,
        description="Decay of the exponential average of the training loss (reduced over ranks, one value "
        "per optimizer step); restarted and bias-corrected at each removal.",
    )

    @model_validator(mode="after")
    def _ordered_bounds(self):
        if self.max_steps < self.min_steps:
            raise ValueError(
                f"`cot_removal.loss_gate.max_steps` ({self.max_steps}) must be at least "
                f"`cot_removal.loss_gate.min_steps` ({self.min_steps})"
            )
        return self


class CoTRemovalConfig(BaseModel):
    """`cot_removal:` block — Stepwise Internalization (arXiv 2405.14838).

    One pace: `tokens_per_epoch` (Δ, the paper's; 8 when no pace is written), `steps_per_token`
    (fixed, in optimizer steps) or `loss_gate` (adaptive, in optimizer steps).
    """

    model_config = ConfigDict(extra="forbid")

    tokens_per_epoch: float | None = Field(
        default=None,
        gt=0,
        description="Δ: CoT tokens removed per epoch. One more token every "
        "round(micro_batches_per_epoch / Δ) micro-batches (official schedule). null = 8 unless "
        "`steps_per_token` or `loss_gate` sets the pace instead.",
    )
    steps_per_token: int | None = Field(
        default=None,
        ge=1,
        description="Fixed pace in optimizer steps: one more token every N optimizer steps after the start "
        "(`start_step`, or `start_epoch` full epochs). Instead of `tokens_per_epoch`.",
    )
    loss_gate: LossGateConfig | None = Field(
        default=None,
        description="Adaptive pace in optimizer steps: the next token goes once the training loss has "
        "recovered from the last removal (`recovery`), within `min_steps`..`max_steps` steps per token. "
        "Instead of `tokens_per_epoch` / `steps_per_token`.",
    )
    start_step: int | None = Field(
        default=None,
        ge=0,
        description="Optimizer steps of full-CoT training before removal starts, for `steps_per_token` and "
        "`loss_gate` (instead of `start_epoch`). No smoothing before it.",
    )
    smoothing_lambda: float | None = Field(
        default=4,
        gt=0,
        description="λ: each example removes an extra o ∈ {0..99} tokens with "
        "P(o) ∝ e^(-λo) (tail mass on 99). null (stored as .inf, the official value) = "
        "no smoothing. Off at evaluation.",
    )
    side: Literal["left", "right"] = Field(
        default="left", description="left = drop the first CoT tokens; right = the last ones."
    )
    remove_all_at: int | None = Field(
        default=None,
        ge=0,
        description="K: once the scheduled count reaches K, remove the whole CoT "
        "(official GSM8K Mistral run: 39). null = never jump.",
    )
    reset_optimizer: bool = Field(
        default=True,
        description="Reset all optimizer moments and step counts each time the count grows, "
        "unless the whole CoT was already removed in the previous micro-batch.",
    )
    start_epoch: int = Field(
        default=0,
        ge=0,
        description="Epochs of full-CoT training before removal starts (official "
        "pretrain_epochs). No smoothing during these epochs. With a pace in optimizer steps, "
        "removal starts at the first step of epoch start_epoch + 1 (or use `start_step`).",
    )
    keep_position: bool = Field(
        default=False,
        description="Position ids as the official trainer numbers them: the tokens after the "
        "removed CoT keep their original positions, as if the removed tokens were still there, and "
        "the token just before it (the first separator) moves onto the last removed token's place "
        "(otherwise positions restart per example).",
    )

    @model_validator(mode="after")
    def _one_pace(self):
        written = [
            key
            for key, value in (
                ("tokens_per_epoch", self.tokens_per_epoch),
                ("steps_per_token", self.steps_per_token),
                ("loss_gate", self.loss_gate),
            )
            if value is not None
        ]
        if len(written) > 1:
            raise ValueError(
                "set one removal pace: " + " and ".join(f"`cot_removal.{key}`" for key in written) + " are both set"
            )
        if self.start_step is not None:
            if not written or written[0] == "tokens_per_epoch":
                raise ValueError(
                    "`cot_removal.start_step` counts optimizer steps: it needs `cot_removal.steps_per_token` or "
                    "`cot_removal.loss_gate` (with `tokens_per_epoch` use `cot_removal.start_epoch`)"
                )
            if self.start_epoch:
                raise ValueError("set one start: `cot_removal.start_step` and `cot_removal.start_epoch` are both set")
        if not written:
            self.tokens_per_epoch = DEFAULT_TOKENS_PER_EPOCH
        return self

    @property
    def pace(self) -> Literal["tokens_per_epoch", "steps_per_token", "loss_gate"]:
        """Which pace is in force (the key that sets it)."""
        if self.loss_gate is not None:
            return "loss_gate"
        return "steps_per_token" if self.steps_per_token is not None else "tokens_per_epoch"

    @field_validator("smoothing_lambda", mode="before")
    @classmethod
    def _null_smoothing_as_inf(cls, value):
        # axolotl dumps its validated config with exclude_none=True and the trainer reads
        # the block back, so an explicit null would return as the default λ = 4.
        return math.inf if value is None else value


class CoTFormatConfig(BaseModel):
    """`cot_format:` block — options of this package's dataset strategies.

    axolotl drops unknown per-dataset keys, so the strategies read their options here.
    """

    model_config = ConfigDict(extra="forbid")

    prompt_template: str = Field(
        default="alpaca",
        description="`alpaca` (as in the official Masked Thought GSM8K runs), `plain`, or a "
        "custom string containing `{question}`. Used by the gsm8k strategy and by `eval`.",
    )
    question_field: str = Field(default="question", min_length=1, description="JSON field holding the question.")
    answer_field: str = Field(
        default="answer",
        min_length=1,
        description="JSON field holding the solution, ending in `#### <answer>`.",
    )
    skip_invalid_rows: bool = Field(
        default=False,
        description="Skip rows without `####` or with an empty question (counted in the "
        "log) instead of failing with the file and row.",
    )
    eval_accuracy_samples: int = Field(
        default=0,
        ge=0,
        description="At each evaluation, generate greedily on the first N rows of the evaluation "
        "set (`val_set_size` split or `test_datasets`; icot/gsm8k strategies) and log "
        "`eval_accuracy_cot` and `eval_accuracy_no_cot` next to `eval_loss`. 0 = off.",
    )
    eval_error_recovery: bool = Field(
        default=False,
        description="With `eval_accuracy_samples`: also log `eval_accuracy_after_error`, the accuracy when the "
        "model continues the gold CoT after one injected error in its first half (a digit d -> (d+1) mod 10, "
        "else any other token; seed 0), as `eval --inject-error` does: Masked Thought's recovery measure.",
    )
    messages_field: str | None = Field(
        default=None,
        min_length=1,
        description="chat_template strategy: row field holding the conversation, a list of "
        "OpenAI-style role/content or ShareGPT-style from/value messages. null = `messages`, "
        "else `conversations`.",
    )
    reasoning_field: str = Field(
        default="reasoning_content",
        min_length=1,
        description="chat_template strategy: message field holding an assistant turn's "
        "reasoning. Without it the reasoning is read from `think_tags` in the content.",
    )
    think_tags: list[str] = Field(
        default=["<think>", "</think>"],
        min_length=2,
        max_length=2,
        description="chat_template strategy: [open, close] tags around inline reasoning, used "
        "to read it from the content and to inline it when the chat template has no "
        "`reasoning_content` support. Never part of the CoT span.",
    )
    reasoning_turns: Literal["last", "all"] = Field(
        default="last",
        description="chat_template strategy: whose reasoning is rendered and spanned. last = the "
        "final assistant turn only (earlier turns without it, as Qwen3-style templates render "
        "conversations); all = every assistant turn (fails if the template drops some).",
    )

    @model_validator(mode="after")
    def _known_template(self):
        if self.prompt_template not in PROMPT_TEMPLATES and "{question}" not in self.prompt_template:
            raise ValueError(
                "`cot_format.prompt_template` must be `alpaca`, `plain` or a string "
                f"containing `{{question}}`, got {self.prompt_template!r}"
            )
        if self.eval_error_recovery and self.eval_accuracy_samples <= 0:
            raise ValueError(
                "`cot_format.eval_error_recovery` scores the rows of `cot_format.eval_accuracy_samples`: set it above 0"
            )
        open_tag, close_tag = self.think_tags
        if not open_tag.strip() or not close_tag.strip() or open_tag == close_tag:
            raise ValueError(f"`cot_format.think_tags` must be two different non-blank tags, got {self.think_tags!r}")
        return self

    def template(self) -> str:
        return PROMPT_TEMPLATES.get(self.prompt_template, self.prompt_template)


def config_reference_markdown() -> str:
    """The README's configuration reference, generated from the field descriptions."""
    import json
    import math

    from pydantic_core import PydanticUndefined

    def show(value) -> str:
        if value is None or (isinstance(value, float) and math.isinf(value)):
            return "null"
        if isinstance(value, bool):
            return str(value).lower()
        if isinstance(value, float) and value.is_integer():
            return str(int(value))
        if value is PydanticUndefined:
            return "required"
        return json.dumps(value) if isinstance(value, list) else str(value)

    parts = []
    for block, model in (
        ("masked_thought", MaskedThoughtConfig),
        ("cot_removal", CoTRemovalConfig),
        ("cot_removal.loss_gate", LossGateConfig),
        ("cot_format", CoTFormatConfig),
    ):
        parts.append(f"`{block}:`\n\n| key | default | meaning |\n|---|---|---|")
        for name, info in model.model_fields.items():
            parts.append(f"| `{name}` | `{show(info.default)}` | {info.description.replace('|', chr(92) + '|')} |")
        parts.append("")
    return "\n".join(parts)
