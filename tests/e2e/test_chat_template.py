"""``type: axolotl_maskthought.strategies.chat_template``: spans on real chat templates.

Everything is local: two Jinja templates written here (a Qwen3-style one that
renders ``reasoning_content`` and drops the reasoning of turns before the last
user message, and a ChatML one without reasoning support, so the reasoning is
inlined), axolotl's bundled ``qwen3``/``chatml`` templates, and a byte-level BPE
tokenizer trained on the spot. Two end-to-end axolotl runs check what the model
receives under ``masked_thought.scope: reasoning`` and ``cot_removal``.
"""

from __future__ import annotations

import json
import random

import pytest
import yaml
from paths import REPO_ROOT

from axolotl_maskthought.adapters.axolotl.args import MaskThoughtArgs
from axolotl_maskthought.config import CoTFormatConfig
from axolotl_maskthought.strategies import chat_template as chat
from axolotl_maskthought.toy.tiny import build_model, build_tokenizer

QWEN_STYLE = r"""
{%- set ns = namespace(last_user=-1) %}
{%- for message in messages %}{% if message.role == 'user' %}{% set ns.last_user = loop.index0 %}{% endif %}{% endfor %}
{%- for message in messages %}
{%- if message.role == 'assistant' %}
{%- set content = message.content %}
{%- set reasoning = '' %}
{%- if message.reasoning_content is string %}
{%- set reasoning = message.reasoning_content %}
{%- elif '</think>' in content %}
{%- set reasoning = content.split('</think>')[0].split('<think>')[-1].strip('\n') %}
{%- set content = content.split('</think>')[-1].lstrip('\n') %}
{%- endif %}
{%- if loop.index0 > ns.last_user %}
{{- '<|im_start|>assistant\n<think>\n' + reasoning.strip('\n') + '\n</think>\n\n' + content.lstrip('\n') + '<|im_end|>\n' }}
{%- else %}
{{- '<|im_start|>assistant\n' + content + '<|im_end|>\n' }}
{%- endif %}
{%- else %}
{{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>\n' }}
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{% endif %}
"""

CHATML = r"""
{%- for message in messages %}
{{- '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{% endif %}
"""

MARKUP = ["<|im_start|>", "<|im_end|>", "<think>", "</think>"]
SYSTEM = "You are a careful math tutor."
QUESTION = "What is 12 + 30?"
REASONING = "First take 12. Then add 30.\nSo 12 plus 30 makes 42."
ANSWER = "The answer is 42."
CORPUS = [
    SYSTEM,
    QUESTION,
    REASONING,
    ANSWER,
    "system user assistant",
    "Be brief. Again: what is 5 + 6?",
    "Add 5 and 6 to get 11.",
    "It is 11.",
    "First take 7. Then add 8. 7 plus 8 makes 15. The answer is 15.",
]


def make_tokenizer(chat_template=None):
    tokenizer = build_tokenizer(CORPUS * 20, vocab_size=400)
    tokenizer.add_special_tokens({"additional_special_tokens": MARKUP[:2]})
    tokenizer.add_tokens(MARKUP[2:])
    tokenizer.chat_template = chat_template
    return tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer(QWEN_STYLE)


def strategy(tokenizer, template=None, ds_cfg=None, **cot_format):
    cfg = {"eot_tokens": ["<|im_end|>"], "cot_format": cot_format}
    if template is not None:
        cfg.update(chat_template="jinja", chat_template_jinja=template)
    return chat.load(tokenizer, cfg, ds_cfg or {})


def openai_row(reasoning=REASONING, answer=ANSWER):
    return {
        "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": QUESTION},
            {"role": "assistant", "content": answer, "reasoning_content": reasoning},
        ]
    }


def sharegpt_row(reasoning=REASONING, answer=ANSWER):
    return {
        "conversations": [
            {"from": "system", "value": SYSTEM},
            {"from": "human", "value": QUESTION},
            {"from": "gpt", "value": f"<think>\n{reasoning}\n</think>\n\n{answer}"},
        ]
    }


