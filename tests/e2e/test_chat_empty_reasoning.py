"""After Stepwise Internalization on chat data the model trains on the layout it is served
(issue 15, kind 4).

With the whole reasoning removed, each row must equal, token for token, the template's own
rendering of the same conversation with empty reasoning (and so start with its
``enable_thinking=False`` generation prompt); with part of it removed, the tags and the
tokens around them stay as the template writes them. Checked on every template axolotl
bundles that renders reasoning, with a tokenizer built here whose pre-tokenizer is Qwen's
(it glues ``.`` to a following newline and makes ``\\n\\n`` one token, as in the issue).
"""

from __future__ import annotations

import pytest
import torch
from chat_tokenizers import qwen_like_tokenizer, template_markup

from axolotl_maskthought.ops.removal import remove_cot
from axolotl_maskthought.ops.schedule import REMOVE_ALL
from axolotl_maskthought.strategies import chat_template as chat

QUESTIONS = ["What is 12 + 30?", "What is 5 + 6?", "What is 7 + 8?"]
REASONINGS = [
    "First take 12. Then add 30.\nSo 12 plus 30 makes 42.",  # ends with '.': Qwen glues '.\n'
    "Add 5 and 6.\n\nIt makes 11",
    "7 plus 8.\nThat is 15!",
]
ANSWERS = ["The answer is 42.", "It is 11.", "15"]
# every bundled template that renders a message's reasoning (exaone4 with `skip_think: false`)
REASONING_TEMPLATES = {"qwen3", "qwen3_5", "exaone4"}
TEMPLATE_KWARGS = {"skip_think": False}


@pytest.fixture(scope="module")
def bundled():
    from axolotl.utils.chat_templates.base import _CHAT_TEMPLATES

    return dict(_CHAT_TEMPLATES)


@pytest.fixture(scope="module")
def tokenizer(bundled):
    corpus = (QUESTIONS + REASONINGS + ANSWERS + ["system user assistant"]) * 30
    tok = qwen_like_tokenizer(corpus, template_markup(bundled.values()))
    assert tok.tokenize("<think>\n\n</think>") == ["<think>", "ĊĊ", "</think>"]
    assert tok.tokenize("42.\n</think>")[-2:] == [".Ċ", "</think>"]
    return tok


def _strategy(tokenizer, name):
    return chat.load(tokenizer, {"chat_template": name, "chat_template_kwargs": TEMPLATE_KWARGS}, {})


def _row(i: int, reasoning: str | None = None) -> dict:
    return {
        "messages": [
            {"role": "user", "content": QUESTIONS[i]},
            {"role": "assistant", "content": ANSWERS[i], "reasoning_content": reasoning or REASONINGS[i]},
        ]
    }


def _template_ids(tokenizer, strat, messages, **kwargs) -> list[int]:
    text = tokenizer.apply_chat_template(
        messages, tokenize=False, chat_template=strat.chat_template, **{**TEMPLATE_KWARGS, **kwargs}
    )
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _remove(example: dict, count: int, side: str = "left") -> dict:
    batch = {
        "input_ids": torch.tensor([example["input_ids"]]),
        "labels": torch.tensor([example["labels"]]),
        "attention_mask": torch.ones(1, len(example["input_ids"]), dtype=torch.long),
    }
    result = remove_cot(batch, torch.tensor([example["cot_mask"]]), count, side)
    return {key: value[0].tolist() for key, value in result.batch.items()}


def test_the_reasoning_templates_are_these(tokenizer, bundled):
    renders = {name for name in bundled if name in REASONING_TEMPLATES or _probe(tokenizer, name)}
    assert renders == REASONING_TEMPLATES


def _probe(tokenizer, name) -> bool:
    try:
        return _strategy(tokenizer, name).reasoning_in_template
    except Exception as error:  # templates that cannot render a plain user/assistant exchange
        return "reasoning" in str(error)


@pytest.mark.parametrize("name", sorted(REASONING_TEMPLATES))
def test_whole_cot_removed_is_the_templates_empty_reasoning(tokenizer, name):
    strat = _strategy(tokenizer, name)
    assert strat.reasoning_in_template
    for i in range(len(QUESTIONS)):
        row = _row(i)
        example = strat.tokenize_prompt(row)
        empty = [dict(message) for message in row["messages"]]
        empty[-1]["reasoning_content"] = ""
        expected = _template_ids(tokenizer, strat, empty)
        removed = _remove(example, REMOVE_ALL)
        assert removed["input_ids"] == expected, (name, i, tokenizer.convert_ids_to_tokens(removed["input_ids"]))
        # the no-thinking generation prompt is where that row's answer starts
        prompt = _template_ids(tokenizer, strat, empty[:-1], add_generation_prompt=True, enable_thinking=False)
        assert expected[: len(prompt)] == prompt
        # labels: the answer and end of turn still trained, nothing invented
        trained = [t for t, label in zip(removed["input_ids"], removed["labels"]) if label != -100]
        assert tokenizer.decode(trained).count(ANSWERS[i]) == 1
        assert all(label in (-100, token) for token, label in zip(removed["input_ids"], removed["labels"]))


