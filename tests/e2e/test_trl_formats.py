"""Stepwise Internalization from TRL's own dataset formats (issue 15).

``with_maskthought(SFTTrainer)`` on rows ``SFTTrainer`` tokenizes itself: conversational rows
with ``reasoning_content``, conversational rows with ``<think>…</think>`` in the assistant
content, and prompt/completion rows whose completion holds the block. The CoT span is
derived from the think tags' ids after tokenization; every row the model receives is its
tokenized source with the count in force removed (checked with a forward pre-hook), and
with the whole CoT removed it is the chat template's render of an empty reasoning.
"""

from __future__ import annotations

import pytest
import torch
from chat_tokenizers import qwen_like_tokenizer, template_markup

from axolotl_maskthought.ops.removal import remove_cot
from axolotl_maskthought.ops.schedule import REMOVE_ALL
from axolotl_maskthought.toy.tiny import build_model

ROWS = 12
BATCH = 4  # 3 micro-batches per epoch


def _problem(n: int) -> tuple[str, str, str]:
    a, b = 3 + n, 20 + 2 * n
    return f"What is {a} + {b}?", f"First take {a}. Then add {b}.\nSo {a} plus {b} makes {a + b}.", f"It is {a + b}."


def _rows(kind: str) -> list[dict]:
    rows = []
    for n in range(ROWS):
        question, reasoning, answer = _problem(n)
        if kind == "reasoning_content":
            assistant = {"role": "assistant", "content": answer, "reasoning_content": reasoning}
            rows.append({"messages": [{"role": "user", "content": question}, assistant]})
        elif kind == "think_in_content":
            assistant = {"role": "assistant", "content": f"<think>\n{reasoning}\n</think>\n\n{answer}"}
            rows.append({"messages": [{"role": "user", "content": question}, assistant]})
        else:  # prompt / completion
            rows.append({"prompt": f"Q: {question}\nA: ", "completion": f"<think>\n{reasoning}\n</think>\n\n{answer}"})
    return rows


@pytest.fixture(scope="module")
def qwen3():
    from axolotl.utils.chat_templates.base import _CHAT_TEMPLATES

    template = _CHAT_TEMPLATES["qwen3"]
    corpus = [" ".join(_problem(n)) for n in range(ROWS)] * 20
    tokenizer = qwen_like_tokenizer(corpus, template_markup([template]))
    tokenizer.chat_template = template
    return tokenizer


def _train(tokenizer, rows, tmp_path, **techniques):
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from axolotl_maskthought.adapters.transformers import with_maskthought

    model = build_model(tokenizer, "llama", hidden=32, layers=1, heads=2, seed=0)
    forwards: list[dict] = []

    def record(module, args, kwargs):
        if module.training:
            forwards.append({key: kwargs[key].detach().cpu().clone() for key in ("input_ids", "labels")})

    model.register_forward_pre_hook(record, with_kwargs=True)
    args = SFTConfig(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=BATCH,
        num_train_epochs=3,
        learning_rate=1e-3,
        logging_steps=1,
        report_to=[],
        seed=0,
        use_cpu=True,
        dataloader_num_workers=0,
        save_strategy="no",
        max_length=None,
    )
    trainer = with_maskthought(SFTTrainer)(
        model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer, **techniques
    )
    trainer.train()
    return trainer, forwards


def _removed(row: dict, count: int, pad_id: int) -> tuple[int, ...]:
    batch = {"input_ids": torch.tensor([row["input_ids"]]), "labels": torch.tensor([row["labels"]])}
    return tuple(
        remove_cot(batch, torch.tensor([row["cot_mask"]]), count, pad_token_id=pad_id).batch["input_ids"][0].tolist()
    )


def _check_schedule(trainer, forwards, tokenizer):
    """Every trained row is a tokenized source row with the count in force removed (left, no smoothing)."""
    sources = [dict(row) for row in trainer.train_dataset]
    assert all(sum(1 for code in row["cot_mask"] if code == 1) > 10 for row in sources)
    pad = tokenizer.pad_token_id
    counts = []
    for step, forward in enumerate(forwards):
        count = trainer.applied_counts[step]
        counts.append(count)
        expected = {_removed(row, count, pad) for row in sources}
        for ids in forward["input_ids"].tolist():
            while ids and ids[-1] == pad:
                ids.pop()
            assert tuple(ids) in expected, (step, count, tokenizer.decode(ids))
    return counts


@pytest.mark.parametrize("kind", ["reasoning_content", "think_in_content", "prompt_completion"])
def test_sft_trainer_removes_cot_from_its_own_formats(qwen3, tmp_path, kind):
    trainer, forwards = _train(
        qwen3, _rows(kind), tmp_path, cot_removal={"tokens_per_epoch": 3, "smoothing_lambda": None}
    )
    counts = _check_schedule(trainer, forwards, qwen3)
    assert counts == list(range(len(forwards)))  # one more token every micro-batch
    if kind != "prompt_completion":
        # the reasoning is what the template rendered between the tags
        row = trainer.train_dataset[0]
        reasoning = qwen3.decode([t for t, code in zip(row["input_ids"], row["cot_mask"]) if code == 1])
        # (SFTTrainer tokenizes the whole text: Qwen's '.\n' keeps the template's newline in the CoT)
        assert reasoning in (_problem(0)[1], _problem(0)[1] + "\n")


def test_sft_trainer_whole_cot_removed_is_the_templates_empty_reasoning(qwen3, tmp_path):
    rows = _rows("reasoning_content")
    trainer, forwards = _train(
        qwen3, rows, tmp_path, cot_removal={"tokens_per_epoch": 3, "remove_all_at": 0, "smoothing_lambda": None}
    )
    assert set(trainer.applied_counts.values()) == {REMOVE_ALL}
    expected = set()
    for row in rows:
        messages = [dict(message) for message in row["messages"]]
        messages[-1]["reasoning_content"] = ""
        expected.add(tuple(qwen3.apply_chat_template(messages, tokenize=True, return_dict=False)))
    for forward in forwards:
        for ids in forward["input_ids"].tolist():
            while ids and ids[-1] == qwen3.pad_token_id:
                ids.pop()
            assert tuple(ids) in expected, qwen3.convert_ids_to_tokens(ids)


def test_sft_trainer_masked_thought_on_derived_reasoning(qwen3, tmp_path):
    trainer, forwards = _train(
        qwen3, _rows("prompt_completion"), tmp_path, masked_thought={"ratio": 0.4, "warmup": 0, "scope": "reasoning"}
    )
    fractions = [e["masked_thought/masked_fraction"] for e in trainer.state.log_history if "masked_thought/rate" in e]
    assert len(fractions) == len(forwards) and 0.25 < sum(fractions) / len(fractions) < 0.55


def test_rows_without_think_blocks_are_refused_naming_the_tags(qwen3, tmp_path):
    rows = [{"prompt": "Q: 1 + 1?\nA: ", "completion": "2"}] * 4
    with pytest.raises(ValueError, match=r"no row holds a `<think>…</think>` block"):
        _train(qwen3, rows, tmp_path, cot_removal={"tokens_per_epoch": 3})