def decode_where(tokenizer, example, key, keep):
    return tokenizer.decode([t for t, v in zip(example["input_ids"], example[key]) if keep(v)])


def cot_text(tokenizer, example):
    return decode_where(tokenizer, example, "cot_mask", lambda v: v == 1)


def trained_text(tokenizer, example):
    return decode_where(tokenizer, example, "labels", lambda v: v != -100)


def cot_runs(tokenizer, example) -> list[str]:
    """Each contiguous stretch of CoT tokens, decoded and stripped."""
    runs, current = [], []
    for token, cot in zip(example["input_ids"] + [None], example["cot_mask"] + [0]):
        if cot == 1:  # other codes: the template's think-block layout (ops.removal)
            current.append(token)
        elif current:
            runs.append(tokenizer.decode(current).strip())
            current = []
    return runs


def check_layout(tokenizer, example):
    """Invariants of every example: equal lengths, CoT inside the trained tokens, no markup in it."""
    lengths = {len(example[key]) for key in ("input_ids", "attention_mask", "labels", "cot_mask")}
    assert len(lengths) == 1
    markup_ids = set(tokenizer.convert_tokens_to_ids(MARKUP))
    for token, label, cot in zip(example["input_ids"], example["labels"], example["cot_mask"]):
        if cot == 1:
            assert label == token
            assert token not in markup_ids


# ---- spans on the two templates, both input styles ------------------------------------------
@pytest.mark.parametrize("template", ["qwen_style", "chatml"])
@pytest.mark.parametrize("make_row", [openai_row, sharegpt_row], ids=["messages", "sharegpt"])
def test_reasoning_span_labels_and_markup(tokenizer, template, make_row):
    strat = strategy(tokenizer, CHATML if template == "chatml" else None)
    assert strat.reasoning_in_template is (template == "qwen_style")
    example = strat.tokenize_prompt(make_row())
    check_layout(tokenizer, example)

    assert cot_runs(tokenizer, example) == [REASONING]
    # The template's own <think> is markup; the inlined one is message text (as axolotl trains it).
    opening = "<think>\n" if template == "chatml" else ""
    assert trained_text(tokenizer, example) == f"{opening}{REASONING}\n</think>\n\n{ANSWER}<|im_end|>"
    text = tokenizer.decode(example["input_ids"])
    assert text == (
        f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n{QUESTION}<|im_end|>\n"
        f"<|im_start|>assistant\n<think>\n{REASONING}\n</think>\n\n{ANSWER}<|im_end|>\n"
    )
    # System and user content: never trained, never CoT.
    first_trained = next(i for i, v in enumerate(example["labels"]) if v != -100)
    assert QUESTION in tokenizer.decode(example["input_ids"][:first_trained])
    # The answer follows the CoT and is not part of it.
    last_cot = max(i for i, v in enumerate(example["cot_mask"]) if v)
    assert tokenizer.decode(example["input_ids"][last_cot + 1 :]) == f"\n</think>\n\n{ANSWER}<|im_end|>\n"


