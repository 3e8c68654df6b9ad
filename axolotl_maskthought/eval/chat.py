"""Chat data in ``eval`` and ``score``: conversations whose final assistant turn is the gold answer.

A row is what ``type: axolotl_maskthought.strategies.chat_template`` trains on (``messages``
or ShareGPT ``conversations``; an assistant turn's reasoning in ``reasoning_content`` or
inline between ``cot_format.think_tags``). The gold answer is the final assistant turn's
content without its reasoning; the prompt is built by the strategy itself
(:meth:`~axolotl_maskthought.strategies.chat_template.ChatTemplateCoTStrategy.turns_prompt`),
so it is token for token what training laid out before that answer:

- ``no_cot``: the training row with its whole CoT removed, up to the answer, which is the
  template's render of an empty reasoning (Qwen3: its ``enable_thinking=False`` generation
  prompt, ending ``<think>`` ``\\n\\n`` ``</think>`` ``\\n\\n``): what Stepwise Internalization
  (arXiv 2405.14838) trains on once every CoT token is gone;
- with CoT: the training row up to where the reasoning starts (Qwen3: the generation
  prompt and the template's ``<think>`` ``\\n``, which training never trains the model to write).

The final turn's reasoning is not needed to evaluate: a row without one is prompted as if it
had one (the same layout as training rows, which have it). Generation stops at the EOS, the
``eot_tokens`` of the config, or the token the template writes after an answer
(``<|im_end|>``), whichever comes first.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the strategy module imports pydantic: loaded where it is used (fast `--help`)
    from axolotl_maskthought.strategies.chat_template import Turn

# Any non-blank text: it is cut off (with CoT) or removed (no CoT) before the prompt ends.
PLACEHOLDER_REASONING = "reasoning"
# Top-level keys of an axolotl config the chat strategy reads, and the per-dataset ones.
CONFIG_KEYS = ("chat_template", "chat_template_jinja", "chat_template_kwargs", "eot_tokens")
DATASET_KEYS = ("chat_template", "chat_template_jinja")


@dataclass(frozen=True)
class ChatExample:
    """One chat row to evaluate: its ``turns`` up to and including the final assistant turn,
    ``question`` (the last user message, for display), ``cot`` (the gold reasoning, or ``""``),
    ``answer`` (the final assistant content without reasoning, stripped) and ``source``
    (``file: row N``, named by errors)."""

    turns: tuple[Turn, ...]
    question: str
    cot: str
    answer: str
    source: str = ""


def parse_chat_example(row, cot_format=None, source: str = "") -> ChatExample:
    """A :class:`ChatExample` from one row; ``cot_format`` (a ``CoTFormatConfig``) gives the
    field names and think tags. Raises ValueError for a row the chat strategy refuses, a
    conversation that does not end with an assistant turn, or an empty final answer."""
    from axolotl_maskthought.config import CoTFormatConfig
    from axolotl_maskthought.strategies.chat_template import parse_conversation

    options = cot_format or CoTFormatConfig()
    turns = parse_conversation(row, options.messages_field, options.reasoning_field, tuple(options.think_tags))
    last = turns[-1]
    if last.role != "assistant":
        raise ValueError(f"the conversation ends with a {last.role} message, not the assistant's answer to score")
    if not last.content.strip():
        raise ValueError("the final assistant turn has no answer (its content is empty besides any reasoning)")
    question = next((turn.content for turn in reversed(turns) if turn.role == "user"), "")
    return ChatExample(tuple(turns), question, last.reasoning or "", last.content.strip(), source)


@dataclass(frozen=True)
class ChatSettings:
    """The chat template and options chat prompts are rendered with, as training had them.

    ``config``: the axolotl config's top-level :data:`CONFIG_KEYS` and ``cot_format``;
    ``dataset``: the chat dataset entry's :data:`DATASET_KEYS`. Empty: the tokenizer's own
    chat template (axolotl saves the one it trained with into the output directory's
    tokenizer) and default options.
    """

    config: dict = field(default_factory=dict)
    dataset: dict = field(default_factory=dict)

    @classmethod
    def from_config(cls, cfg: dict, dataset: dict | None = None) -> ChatSettings:
        """The keys of a training YAML (a dict) and of its chat dataset entry. As axolotl's
        config validation does, ``chat_template_jinja`` alone means ``chat_template: jinja``."""
        config = {key: cfg[key] for key in (*CONFIG_KEYS, "cot_format") if cfg.get(key) is not None}
        entry = {key: (dataset or {})[key] for key in DATASET_KEYS if (dataset or {}).get(key) is not None}
        for keys in (config, entry):
            if keys.get("chat_template_jinja") and not keys.get("chat_template"):
                keys["chat_template"] = "jinja"
        return cls(config, entry)

    def describe(self) -> str:
        """The template's name for summaries: the dataset's, the config's, else ``tokenizer_default``."""
        return str(self.dataset.get("chat_template") or self.config.get("chat_template") or "tokenizer_default")

    def strategy(self, tokenizer, cot_format=None):
        """The :class:`~axolotl_maskthought.strategies.chat_template.ChatTemplateCoTStrategy`
        training used, for ``tokenizer``; ``cot_format`` (a ``CoTFormatConfig``) replaces the
        config's ``cot_format`` when given. Raises ValueError naming the template setting
        when no template can be found."""
        from axolotl_maskthought.strategies import chat_template

        cfg = dict(self.config)
        if cot_format is not None:
            cfg["cot_format"] = cot_format.model_dump()
        try:
            return chat_template.load(tokenizer, cfg, dict(self.dataset))
        except ValueError as err:
            raise ValueError(f"chat template `{self.describe()}`: {err}") from None