@pytest.mark.parametrize("name", sorted(REASONING_TEMPLATES))
@pytest.mark.parametrize("side", ["left", "right"])
def test_part_removed_keeps_the_templates_tags_and_layout(tokenizer, name, side):
    strat = _strategy(tokenizer, name)
    i = 0
    example = strat.tokenize_prompt(_row(i))
    cot = sum(1 for code in example["cot_mask"] if code == 1)
    for count in range(0, cot):
        removed = _remove(example, count, side)
        text = tokenizer.decode(removed["input_ids"])
        kept = tokenizer.decode(
            [t for t, code in zip(example["input_ids"], example["cot_mask"]) if code == 1][count:]
            if side == "left"
            else [t for t, code in zip(example["input_ids"], example["cot_mask"]) if code == 1][: cot - count]
        )
        # exactly the template's layout around what is left of the reasoning
        full = tokenizer.decode(example["input_ids"])
        assert text == full.replace(REASONINGS[i], kept), (count, text)
        assert len(removed["input_ids"]) == len(example["input_ids"]) - count


def test_the_issue_case_qwen3_rows(tokenizer):
    # 12 rows on the bundled qwen3: before, full removal left '<think>' '\n' '</think>' (the
    # reasoning's '.\n' took the newline) or '<think>' '\n' '\n' '</think>'.
    strat = _strategy(tokenizer, "qwen3")
    think, close = tokenizer.convert_tokens_to_ids(["<think>", "</think>"])
    double_newline = tokenizer.convert_tokens_to_ids("ĊĊ")
    for n in range(12):
        reasoning = f"{REASONINGS[n % 3]}{'.' if n % 2 else ''}"
        removed = _remove(strat.tokenize_prompt(_row(n % 3, reasoning)), REMOVE_ALL)
        ids = removed["input_ids"]
        start = ids.index(think)
        assert ids[start : start + 3] == [think, double_newline, close]


def test_inlined_reasoning_empties_to_the_inline_layout(tokenizer, bundled):
    # chatml renders no reasoning: it is inlined as <think>\n…\n</think>\n\n; removed, the
    # block is the same layout with nothing inside.
    strat = chat.load(tokenizer, {"chat_template": "chatml"}, {})
    assert not strat.reasoning_in_template
    example = strat.tokenize_prompt(_row(0))
    removed = _remove(example, REMOVE_ALL)
    empty = strat.tokenize_prompt(_row(0, reasoning=" "))  # blank reasoning: the empty block
    assert removed["input_ids"] == empty["input_ids"]


def test_end_to_end_qwen3_remove_all_trains_on_the_served_layout(tokenizer, tmp_path):
    """The issue's case through `axolotl train`: bundled qwen3, `reasoning_content` rows, whole
    CoT removed from the first step; every row the model receives is the template's render with
    empty reasoning, whose prefix is the `enable_thinking=False` prompt."""
    from axolotl.utils.data import sft
    from axolotl_run import run_in_process, save_prepared_in_process, write_config, write_jsonl

    from axolotl_maskthought.toy.tiny import build_model

    rows = [_row(n % 3, f"{REASONINGS[n % 3]}{' Done.' if n % 2 else ''}") for n in range(12)]
    model_dir = tmp_path / "model"
    build_model(tokenizer, hidden=32, layers=1, heads=2).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    config = write_config(
        tmp_path / "run.yml",
        base_model=model_dir,
        datasets=[
            {
                "path": str(write_jsonl(tmp_path / "rows.jsonl", rows)),
                "ds_type": "json",
                "type": "axolotl_maskthought.strategies.chat_template",
            }
        ],
        output_dir=tmp_path / "out",
        chat_template="qwen3",
        eot_tokens=["<|im_end|>"],
        sequence_len=256,
        max_steps=3,
        cot_removal={"tokens_per_epoch": 1, "remove_all_at": 0, "smoothing_lambda": None},
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sft, "save_preprocessed_dataset", save_prepared_in_process)
        run = run_in_process(config)
    strat = _strategy(tokenizer, "qwen3")
    expected = set()
    for row in rows:
        empty = [dict(message) for message in row["messages"]]
        empty[-1]["reasoning_content"] = ""
        expected.add(tuple(_template_ids(tokenizer, strat, empty)))
    seen = 0
    for forward in run.train_forwards:
        for ids, mask in zip(forward["input_ids"], forward["attention_mask"]):
            real = tuple(ids[mask != 0].tolist())
            assert real in expected, tokenizer.convert_ids_to_tokens(list(real))
            seen += 1
    assert seen == 12


@pytest.mark.parametrize("name", sorted(REASONING_TEMPLATES))
def test_no_cot_prompt_is_the_templates_no_thinking_prompt(tokenizer, name):
    # the prompt `eval --no-cot` gives chat rows (tests/e2e/test_eval_chat.py): the template's
    # enable_thinking=False prompt, which is also where the fully removed training row's answer
    # starts.
    strat = _strategy(tokenizer, name)
    for i in range(len(QUESTIONS)):
        row = _row(i)
        prompt = strat.prompt_ids(row, no_cot=True)
        served = _template_ids(
            tokenizer, strat, row["messages"][:-1], add_generation_prompt=True, enable_thinking=False
        )
        assert prompt == served, tokenizer.convert_ids_to_tokens(prompt)
        removed = _remove(strat.tokenize_prompt(row), REMOVE_ALL)["input_ids"]
        assert removed[: len(prompt)] == prompt
        assert tokenizer.decode(removed[len(prompt) :]).startswith(ANSWERS[i])
        with_cot = strat.prompt_ids(row)
        assert tokenizer.convert_ids_to_tokens(with_cot[-2:]) == ["<think>", "Ċ"]
        assert strat.tokenize_prompt(row)["input_ids"][: len(with_cot)] == with_cot