QWEN_PRETOKENIZE = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def test_token_straddling_the_span_edge_over_whitespace_only():
    """Qwen's pre-tokenizer glues `.` to the newline after it: the reasoning's last token
    reaches outside the reasoning, but only over whitespace, so it is CoT."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_PRETOKENIZE), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<unk>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator((CORPUS + ["Done\n\nIt is 11."]) * 20, trainer=trainer)
    qwen_like = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="</s>", unk_token="<unk>")
    qwen_like.add_special_tokens({"additional_special_tokens": MARKUP[:2]})
    qwen_like.add_tokens(MARKUP[2:])
    qwen_like.chat_template = QWEN_STYLE

    example = strategy(qwen_like).tokenize_prompt(openai_row())
    check_layout(qwen_like, example)
    last_cot = max(i for i, v in enumerate(example["cot_mask"]) if v == 1)
    # Qwen's pre-tokenizer would glue '.' to the template's newline; the row is tokenized cut at
    # the reasoning's edges (issue 15), so the newline stays the template's own layout token.
    assert qwen_like.convert_ids_to_tokens(example["input_ids"][last_cot : last_cot + 2]) == [".", "Ċ"]
    assert cot_runs(qwen_like, example) == [REASONING]
    # An empty think block: its one newline token straddles the empty span, and is not CoT.
    empty = strategy(qwen_like).tokenize_prompt(openai_row(reasoning=""))
    assert "ĊĊ" in qwen_like.convert_ids_to_tokens(empty["input_ids"])
    assert sum(empty["cot_mask"]) == 0


def test_labels_and_ids_match_axolotls_chat_template(tokenizer):
    """Same input_ids and labels as axolotl's own `chat_template` type with its defaults."""
    from axolotl.prompt_strategies.chat_template import load as axolotl_load
    from axolotl.utils.dict import DictDefault

    inline = {
        "messages": [
            {"role": "user", "content": QUESTION},
            {"role": "assistant", "content": f"<think>\n{REASONING}\n</think>\n\n{ANSWER}"},
        ]
    }
    cases = [("qwen3", openai_row(), {}), ("chatml", inline, {})]
    for name, row, cot_format in cases:
        cfg = {"chat_template": name, "eot_tokens": ["<|im_end|>"], "cot_format": cot_format}
        ours = chat.load(tokenizer, cfg, {}).tokenize_prompt(row)
        reference = axolotl_load(
            tokenizer, DictDefault({**cfg, "sequence_len": 512, "train_on_inputs": False}), {"type": "chat_template"}
        ).tokenize_prompt(row)
        assert ours["input_ids"] == reference["input_ids"], name
        assert ours["labels"] == reference["labels"], name
        assert cot_text(tokenizer, ours).strip() == REASONING


def multi_turn_row():
    return {
        "messages": [
            {"role": "user", "content": "Be brief. Again: what is 5 + 6?"},
            {"role": "assistant", "content": "It is 11.", "reasoning_content": "Add 5 and 6 to get 11."},
            {"role": "user", "content": QUESTION},
            {"role": "assistant", "content": ANSWER, "reasoning_content": REASONING},
        ]
    }


def test_reasoning_turns_last_drops_earlier_reasoning(tokenizer):
    for template in (None, CHATML):
        example = strategy(tokenizer, template).tokenize_prompt(multi_turn_row())
        check_layout(tokenizer, example)
        assert cot_text(tokenizer, example).strip() == REASONING
        assert "Add 5 and 6" not in tokenizer.decode(example["input_ids"])
        # Both assistant answers are trained, each with its end-of-turn token.
        trained = trained_text(tokenizer, example)
        assert trained.startswith("It is 11.<|im_end|>") and trained.endswith(f"{ANSWER}<|im_end|>")


def test_reasoning_turns_all(tokenizer):
    example = strategy(tokenizer, CHATML, reasoning_turns="all").tokenize_prompt(multi_turn_row())
    check_layout(tokenizer, example)
    assert cot_runs(tokenizer, example) == ["Add 5 and 6 to get 11.", REASONING]
    # The Qwen3-style template drops reasoning before the last user message: refuse, say why.
    with pytest.raises(ValueError, match=r"reasoning of message 1 0 times.*reasoning_turns: last"):
        strategy(tokenizer, reasoning_turns="all").tokenize_prompt(multi_turn_row())


def test_lone_closing_tag_and_no_reasoning(tokenizer):
    strat = strategy(tokenizer, CHATML)
    r1_style = {
        "messages": [
            {"role": "user", "content": QUESTION},
            {"role": "assistant", "content": f"{REASONING}\n</think>\n{ANSWER}"},
        ]
    }
    assert cot_text(tokenizer, strat.tokenize_prompt(r1_style)).strip() == REASONING
    for template in (None, CHATML):
        empty = strategy(tokenizer, template).tokenize_prompt(openai_row(reasoning=""))
        assert sum(empty["cot_mask"]) == 0
        assert tokenizer.decode(empty["input_ids"]).endswith(f"<think>\n\n</think>\n\n{ANSWER}<|im_end|>\n")
    plain = {"messages": [{"role": "user", "content": QUESTION}, {"role": "assistant", "content": ANSWER}]}
    example = strat.tokenize_prompt(plain)
    assert sum(example["cot_mask"]) == 0
    assert trained_text(tokenizer, example) == f"{ANSWER}<|im_end|>"