def _with_reasoning(turns: tuple[Turn, ...]) -> list[Turn]:
    """``turns`` with a placeholder reasoning in the final assistant turn when it has none."""
    turns = list(turns)
    if not (turns[-1].reasoning or "").strip():
        turns[-1] = replace(turns[-1], reasoning=PLACEHOLDER_REASONING)
    return turns


def chat_prompts(strategy, examples, no_cot: bool = False) -> list[tuple[list[int], list[int]]]:
    """``(prompt ids, positions)`` per example (see ``ChatTemplateCoTStrategy.turns_prompt``);
    a ValueError names the example's file and row."""
    prompts = []
    for example in examples:
        try:
            prompts.append(strategy.turns_prompt(_with_reasoning(example.turns), no_cot))
        except ValueError as err:
            raise ValueError(f"{example.source or 'chat example'}: {err}") from None
    return prompts


def kept_position_shift(positions: list[int]) -> tuple[int, int]:
    """``(start, shift)`` for ``generation.generate_greedy`` from a no-CoT prompt's training
    positions: prompt tokens from ``start`` on sit ``shift`` positions further than their
    index. Raises ValueError when the positions do not follow that shape (a template whose
    empty-reasoning layout is spread on both sides of the reasoning)."""
    start = next((k for k, position in enumerate(positions) if position != k), len(positions))
    if start == len(positions):
        return 0, 0
    shift = positions[start] - start
    if any(position - k != shift for k, position in enumerate(positions[start:], start)):
        raise ValueError(
            "`cot_removal.keep_position`: this chat template's no-CoT prompt keeps tokens from both sides of the "
            "removed reasoning, which one position shift cannot number as training did"
        )
    return start, shift


def stop_token_ids(tokenizer, strategy) -> list[int]:
    """Where a chat generation ends: the tokenizer's EOS, the strategy's end-of-turn tokens
    (``eot_tokens``, default the EOS) and the token the template writes after an answer."""
    ids = [tokenizer.eos_token_id, *sorted(strategy.eot_ids), strategy.turn_end_id()]
    return list(dict.fromkeys(token for token in ids if token is not None))
