"""`eval` and `score` on chat data (issue 15, kind 4: "`eval --no-cot` on chat data uses the
same no-thinking prompt").

The prompts are checked token for token against the training layout of the
``chat_template`` strategy on every template the chat tests cover (the bundled templates
that render reasoning, and inlined reasoning): with ``--no-cot`` the prompt is the training
row with its whole CoT removed, up to the answer (the template's ``enable_thinking=False``
prompt), with CoT the training row up to the reasoning. Then tiny models trained through
``axolotl train`` on bundled qwen3 are evaluated by ``axolotl-maskthought eval --config`` on
the same YAML: one with the whole CoT removed from the first step (``keep_position``) with
``--no-cot``, one trained with its CoT without it; generation stops at the template's
``<|im_end|>`` (the tokenizer's EOS is ``</s>``). Nothing is mocked.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from chat_tokenizers import qwen_like_tokenizer, template_markup

from axolotl_maskthought.cli import main
from axolotl_maskthought.eval import scoring
from axolotl_maskthought.eval.chat import ChatSettings, kept_position_shift, stop_token_ids
from axolotl_maskthought.eval.prompts import build_prompts, kept_position_shifts
from axolotl_maskthought.ops.removal import remove_cot
from axolotl_maskthought.ops.schedule import REMOVE_ALL

CHAT = "axolotl_maskthought.strategies.chat_template"
QUESTIONS = ["What is 12 + 30?", "What is 5 + 6?", "What is 7 + 8?", "Name the colour of snow.", "What is 9 - 4?"]
REASONINGS = [
    "First take 12. Then add 30.\nSo 12 plus 30 makes 42.",  # ends with '.': Qwen glues '.\n'
    "Add 5 and 6.\n\nIt makes 11",
    "7 plus 8.\nThat is 15!",
    "Snow reflects all light.",
    "Take 4 from 9.",
]
ANSWERS = ["42", "11", "The answer is 15.", "white", "5"]
# the templates tests/e2e/test_chat_empty_reasoning.py covers: every bundled template that
# renders a message's reasoning (exaone4 with `skip_think: false`), and chatml (inlined)
REASONING_TEMPLATES = ("qwen3", "qwen3_5", "exaone4")
TEMPLATE_KWARGS = {"skip_think": False}
MAX_NEW = "24"


@pytest.fixture(scope="module")
def bundled():
    from axolotl.utils.chat_templates.base import _CHAT_TEMPLATES

    return dict(_CHAT_TEMPLATES)


@pytest.fixture(scope="module")
def tokenizer(bundled):
    corpus = (QUESTIONS + REASONINGS + ANSWERS + ["system user assistant"]) * 30
    tok = qwen_like_tokenizer(corpus, template_markup(bundled.values()))
    assert tok.tokenize("<think>\n\n</think>") == ["<think>", "ĊĊ", "</think>"]
    assert tok.eos_token == "</s>"  # not the template's end of turn
    return tok


def _row(i: int, inline: bool = False, reasoning: bool = True, answer: str | None = None) -> dict:
    answer = ANSWERS[i] if answer is None else answer
    assistant = {"role": "assistant", "content": answer}
    if reasoning and inline:
        assistant["content"] = f"<think>\n{REASONINGS[i]}\n</think>\n\n{answer}"
    elif reasoning:
        assistant["reasoning_content"] = REASONINGS[i]
    return {"messages": [{"role": "user", "content": QUESTIONS[i]}, assistant]}


def _settings(name: str) -> ChatSettings:
    return ChatSettings.from_config({"chat_template": name, "chat_template_kwargs": TEMPLATE_KWARGS})


def _examples(tmp_path: Path, rows: list[dict]) -> list:
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return scoring.load_examples(path, scoring.infer_format(path))


def _template_ids(tokenizer, strat, messages, **kwargs) -> list[int]:
    text = tokenizer.apply_chat_template(
        messages, tokenize=False, chat_template=strat.chat_template, **{**TEMPLATE_KWARGS, **kwargs}
    )
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _removed(example: dict, keep_position: bool = False) -> dict:
    batch = {
        "input_ids": torch.tensor([example["input_ids"]]),
        "labels": torch.tensor([example["labels"]]),
        "attention_mask": torch.ones(1, len(example["input_ids"]), dtype=torch.long),
    }
    result = remove_cot(batch, torch.tensor([example["cot_mask"]]), REMOVE_ALL, keep_position=keep_position)
    return {key: value[0].tolist() for key, value in result.batch.items()}


# ---- prompts: the training layout, token for token ------------------------------------------
@pytest.mark.parametrize("name", [*REASONING_TEMPLATES, "chatml"])
def test_no_cot_prompt_is_the_training_row_after_full_removal(tokenizer, tmp_path, name):
    settings = _settings(name)
    strat = settings.strategy(tokenizer)
    rows = [_row(i) for i in range(len(QUESTIONS))] + [_row(0, inline=True)]
    examples = _examples(tmp_path, rows)
    prompts = build_prompts(tokenizer, examples, "chat", settings, no_cot=True)
    for row, example, prompt in zip(rows, examples, prompts):
        trained = _removed(strat.tokenize_prompt(row))["input_ids"]  # what SI trains on at the end
        assert trained[: len(prompt)] == prompt, (name, tokenizer.convert_ids_to_tokens(prompt))
        assert tokenizer.decode(trained[len(prompt) :]).startswith(example.answer)
        assert prompt == strat.prompt_ids(row, no_cot=True)
        if name in REASONING_TEMPLATES:  # the template's own no-thinking generation prompt
            served = _template_ids(
                tokenizer, strat, row["messages"][:-1], add_generation_prompt=True, enable_thinking=False
            )
            assert prompt == served
        assert tokenizer.convert_ids_to_tokens(prompt[-4:]) == ["<think>", "ĊĊ", "</think>", "ĊĊ"]


@pytest.mark.parametrize("name", [*REASONING_TEMPLATES, "chatml"])
def test_cot_prompt_is_the_training_row_up_to_the_reasoning(tokenizer, tmp_path, name):
    settings = _settings(name)
    strat = settings.strategy(tokenizer)
    rows = [_row(i) for i in range(len(QUESTIONS))]
    prompts = build_prompts(tokenizer, _examples(tmp_path, rows), "chat", settings)
    for row, prompt in zip(rows, prompts):
        example = strat.tokenize_prompt(row)
        first_cot = example["cot_mask"].index(1)
        assert prompt == example["input_ids"][:first_cot]
        assert tokenizer.convert_ids_to_tokens(prompt[-2:]) == ["<think>", "Ċ"]
        served = tokenizer.apply_chat_template(
            row["messages"][:-1],
            tokenize=False,
            chat_template=strat.chat_template,
            add_generation_prompt=True,
            enable_thinking=True,
            **TEMPLATE_KWARGS,
        )
        text = tokenizer.decode(prompt, clean_up_tokenization_spaces=False)
        if name in REASONING_TEMPLATES:
            # the template's thinking prompt up to its `<think>`, then the one newline training
            # lays out before the reasoning (qwen3's prompt writes `<think>\n\n`, its render of a
            # reasoning message `<think>\n` + reasoning)
            assert served.rstrip("\n").endswith("<think>") and text == served.rstrip("\n") + "\n"
        else:  # inlined: the generation prompt, then the inline block's opening as trained
            assert text == served + "<think>\n"


def test_rows_without_reasoning_get_the_training_layout(tokenizer, tmp_path):
    # A test row needs no gold reasoning: it is prompted with the layout of the trained rows,
    # which had it (inlined chatml would otherwise lose its empty think block).
    for name in ("qwen3", "chatml"):
        settings = _settings(name)
        with_reasoning = _examples(tmp_path, [_row(1)])
        without = _examples(tmp_path, [_row(1, reasoning=False)])
        for no_cot in (False, True):
            expected = build_prompts(tokenizer, with_reasoning, "chat", settings, no_cot)
            assert build_prompts(tokenizer, without, "chat", settings, no_cot) == expected


@pytest.mark.parametrize("name", [*REASONING_TEMPLATES, "chatml"])
def test_keep_position_numbers_the_prompt_as_training(tokenizer, tmp_path, name):
    settings = _settings(name)
    strat = settings.strategy(tokenizer)
    rows = [_row(i) for i in range(len(QUESTIONS))]
    examples = _examples(tmp_path, rows)
    shifts = kept_position_shifts(tokenizer, examples, "chat", settings)
    for row, example, (start, shift) in zip(rows, examples, shifts):
        trained = _removed(strat.tokenize_prompt(row), keep_position=True)
        ids, positions = strat.turns_prompt(list(example.turns), no_cot=True)
        assert trained["position_ids"][: len(ids)] == positions
        assert [k + (shift if k >= start else 0) for k in range(len(ids))] == positions
        assert shift > sum(1 for code in strat.tokenize_prompt(row)["cot_mask"] if code == 1) - 1
    assert kept_position_shift([0, 1, 5, 6]) == (2, 3)
    with pytest.raises(ValueError, match="keep_position"):
        kept_position_shift([0, 3, 4, 9])


@pytest.mark.parametrize("name, end", [("qwen3", "<|im_end|>"), ("exaone4", "[|endofturn|]")])
def test_generation_stops_at_the_templates_end_of_turn(tokenizer, name, end):
    strat = _settings(name).strategy(tokenizer)
    stops = tokenizer.convert_ids_to_tokens(stop_token_ids(tokenizer, strat))
    assert stops == ["</s>", end]


# ---- eval end to end -------------------------------------------------------------------------
def _train(root: Path, tokenizer, steps: int, **blocks) -> dict:
    """A tiny Llama trained by `axolotl train` on the five conversations, bundled qwen3."""
    from axolotl.utils.data import sft
    from axolotl_run import run_in_process, save_prepared_in_process, write_config, write_jsonl

    from axolotl_maskthought.toy.tiny import build_model

    rows = [_row(i) for i in range(len(QUESTIONS))]
    model_dir = root / "model"
    build_model(tokenizer, hidden=64, layers=2, heads=4).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    config = write_config(
        root / "run.yml",
        base_model=model_dir,
        datasets=[{"path": str(write_jsonl(root / "train.jsonl", rows)), "ds_type": "json", "type": CHAT}],
        output_dir=root / "out",
        chat_template="qwen3",
        eot_tokens=["<|im_end|>"],
        sequence_len=256,
        micro_batch_size=len(rows),
        learning_rate=0.003,
        max_steps=steps,
        num_epochs=1000,
        logging_steps=20,
        **blocks,
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sft, "save_preprocessed_dataset", save_prepared_in_process)
        run_in_process(config)
    torch.set_num_threads(1)
    return {"root": root, "config": config, "out": root / "out"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tokenizer):
    """Stepwise Internalization's end point: the whole CoT removed from step 0, so the model
    learns the answers in the no-thinking layout, at the positions `keep_position` keeps."""
    threads = torch.get_num_threads()
    removal = {"tokens_per_epoch": 1, "remove_all_at": 0, "smoothing_lambda": None, "keep_position": True}
    yield _train(tmp_path_factory.mktemp("chat_eval_si"), tokenizer, 80, cot_removal=removal)
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def trained_with_cot(tmp_path_factory, tokenizer):
    """Plain SFT on the same rows: the model learns reasoning, `</think>` and the answer."""
    threads = torch.get_num_threads()
    yield _train(tmp_path_factory.mktemp("chat_eval_cot"), tokenizer, 120)
    torch.set_num_threads(threads)


def _eval(args: list, max_new: str = MAX_NEW) -> int:
    return main(["eval", *map(str, args), "--no-progress", "--max-new-tokens", max_new])


def _read(output: Path) -> tuple[list[dict], dict]:
    rows = [json.loads(line) for line in (output / "predictions.jsonl").read_text().splitlines()]
    return rows, json.loads((output / "summary.json").read_text())


def _test_file(root: Path) -> Path:
    # The trained conversations, in three spellings, and one whose gold answer is not the trained one.
    rows = [_row(0), _row(1, inline=True), _row(2, reasoning=False), _row(3), _row(4, answer="6")]
    path = root / "test.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def test_eval_no_cot_on_chat_data(trained, tokenizer, tmp_path, capsys):
    data, output = _test_file(trained["root"]), tmp_path / "no_cot"
    assert _eval(["--config", trained["config"], "--data", data, "--no-cot", "--output", output]) == 0
    out = capsys.readouterr().out
    rows, summary = _read(output)
    assert summary["format"] == "chat" and summary["no_cot"] is True and summary["chat_template"] == "qwen3"
    assert summary["model"] == str(trained["out"])
    assert summary["keep_position"] is True  # from the YAML: positions numbered as training kept them
    strat = _settings("qwen3").strategy(tokenizer)
    golds = ANSWERS[:4] + ["6"]
    for i, row in enumerate(rows):
        assert row["gold"] == golds[i]
        assert row["prompt"] == tokenizer.decode(strat.prompt_ids(_row(i), no_cot=True))
        assert row["prompt"].endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
        # stopped at the template's end of turn, not run on to the tokenizer's EOS
        assert row["finished"] is True and "<|im_end|>" not in row["generation"]
        assert (row["extracted"], row["correct"]) == scoring.score_generation(
            row["generation"], row["gold"], "chat", True
        )
    # memorised (at least 3 of the 4 trained answers right; with the official keep_position numbering
    # this tiny run gets 3/4); the altered gold answer is scored wrong
    assert sum(row["correct"] for row in rows[:4]) >= 3, rows
    assert rows[4]["extracted"] == "5" and rows[4]["correct"] is False
    assert summary["correct"] + summary["wrong"] == 5 and (summary["no_answer"], summary["unfinished"]) == (0, 0)
    assert f"accuracy {summary['correct'] / 5:.4f} ({summary['correct']}/5)" in out and "[chat, no CoT" in out


def test_eval_no_cot_without_keep_position_numbers_plainly(trained, tmp_path, capsys):
    # the same YAML without `cot_removal.keep_position`: the same prompt tokens, numbered 0..n-1
    import yaml

    cfg = yaml.safe_load(trained["config"].read_text())
    del cfg["cot_removal"]["keep_position"]
    config = tmp_path / "plain.yml"
    config.write_text(yaml.safe_dump(cfg))
    data, kept, plain = _test_file(trained["root"]), tmp_path / "kept", tmp_path / "plain"
    assert _eval(["--config", trained["config"], "--data", data, "--no-cot", "--output", kept]) == 0
    assert _eval(["--config", config, "--data", data, "--no-cot", "--output", plain]) == 0
    assert "shifted by each example's CoT length" in capsys.readouterr().err
    assert _read(kept)[1]["keep_position"] is True and _read(plain)[1]["keep_position"] is False
    assert [row["prompt"] for row in _read(kept)[0]] == [row["prompt"] for row in _read(plain)[0]]
    # the positions it trained at find at least 3 of its 4 answers (the 5th gold answer is altered);
    # with the official numbering (one shift from the token before the CoT on) this tiny model also
    # finds 3 numbered plainly, so the plain score is not asserted (tests/unit/test_removal.py and
    # test_keep_position_numbers_the_prompt_as_training check the numbering itself)
    assert _read(kept)[1]["accuracy"] >= 0.6


def test_eval_with_cot_on_chat_data(trained_with_cot, tokenizer, tmp_path, capsys):
    trained = trained_with_cot
    data, output = _test_file(trained["root"]), tmp_path / "cot"
    assert _eval(["--config", trained["config"], "--data", data, "--output", output], max_new="64") == 0
    out = capsys.readouterr().out
    rows, summary = _read(output)
    assert summary["format"] == "chat" and summary["no_cot"] is False and summary["n"] == 5
    strat = _settings("qwen3").strategy(tokenizer)
    golds = ANSWERS[:4] + ["6"]
    for i, row in enumerate(rows):
        assert row["gold"] == golds[i]
        assert row["prompt"] == tokenizer.decode(strat.prompt_ids(_row(i)))
        assert row["prompt"].endswith("<|im_start|>assistant\n<think>\n")
        # the memorised reasoning, the closing tag, then the answer that is scored
        assert row["generation"] == f"{REASONINGS[i]}\n</think>\n\n{ANSWERS[i]}", row
        assert row["finished"] is True and row["extracted"] == ANSWERS[i]
        assert (row["extracted"], row["correct"]) == scoring.score_generation(row["generation"], row["gold"], "chat")
    assert [row["correct"] for row in rows] == [True, True, True, True, False]
    assert (summary["correct"], summary["wrong"], summary["no_answer"], summary["unfinished"]) == (4, 1, 0, 0)
    assert "accuracy 0.8000 (4/5)" in out and "[chat, CoT" in out
    # the same model asked for no CoT answers from the empty think block it never trained on
    assert _eval(["--config", trained["config"], "--data", data, "--output", tmp_path / "nc", "--no-cot"]) == 0
    assert all(row["prompt"].endswith("<think>\n\n</think>\n\n") for row in _read(tmp_path / "nc")[0])


def test_eval_refuses_bad_chat_rows_before_loading_a_model(tmp_path, capsys):
    cases = {
        "no assistant turn": {"messages": [{"role": "user", "content": "hi"}]},
        "ends with a user message": {
            "messages": [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "hello"},
                {"role": "user", "content": "and?"},
            ]
        },
        "has no answer": {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": ""}]},
        "unknown role": {"messages": [{"role": "robot", "content": "hi"}]},
    }
    for expected, bad in cases.items():
        path = tmp_path / "bad.jsonl"
        path.write_text(json.dumps(_row(0)) + "\n" + json.dumps(bad) + "\n", encoding="utf-8")
        # no model directory exists: the data is refused first
        assert _eval([tmp_path / "no_model", "--data", path, "--format", "chat"]) == 2
        err = capsys.readouterr().err
        assert f"{path}: row 2:" in err and expected.split()[-1] in err, err


def test_score_reads_chat_answers_after_the_think_block(tmp_path, capsys):
    data = tmp_path / "test.jsonl"
    data.write_text("".join(json.dumps(_row(i)) + "\n" for i in (0, 1, 2)), encoding="utf-8")
    generations = tmp_path / "gens.jsonl"
    written = [
        "So 42.\n</think>\n\n42",  # right
        "It makes 11.\n</think>\n\n 11.0 ",  # right as a number
        "7 plus 8 is 15, so the answer is 15.",  # no closing tag: no answer
    ]
    generations.write_text("".join(json.dumps({"generation": g}) + "\n" for g in written), encoding="utf-8")
    output = tmp_path / "scored"
    assert main(["score", "--data", str(data), "--predictions", str(generations), "--output", str(output)]) == 0
    rows, summary = _read(output)
    assert [row["correct"] for row in rows] == [True, True, False]
    assert [row["extracted"] for row in rows] == ["42", "11.0", None]
    assert (summary["format"], summary["correct"], summary["no_answer"], summary["wrong"]) == ("chat", 2, 1, 0)
    assert "no closing think tag" in capsys.readouterr().out