# ---- options ---------------------------------------------------------------------------------
def test_field_options_change_what_is_read(tokenizer):
    row = {
        "dialog": [
            {"role": "user", "content": QUESTION},
            {"role": "assistant", "content": ANSWER, "thoughts": REASONING},
        ]
    }
    example = strategy(tokenizer, messages_field="dialog", reasoning_field="thoughts").tokenize_prompt(row)
    assert cot_text(tokenizer, example).strip() == REASONING
    # Default field names: no conversation found, or the reasoning is not seen.
    with pytest.raises(ValueError, match="no conversation"):
        strategy(tokenizer).tokenize_prompt(row)
    example = strategy(tokenizer, messages_field="dialog").tokenize_prompt(row)
    assert sum(example["cot_mask"]) == 0


def test_think_tags_option(tokenizer):
    row = {
        "messages": [
            {"role": "user", "content": QUESTION},
            {"role": "assistant", "content": f"<reasoning>{REASONING}</reasoning>{ANSWER}"},
        ]
    }
    tags = {"think_tags": ["<reasoning>", "</reasoning>"]}
    inline = strategy(tokenizer, CHATML, **tags).tokenize_prompt(row)
    assert cot_text(tokenizer, inline).strip() == REASONING
    assert tokenizer.decode(inline["input_ids"]).count("<reasoning>") == 1
    # Default tags: the whole content is the answer, nothing is CoT.
    assert sum(strategy(tokenizer, CHATML).tokenize_prompt(row)["cot_mask"]) == 0


def test_chat_template_from_axolotl_config(tokenizer):
    """`chat_template:` in the config wins over the tokenizer's own template."""
    tokenizer_default = strategy(tokenizer)
    chatml = chat.load(tokenizer, {"chat_template": "chatml", "eot_tokens": ["<|im_end|>"]}, {})
    assert tokenizer_default.chat_template == QWEN_STYLE and tokenizer_default.reasoning_in_template
    assert chatml.chat_template != QWEN_STYLE and not chatml.reasoning_in_template
    per_dataset = chat.load(tokenizer, {"eot_tokens": ["<|im_end|>"]}, {"chat_template": "qwen3"})
    assert per_dataset.reasoning_in_template and per_dataset.chat_template != QWEN_STYLE


def test_eot_tokens_and_train_on_inputs(tokenizer):
    # eos `</s>` is not in the template: without `eot_tokens` the turn end is not trained.
    example = chat.load(tokenizer, {}, {}).tokenize_prompt(openai_row())
    assert trained_text(tokenizer, example).endswith(ANSWER)
    with pytest.raises(ValueError, match="`eot_tokens`.*single token"):
        chat.load(tokenizer, {"eot_tokens": ["<|im_end|> and more"]}, {})
    everything = chat.load(tokenizer, {"train_on_inputs": True}, {}).tokenize_prompt(openai_row())
    assert everything["labels"] == everything["input_ids"]
    assert cot_text(tokenizer, everything).strip() == REASONING


# ---- bad rows and templates -----------------------------------------------------------------
@pytest.mark.parametrize(
    "row, message",
    [
        ({"messages": [{"role": "user", "content": QUESTION}]}, "no assistant turn"),
        (
            {"messages": [{"role": "wizard", "content": QUESTION}, {"role": "assistant", "content": "x"}]},
            "unknown role 'wizard'",
        ),
        ({"conversations": [{"from": "human", "value": "q"}, {"from": "bot", "value": "a"}]}, "unknown from 'bot'"),
        ({"messages": []}, "no conversation"),
        (
            {
                "messages": [
                    {"role": "user", "content": "q"},
                    {"role": "assistant", "content": "<think>x</think>a", "reasoning_content": "y"},
                ]
            },
            "both in `reasoning_content` and inline",
        ),
        (
            {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "<think>unclosed"}]},
            "without a closing",
        ),
    ],
)
def test_bad_rows_name_the_row(tokenizer, row, message):
    with pytest.raises(ValueError, match=message) as error:
        strategy(tokenizer).tokenize_prompt(row)
    assert f"invalid row {row!r}" in str(error.value)


