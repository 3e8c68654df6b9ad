"""A model trained with `cot_removal.keep_position` answers no-CoT prompts through `eval --no-cot
--keep-position` and the in-training accuracy callback as well as on its own training layout (issue 16,
item 2).

A tiny GPT-2 (learned absolute positions) is trained through the engine with the whole CoT removed
and positions kept, on 48 2x2 multiplications, until it answers them. The reference decoder greedily
extends the exact training layout: the rows as ``ops.removal.remove_cot`` leaves them, with its
position ids and an attention mask. The package's three entry points must give the same answers.

Why the earlier `keep_position` arm scored 0.000 (bench/RESULTS.md section 6): `bench/si_sweep.py`'s
decoder calls the model with ``position_ids`` and no ``attention_mask``, right after the HF Trainer
trained it. transformers 5 (``masking_utils._preprocess_mask_arguments``) then infers packed sequences
from the position ids whenever there is no attention mask and no cache, and the Trainer leaves
``model.config.use_cache = args.use_cache`` (False), so there is no cache: every jump in the position
ids starts "another sequence". The kept positions jump over the removed CoT, so the answer could not
attend to the question. (The issue's probe decodes the same way but its model never went through the
Trainer: use_cache stays True, a cache exists, and the inference is skipped.) The package's generation
always passes an attention mask. The last test shows the effect on the same model.
"""

from __future__ import annotations

import pytest
import torch

from axolotl_maskthought.data.formats import parse_icot_line, tokenize_icot
from axolotl_maskthought.data.generators import generate_multiplication
from axolotl_maskthought.eval.evaluation import evaluate_model
from axolotl_maskthought.ops.removal import remove_cot
from axolotl_maskthought.toy.tiny import build_model

LINES = list(dict.fromkeys(generate_multiplication(2, 2, 200, seed=3)))[:48]
EXAMPLES = [parse_icot_line(line) for line in LINES]


