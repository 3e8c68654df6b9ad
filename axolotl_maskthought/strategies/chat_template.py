"""``type: axolotl_maskthought.strategies.chat_template`` — chat conversations whose
assistant turns reason before answering, laid out by the model's chat template.

Rows hold a conversation in ``cot_format.messages_field`` (default ``messages``,
else ``conversations``): OpenAI-style ``role``/``content`` messages or
ShareGPT-style ``from``/``value`` (human, gpt, system). An assistant turn's
reasoning sits in ``cot_format.reasoning_field`` (default ``reasoning_content``)
or inline at the start of its content between ``cot_format.think_tags``
(``<think>…</think>``; a lone ``…</think>`` also counts, as R1-style data writes
it). Reasoning and answer are stripped of edge whitespace.

Rendering: the template is axolotl's choice (``chat_template:`` /
``chat_template_jinja:``, per dataset or top level, else the tokenizer's own).
If the template renders a message's ``reasoning_content`` (probed once), the
reasoning goes there; otherwise it is inlined as
``{open}\\n{reasoning}\\n{close}\\n\\n{answer}``. ``cot_format.reasoning_turns``
chooses whose reasoning is rendered: ``last`` (the final assistant turn, as
Qwen3-style templates render a finished conversation) or ``all``.

Spans: the conversation is rendered once with a placeholder in place of every
assistant answer and reasoning, the placeholders give the character spans, and
a second render with the real text must equal the substituted text (else the
template rewrites message text and the row is refused). The text is tokenized
as ``apply_chat_template`` does (no added special tokens), and the offset
mapping turns character spans into tokens:

- labels (as axolotl's ``chat_template`` with its defaults): every token that
  overlaps an assistant turn's message text, from its reasoning (with the
  opening tag when inlined; a template's own ``<think>`` is markup) or its
  answer to the end of its answer, plus the first end-of-turn token
  (``eot_tokens:`` top-level key, default the EOS token) at most 3 tokens after
  it. System, user and tool turns and all role headers stay -100
  (everything is trained under ``train_on_inputs: true``);
- ``cot_mask``: tokens overlapping a rendered reasoning text whose characters
  outside it are whitespace only. Think tags, role headers and the answer are
  never in it.

Tool calls rendered from a message's extra keys are passed to the template but
not trained.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from axolotl_maskthought.data.formats import IGNORE_INDEX
from axolotl_maskthought.strategies.base import LOG, CoTStrategy, cut_row, format_options

ROLES = {
    "system": "system",
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "gpt": "assistant",
    "tool": "tool",
}
TEMPLATE_REASONING_KEY = "reasoning_content"  # what HF reasoning templates (Qwen3, DeepSeek-R1) read
EOT_SEARCH_WINDOW = 3  # as axolotl: the end-of-turn token may follow the answer by a few tokens


@dataclass(frozen=True)
class Turn:
    """One message. ``reasoning`` is None when an assistant turn has none."""

    role: str
    content: str
    reasoning: str | None = None
    extra: dict = field(default_factory=dict)


def split_inline_reasoning(content: str, think_tags) -> tuple[str | None, str]:
    """``(reasoning, answer)`` from ``<think>reasoning</think>answer`` (or ``reasoning</think>answer``)."""
    open_tag, close_tag = think_tags
    if close_tag not in content:
        if open_tag in content:
            raise ValueError(f"`{open_tag}` without a closing `{close_tag}`")
        return None, content
    head, answer = content.split(close_tag, 1)
    if open_tag in head:
        before, reasoning = head.split(open_tag, 1)
        if before.strip():
            raise ValueError(f"text before `{open_tag}` in an assistant turn")
    else:
        reasoning = head
    if open_tag in answer or close_tag in answer:
        raise ValueError(f"more than one `{open_tag}…{close_tag}` block in an assistant turn")
    return reasoning, answer


def parse_conversation(row, messages_field: str | None, reasoning_field: str, think_tags) -> list[Turn]:
    """The row's messages as :class:`Turn` objects; ``ValueError`` names what is wrong."""
    if not hasattr(row, "get"):
        raise ValueError("row is not a JSON object")
    names = [messages_field] if messages_field else ["messages", "conversations"]
    messages = next((row.get(name) for name in names if row.get(name) is not None), None)
    if not isinstance(messages, list) or not messages:
        raise ValueError(f"no conversation: field {' / '.join(f'`{n}`' for n in names)} is missing or empty")
    turns = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise ValueError(f"message {index} is not an object")
        sharegpt = "from" in message and "role" not in message
        role_key, content_key = ("from", "value") if sharegpt else ("role", "content")
        role = ROLES.get(message.get(role_key))
        if role is None:
            raise ValueError(
                f"message {index}: unknown {role_key} {message.get(role_key)!r} "
                f"(expected one of {', '.join(sorted(ROLES))})"
            )
        content = message.get(content_key)
        content = "" if content is None else content
        if not isinstance(content, str):
            raise ValueError(f"message {index}: `{content_key}` is not a string")
        extra = {
            k: v for k, v in message.items() if k not in (role_key, content_key, reasoning_field) and v is not None
        }
        reasoning = message.get(reasoning_field)
        if role != "assistant":
            turns.append(Turn(role, content, extra=extra))
            continue
        inline, answer = split_inline_reasoning(content, think_tags)
        if reasoning is not None and inline is not None:
            raise ValueError(f"message {index}: reasoning both in `{reasoning_field}` and inline in the content")
        if reasoning is not None and not isinstance(reasoning, str):
            raise ValueError(f"message {index}: `{reasoning_field}` is not a string")
        reasoning = reasoning if reasoning is not None else inline
        turns.append(Turn(role, answer.strip(), None if reasoning is None else reasoning.strip(), extra))
    if not any(turn.role == "assistant" for turn in turns):
        raise ValueError("no assistant turn")
    return turns