def test_bad_row_in_local_file_fails_at_load_with_file_and_row(tokenizer, tmp_path):
    good, bad = openai_row(), {"messages": [{"role": "user", "content": "q"}]}
    jsonl = tmp_path / "chats.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in (good, good, bad)) + "\n")
    with pytest.raises(ValueError, match=r"chats.jsonl: row 3: no assistant turn"):
        strategy(tokenizer, ds_cfg={"path": str(jsonl)})
    # A .json file holding one array (axolotl loads those too) is checked the same way.
    array = tmp_path / "chats.json"
    array.write_text(json.dumps([good, bad], indent=2))
    with pytest.raises(ValueError, match=r"chats.json: row 2: no assistant turn"):
        strategy(tokenizer, ds_cfg={"path": str(array)})
    skipping = strategy(tokenizer, ds_cfg={"path": str(jsonl)}, skip_invalid_rows=True)
    assert skipping.filter_rows(good) and not skipping.filter_rows(bad)


def test_template_that_rewrites_text_is_refused(tokenizer):
    rewriting = CHATML.replace("message['content']", "message['content'] | replace('.', '!')")
    with pytest.raises(ValueError, match="rewrites assistant text"):
        strategy(tokenizer, rewriting).tokenize_prompt(openai_row())


def test_example_yaml_validates():

    path = REPO_ROOT / "examples" / "yaml" / "qwen_think_reasoning_mft.yml"
    config = yaml.safe_load(path.read_text())
    args = MaskThoughtArgs(
        **{k: config[k] for k in ("masked_thought", "cot_removal", "cot_format", "datasets") if k in config}
    )
    assert args.masked_thought.scope == "reasoning"
    assert isinstance(args.cot_format, CoTFormatConfig)
    assert config["datasets"][0]["type"] == "axolotl_maskthought.strategies.chat_template"
    assert "axolotl_maskthought.MaskThoughtPlugin" in config["plugins"]


# ---- end to end through axolotl -------------------------------------------------------------
def chat_rows(count: int, seed: int, sharegpt: bool) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        a, b = rng.randint(1, 60), rng.randint(1, 60)
        question = f"What is {a} + {b}?"
        reasoning = f"First take {a}. Then add {b}. So {a} plus {b} makes {a + b}."
        answer = f"The answer is {a + b}."
        if sharegpt:
            rows.append(
                {
                    "conversations": [
                        {"from": "human", "value": question},
                        {"from": "gpt", "value": f"<think>\n{reasoning}\n</think>\n\n{answer}"},
                    ]
                }
            )
        else:
            rows.append(
                {
                    "messages": [
                        {"role": "system", "content": SYSTEM},
                        {"role": "user", "content": question},
                        {"role": "assistant", "content": answer, "reasoning_content": reasoning},
                    ]
                }
            )
    return rows


@pytest.fixture(scope="module")
def chat_run_inputs(tmp_path_factory):
    """A tiny Llama whose tokenizer carries the Qwen3-style template, and 40 chat rows in two files."""
    from axolotl_run import write_jsonl

    root = tmp_path_factory.mktemp("chat_e2e")
    openai_rows, sharegpt_rows = chat_rows(20, 1, False), chat_rows(20, 2, True)
    texts = CORPUS + [json.dumps(r) for r in openai_rows + sharegpt_rows]
    tokenizer = build_tokenizer(texts * 3, vocab_size=400)
    tokenizer.add_special_tokens({"additional_special_tokens": MARKUP[:2]})
    tokenizer.add_tokens(MARKUP[2:])
    tokenizer.chat_template = QWEN_STYLE
    model_dir = root / "model"
    build_model(tokenizer, hidden=32, layers=1, heads=2).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    datasets = [
        {
            "path": str(write_jsonl(root / "messages.jsonl", openai_rows)),
            "ds_type": "json",
            "type": "axolotl_maskthought.strategies.chat_template",
        },
        {
            "path": str(write_jsonl(root / "sharegpt.jsonl", sharegpt_rows)),
            "ds_type": "json",
            "type": "axolotl_maskthought.strategies.chat_template",
        },
    ]
    return root, model_dir, datasets