def word_tokenizer():
    """One token per digit and sign, as the official ICoT runs."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<pad>", "</s>", "<unk>"] + [str(d) for d in range(10)] + ["*", "+", "(", ")", "####"]
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from datasets import Dataset
    from transformers import DataCollatorForSeq2Seq, TrainingArguments

    from axolotl_maskthought.adapters.transformers import MaskThoughtTrainer

    tokenizer = word_tokenizer()
    rows = [tokenize_icot(tokenizer, example) for example in EXAMPLES]
    model = build_model(tokenizer, "gpt2", hidden=64, layers=2, heads=4, max_positions=128, seed=0)
    out = tmp_path_factory.mktemp("keep")
    args = TrainingArguments(
        output_dir=str(out / "run"),
        per_device_train_batch_size=16,
        max_steps=400,
        learning_rate=3e-3,
        lr_scheduler_type="constant",
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
    )
    trainer = MaskThoughtTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True),
        # the end state of Stepwise Internalization: the whole CoT gone, positions kept
        cot_removal={"remove_all_at": 0, "keep_position": True, "smoothing_lambda": None, "reset_optimizer": False},
    )
    trainer.train()
    assert trainer.applied_counts[399] != 0
    return trainer, model, tokenizer, rows, out


def training_layout_answers(model, tokenizer, rows, attention_mask: bool = True) -> list[list[int]]:
    """Greedy answers on the exact training layout: each row with its CoT removed by ``remove_cot``
    (keep_position), cut after the second EOS, extended one position id at a time."""
    answers = []
    model.eval()
    with torch.no_grad():
        for row in rows:
            batch = {key: torch.tensor([row[key]]) for key in ("input_ids", "labels", "attention_mask")}
            removed = remove_cot(batch, torch.tensor([row["cot_mask"]]).bool(), scheduled=10_000, keep_position=True)
            ids, positions = removed.batch["input_ids"], removed.batch["position_ids"]
            second_eos = row["cot_mask"].index(1)  # the first index after the removed span
            ids, positions = ids[:, : second_eos + 1], positions[:, : second_eos + 1]
            generated = []
            while len(generated) < 12 and (not generated or generated[-1] != tokenizer.eos_token_id):
                extra = {"attention_mask": torch.ones_like(ids)} if attention_mask else {}
                token = model(input_ids=ids, position_ids=positions, **extra).logits[0, -1].argmax()
                generated.append(int(token))
                ids = torch.cat([ids, token.view(1, 1)], dim=1)
                positions = torch.cat([positions, positions[:, -1:] + 1], dim=1)
            answers.append(generated)
    return answers


def _answer_text(tokenizer, ids: list[int]) -> str:
    return tokenizer.decode(ids, skip_special_tokens=True).split("####", 1)[-1].strip()


def test_eval_answers_as_on_the_training_layout(trained):
    trainer, model, tokenizer, rows, _ = trained
    reference = [_answer_text(tokenizer, ids) for ids in training_layout_answers(model, tokenizer, rows)]
    reference_accuracy = sum(text == e.answer for text, e in zip(reference, EXAMPLES)) / len(EXAMPLES)
    assert reference_accuracy >= 0.9  # the model answers on its own layout
    result = evaluate_model(model, tokenizer, EXAMPLES, "icot", no_cot=True, keep_position=True, progress=False)
    assert [row["extracted"] for row in result["predictions"]] == reference
    assert result["accuracy"] == reference_accuracy
    # and it is the positions that matter: numbered 0, 1, 2, ... the same model fails
    plain = evaluate_model(model, tokenizer, EXAMPLES, "icot", no_cot=True, keep_position=False, progress=False)
    assert plain["accuracy"] <= reference_accuracy - 0.5


def test_cli_and_callback_answer_as_on_the_training_layout(trained, capsys):
    from datasets import Dataset

    from axolotl_maskthought.cli import main
    from axolotl_maskthought.data.files import write_lines
    from axolotl_maskthought.eval.callback import AnswerAccuracyCallback

    trainer, model, tokenizer, rows, out = trained
    reference = [_answer_text(tokenizer, ids) for ids in training_layout_answers(model, tokenizer, rows)]
    accuracy = sum(text == e.answer for text, e in zip(reference, EXAMPLES)) / len(EXAMPLES)
    model.save_pretrained(out / "model")
    tokenizer.save_pretrained(out / "model")
    write_lines(out / "test.txt", LINES)
    args = ["eval", str(out / "model"), "--data", str(out / "test.txt"), "--no-cot", "--no-progress"]
    assert main([*args, "--keep-position"]) == 0
    assert f"accuracy {accuracy:.4f}" in capsys.readouterr().out
    # the callback as training runs it: its accuracies are evaluation metrics of the engine's trainer
    AnswerAccuracyCallback(trainer, EXAMPLES, "icot", None, keep_position=True)
    metrics = trainer.evaluate(Dataset.from_list(rows))
    assert metrics["eval_accuracy_no_cot"] == accuracy


def test_a_decoder_without_attention_mask_loses_the_question(trained):
    """bench/si_sweep.py's `no_cot_accuracy` passed position ids and no attention mask: transformers then
    splits the row at the kept positions' jump (a "packed" second sequence) and the answer cannot see
    the question. Same model, same positions, only the mask differs."""
    trainer, model, tokenizer, rows, _ = trained
    assert model.config.use_cache is False  # what the Trainer leaves: no cache, so no escape from the inference
    with_mask = training_layout_answers(model, tokenizer, rows)
    without = training_layout_answers(model, tokenizer, rows, attention_mask=False)
    right = lambda answers: sum(_answer_text(tokenizer, a) == e.answer for a, e in zip(answers, EXAMPLES))  # noqa: E731
    assert right(with_mask) >= 0.9 * len(EXAMPLES) and right(without) <= 0.1 * len(EXAMPLES)