@dataclass(frozen=True)
class Rendering:
    """The rendered conversation and the character spans (start, end) inside ``text``."""

    text: str
    trained: list[tuple[int, int]]
    reasoning: list[tuple[int, int]]
    reasoning_turns: list[int] = field(default_factory=list)  # the turn of each ``reasoning`` span
    answers: list[tuple[int, int]] = field(default_factory=list)  # each assistant turn's answer


def _placeholder(kind: str, index: int) -> str:
    # Private-use code points: no template touches them and no dataset contains them.
    return f"\ue000{kind}{index}\ue001"


class ChatTemplateCoTStrategy(CoTStrategy):
    def __init__(self, tokenizer, cfg, ds_cfg, parse, chat_template: str):
        options = format_options(cfg)
        self.chat_template = chat_template
        self.template_kwargs = dict((cfg.get("chat_template_kwargs") if cfg is not None else None) or {})
        self.think_tags = tuple(options.think_tags)
        self.reasoning_turns = options.reasoning_turns
        if not getattr(tokenizer, "is_fast", False):
            raise ValueError("the chat_template strategy needs a fast tokenizer (offset mapping)")
        self.tokenizer = tokenizer
        self.reasoning_in_template = self._template_renders_reasoning()
        self.eot_ids = self._eot_token_ids(
            (cfg.get("eot_tokens") if cfg is not None else None) or [tokenizer.eos_token]
        )
        super().__init__(tokenizer, cfg, ds_cfg, parse)

    # ---- template ------------------------------------------------------------
    def _apply(self, messages: list[dict]) -> str:
        return self.tokenizer.apply_chat_template(
            messages,
            tokenize=False,
            chat_template=self.chat_template,
            add_generation_prompt=False,
            **self.template_kwargs,
        )

    def _template_renders_reasoning(self) -> bool:
        probe = _placeholder("probe", 0)
        text = self._apply(
            [
                {"role": "user", "content": "question"},
                {"role": "assistant", "content": "answer", TEMPLATE_REASONING_KEY: probe},
            ]
        )
        return probe in text

    def _eot_token_ids(self, tokens) -> set[int]:
        ids = set()
        for token in tokens:
            if token is None:
                continue
            encoded = self.tokenizer.encode(token, add_special_tokens=False)
            if len(encoded) != 1:
                raise ValueError(f"`eot_tokens`: {token!r} is not a single token of the tokenizer")
            if token not in self.chat_template and not (
                token == self.tokenizer.eos_token and "eos_token" in self.chat_template
            ):
                LOG.warning("end-of-turn token %r does not appear in the chat template; it will not be trained", token)
            ids.add(encoded[0])
        return ids

    def _messages(self, turns: list[Turn], fill) -> list[dict]:
        """Template messages; ``fill(kind, index, text)`` gives each assistant answer/reasoning."""
        last = max(i for i, turn in enumerate(turns) if turn.role == "assistant")
        open_tag, close_tag = self.think_tags
        messages = []
        for index, turn in enumerate(turns):
            message = {**turn.extra, "role": turn.role}
            keep = turn.reasoning is not None and (self.reasoning_turns == "all" or index == last)
            if turn.role != "assistant":
                message["content"] = turn.content
            elif keep and self.reasoning_in_template:
                message[TEMPLATE_REASONING_KEY] = fill("r", index, turn.reasoning)
                message["content"] = fill("a", index, turn.content)
            elif keep:
                message["content"] = (
                    f"{open_tag}\n{fill('r', index, turn.reasoning)}\n{close_tag}\n\n{fill('a', index, turn.content)}"
                )
            else:
                message["content"] = fill("a", index, turn.content)
            messages.append(message)
        return messages

    def render(self, turns: list[Turn]) -> Rendering:
        texts = {}

        def placeholder(kind, index, text):
            texts[_placeholder(kind, index)] = (kind, index, text)
            return _placeholder(kind, index)

        marked = self._apply(self._messages(turns, placeholder))
        found = []
        for mark, (kind, index, _) in texts.items():
            count = marked.count(mark)
            if count != 1:
                what = "reasoning" if kind == "r" else "answer"
                hint = "; set `cot_format.reasoning_turns: last`" if kind == "r" and count == 0 else ""
                raise ValueError(
                    f"the chat template renders the {what} of message {index} {count} times, not once{hint}"
                )
            found.append((marked.index(mark), mark))
        pieces, spans, cursor = [], {}, 0
        length = 0
        for position, mark in sorted(found):
            kind, index, text = texts[mark]
            pieces.append(marked[cursor:position])
            length += position - cursor
            spans[(kind, index)] = (length, length + len(text))
            pieces.append(text)
            length += len(text)
            cursor = position + len(mark)
        pieces.append(marked[cursor:])
        text = "".join(pieces)
        if self._apply(self._messages(turns, lambda kind, index, value: value)) != text:
            raise ValueError(
                "the chat template rewrites assistant text (the render differs from the one with "
                "placeholders), so the reasoning span cannot be located"
            )
        trained, reasoning, reasoning_turns, answers = [], [], [], []
        open_tag = self.think_tags[0]
        previous_end = 0
        for index, turn in enumerate(turns):
            if turn.role != "assistant":
                continue
            answer = spans[("a", index)]
            answers.append(answer)
            start = answer[0]
            if ("r", index) in spans:
                reasoning_span = spans[("r", index)]
                reasoning.append(reasoning_span)
                reasoning_turns.append(index)
                start = reasoning_span[0]
                if not self.reasoning_in_template:
                    # Inlined, the opening tag is message text (trained, as axolotl does);
                    # a template's own tags are markup (not trained).
                    tag = text.rfind(open_tag, previous_end, start)
                    if tag >= 0 and not text[tag + len(open_tag) : start].strip():
                        start = tag
            trained.append((start, answer[1]))
            previous_end = answer[1]
        return Rendering(text, trained, reasoning, reasoning_turns, answers)

    # ---- tokens ----------------------------------------------------------------
    def tokenize(self, turns: list[Turn]) -> dict:
        rendering = self.render(turns)
        text = rendering.text
        input_ids, offsets = self._encode(text, rendering.reasoning)
        labels = list(input_ids) if self.train_on_inputs else [IGNORE_INDEX] * len(input_ids)
        for span_start, span_end in rendering.trained:
            inside = [i for i, (s, e) in enumerate(offsets) if s < span_end and e > span_start]
            if not inside:
                continue
            for i in inside:
                labels[i] = input_ids[i]
            after = inside[-1] + 1
            for i in range(after, min(after + EOT_SEARCH_WINDOW + 1, len(input_ids))):
                if input_ids[i] in self.eot_ids:
                    labels[i] = input_ids[i]
                    break
        cot_mask = [0] * len(input_ids)
        for span_start, span_end in rendering.reasoning:
            if span_start == span_end:
                continue  # an empty think block: nothing to mask or remove
            for i, (s, e) in enumerate(offsets):
                overlaps = s < span_end and e > span_start
                if overlaps and not text[s:span_start].strip() and not text[span_end:e].strip():
                    cot_mask[i] = 1
        self._mark_empty_layout(turns, rendering, input_ids, offsets, cot_mask)
        return {
            "input_ids": input_ids,
            "attention_mask": [1] * len(input_ids),
            "labels": labels,
            "cot_mask": cot_mask,
        }

    def _encode(self, text: str, reasoning: list[tuple[int, int]]) -> tuple[list[int], list[tuple[int, int]]]:
        """Token ids and character offsets of ``text``, tokenized as ``apply_chat_template`` does
        but cut at the edges of every non-empty reasoning span: no token straddles the
        reasoning and the template's layout (Qwen's pre-tokenizer would glue the reasoning's
        last ``.`` to the template's newline), so removing reasoning tokens never takes the
        template's layout with it."""
        cuts = sorted({edge for start, end in reasoning if start < end for edge in (start, end)} | {len(text)})
        ids: list[int] = []
        offsets: list[tuple[int, int]] = []
        begin = 0
        for end in cuts:
            if end > begin:
                encoded = self.tokenizer(text[begin:end], add_special_tokens=False, return_offsets_mapping=True)
                ids += encoded["input_ids"]
                offsets += [(s + begin, e + begin) for s, e in encoded["offset_mapping"]]
            begin = end
        return ids, offsets

    def _mark_empty_layout(self, turns, rendering: Rendering, input_ids, offsets, cot_mask) -> None:
        """Layout codes (``ops.removal``) on the think blocks' other tokens, in place.

        Each block with reasoning is compared, token by token, with the template's render
        of the same conversation where that reasoning is empty (blocks from the last to the
        first, so earlier tokens are those of this row). Between the longest common prefix
        and suffix, the tokens that are not CoT are the block's layout: the first ones get
        the empty render's tokens as substitutes (:func:`layout_code`), the rest
        :data:`LAYOUT_DROP`. With the whole CoT removed the row is then, token for token,
        the template's render with empty reasoning (Qwen3: ``<think>`` ``\n`` R ``\n``
        ``</think>`` becomes ``<think>`` ``\n\n`` ``</think>``); with part of it removed the
        tags and the layout stay as the template writes them.

        Raises ValueError when the empty render has more tokens in the block than the
        row has layout tokens there (it could not be reached by removal).
        """
        from axolotl_maskthought.ops.removal import LAYOUT_DROP, layout_code

        blocks = [
            (turn_index, span)
            for turn_index, span in zip(rendering.reasoning_turns, rendering.reasoning)
            if span[0] < span[1]
        ]
        current_turns, current_ids = list(turns), list(input_ids)
        for block, (turn_index, (span_start, span_end)) in reversed(list(enumerate(blocks))):
            inside = [i for i, (s, e) in enumerate(offsets) if s < span_end and e > span_start]
            cot = [i for i in inside if cot_mask[i] > 0]
            if not cot:
                continue
            emptied = list(current_turns)
            emptied[turn_index] = replace(current_turns[turn_index], reasoning="")
            # Earlier blocks keep their reasoning: the same text and cuts as this row up to here.
            empty_text = self._apply(self._messages(emptied, lambda kind, index, value: value))
            empty_ids, _ = self._encode(empty_text, [span for _, span in blocks[:block]])
            prefix = 0
            limit = min(len(current_ids), len(empty_ids), inside[0])
            while prefix < limit and current_ids[prefix] == empty_ids[prefix]:
                prefix += 1
            suffix = 0
            limit = min(len(current_ids) - inside[-1] - 1, len(empty_ids) - prefix)
            while suffix < limit and current_ids[-1 - suffix] == empty_ids[-1 - suffix]:
                suffix += 1
            middle = range(prefix, len(current_ids) - suffix)
            substitutes = empty_ids[prefix : len(empty_ids) - suffix]
            layout = [i for i in middle if cot_mask[i] <= 0]
            if len(substitutes) > len(layout):
                raise ValueError(
                    f"the chat template renders message {turn_index}'s empty reasoning with "
                    f"{len(substitutes)} tokens where the row has {len(layout)} layout tokens around "
                    "the reasoning: removing the whole CoT could not give the template's empty block"
                )
            for i, token in zip(layout, substitutes):
                cot_mask[i] = layout_code(token)
            for i in layout[len(substitutes) :]:
                cot_mask[i] = LAYOUT_DROP
            current_turns, current_ids = emptied, empty_ids

    def prompt_ids(self, row, no_cot: bool = False) -> list[int]:
        """The generation prompt for the row's last assistant turn, as training lays it out.

        ``no_cot``: the row with its whole CoT removed (what Stepwise Internalization trains
        on at the end, see ``ops.removal``) up to where the last answer starts, i.e. the
        template's render with empty reasoning; for Qwen3 this is its ``enable_thinking=False``
        generation prompt (``<think>`` ``\n\n`` ``</think>`` ``\n\n``). Otherwise the row up to
        where the last turn's reasoning starts (Qwen3: ending ``<think>`` ``\n``), or its answer
        when it has none. Raises ValueError for an invalid row, as :meth:`tokenize_prompt`.
        """
        try:
            turns = self.parse(row)
            return self.turns_prompt(turns, no_cot)[0]
        except ValueError as err:
            raise ValueError(f"invalid row {dict(row)!r}: {err}") from None

    def turns_prompt(self, turns: list[Turn], no_cot: bool = False) -> tuple[list[int], list[int]]:
        """``(prompt ids, positions)`` of :meth:`prompt_ids` for parsed turns.

        ``positions[k]`` is the index, in the training row of the same turns, of the token
        prompt token ``k`` stands for: ``range(len(ids))`` with CoT; with ``no_cot`` the indices
        of the tokens that survive full removal (a substituted layout token keeps the index of
        the token it replaces), except that a token right before a removed run takes the run's
        last index: the position ids ``cot_removal.keep_position`` trains them at
        (``ops.removal.remove_cot``, the official trainer's numbering). Raises ValueError when the template
        cannot render the turns (see :meth:`render`).
        """
        rendering = self.render(turns)
        example = self.tokenize(turns)
        ids, codes = example["input_ids"], example["cot_mask"]
        _, offsets = self._encode(rendering.text, rendering.reasoning)
        answer_start = rendering.answers[-1][0]
        end = next((i for i, (_, e) in enumerate(offsets) if e > answer_start), len(ids))
        if not no_cot:
            last_turn = max(i for i, turn in enumerate(turns) if turn.role == "assistant")
            if rendering.reasoning_turns and rendering.reasoning_turns[-1] == last_turn:
                reasoning_start = rendering.reasoning[-1][0]
                end = next((i for i, (_, e) in enumerate(offsets) if e > reasoning_start), end)
            return list(ids[:end]), list(range(end))
        from axolotl_maskthought.ops.removal import LAYOUT_DROP

        # the whole CoT removed: CoT and dropped layout go, substituted layout becomes its token
        kept = [i for i, code in enumerate(codes) if code == 0 or code < LAYOUT_DROP]
        # keep_position numbering: a kept token right before a removed run sits on the run's last place
        positions = [following - 1 for following in kept[1:]] + kept[-1:]
        positions = [max(index, position) for index, position in zip(kept, positions)]
        kept_prompt = [i for i in kept if i < end]
        return [ids[i] if codes[i] == 0 else -codes[i] - 2 for i in kept_prompt], positions[: len(kept_prompt)]

    def turn_end_id(self) -> int | None:
        """The token the template writes right after an assistant answer, when it is one added
        or special token of the tokenizer (ChatML/Qwen ``<|im_end|>``, Llama 3 ``<|eot_id|>``);
        None when the template writes plain text or nothing there. ``eval`` stops generating
        at it (the tokenizer's EOS may be another token, as with Qwen base models)."""
        rendering = self.render([Turn("user", "question"), Turn("assistant", "answer")])
        ids, offsets = self._encode(rendering.text, rendering.reasoning)
        answer_end = rendering.answers[-1][1]
        after = next((i for i, (start, _) in enumerate(offsets) if start >= answer_end), None)
        if after is None:
            return None
        markup = set(self.tokenizer.all_special_ids) | set(self.tokenizer.get_added_vocab().values())
        return ids[after] if ids[after] in markup else None

    def tokenize_prompt(self, row) -> dict:
        try:
            return cut_row(self.tokenize(self.parse(row)), self.length_limit)
        except ValueError as err:
            raise ValueError(f"invalid row {dict(row)!r}: {err}") from None


def load(tokenizer, cfg, ds_cfg=None):
    from axolotl.utils.chat_templates import get_chat_template_from_config

    options = format_options(cfg)
    if ds_cfg is not None and not isinstance(ds_cfg, dict):
        ds_cfg = ds_cfg.model_dump()  # a pydantic DatasetConfig (axolotl's DictDefault is a dict)
    chat_template = get_chat_template_from_config(cfg=cfg, ds_cfg=ds_cfg or {}, tokenizer=tokenizer)

    def parse(row):
        return parse_conversation(row, options.messages_field, options.reasoning_field, options.think_tags)

    return ChatTemplateCoTStrategy(tokenizer, cfg, ds_cfg, parse, chat_template)