def think_positions(row_ids, tokenizer):
    """(open, close) index pairs of the <think> blocks of a row."""
    ids = row_ids.tolist()
    opens = [i for i, t in enumerate(ids) if t == tokenizer.convert_tokens_to_ids("<think>")]
    closes = [i for i, t in enumerate(ids) if t == tokenizer.convert_tokens_to_ids("</think>")]
    assert len(opens) == len(closes) == 1
    return opens[0], closes[0]


def test_end_to_end_masked_thought_scope_reasoning(chat_run_inputs):
    import torch
    from axolotl_run import run_in_process, write_config

    root, model_dir, datasets = chat_run_inputs
    config = write_config(
        root / "mft.yml",
        base_model=model_dir,
        datasets=datasets,
        output_dir=root / "mft",
        eot_tokens=["<|im_end|>"],
        sequence_len=256,
        masked_thought={"scope": "reasoning", "ratio": 0.5, "warmup": 0},
    )
    run = run_in_process(config)
    tokenizer = run.trainer.processing_class
    forwards = run.train_forwards
    assert len(forwards) == 4
    masked_total = reasoning_total = 0
    for forward in forwards:
        input_ids, labels = forward["input_ids"], forward["labels"]
        for row in range(input_ids.shape[0]):
            trained = labels[row] != -100
            original = torch.where(trained, labels[row], input_ids[row])  # only trained inputs are masked
            masked = (trained & (input_ids[row] != labels[row])).nonzero().flatten().tolist()
            open_at, close_at = think_positions(original, tokenizer)
            # Reasoning tokens: strictly inside the tags, minus the newline after/before them.
            reasoning = range(open_at + 2, close_at - 1)
            assert tokenizer.decode(original[reasoning.start : reasoning.stop]).startswith("First take")
            assert all(position in reasoning for position in masked), (masked, open_at, close_at)
            masked_total += len(masked)
            reasoning_total += len(reasoning)
    assert 0.35 < masked_total / reasoning_total < 0.65


def test_end_to_end_cot_removal_shortens_only_reasoning(chat_run_inputs):
    from axolotl_run import run_in_process, write_config

    root, model_dir, datasets = chat_run_inputs
    # axolotl's bundled ChatML template: no reasoning_content support, the reasoning is inlined.
    config = write_config(
        root / "removal.yml",
        base_model=model_dir,
        datasets=datasets,
        output_dir=root / "removal",
        chat_template="chatml",
        eot_tokens=["<|im_end|>"],
        sequence_len=256,
        cot_removal={"tokens_per_epoch": 100, "smoothing_lambda": None, "reset_optimizer": False},
    )
    run = run_in_process(config)
    trainer = run.trainer
    assert "reasoning_content" not in trainer.processing_class.chat_template
    originals = [(list(r["input_ids"]), list(r["cot_mask"])) for r in trainer.train_dataset]
    assert all(sum(mask) > 4 for _, mask in originals)
    forwards = run.train_forwards
    assert len(forwards) == 4
    for step, forward in enumerate(forwards):
        count = trainer.applied_counts[step]
        assert count == step + 1  # Δ above the epoch length: one more token every micro-batch
        expected = set()
        for ids, mask in originals:
            cot_positions = [i for i, m in enumerate(mask) if m][:count]  # side: left
            expected.add(tuple(t for i, t in enumerate(ids) if i not in cot_positions))
        for row in range(forward["input_ids"].shape[0]):
            real = forward["input_ids"][row][forward["attention_mask"][row] != 0].tolist()
            assert tuple(real) in expected, trainer.processing_class.decode(real)
            text = trainer.processing_class.decode(real)
            assert "<think>" in text and "</think>" in text and "<|im_start|>assistant\n" in text
