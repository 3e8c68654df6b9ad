"""The engine through plain ``transformers.Trainer`` and TRL's ``SFTTrainer`` (no axolotl), end to end on CPU.

Rows are GSM8K solutions tokenized with ``formats.tokenize_cot``; a forward pre-hook
records exactly what the model receives, and each row is matched back to its source
by its prompt tokens, so every assertion compares against the untouched row.
"""

from __future__ import annotations

import math

import pytest
import torch

from axolotl_maskthought.config import PROMPT_TEMPLATES
from axolotl_maskthought.data.files import read_jsonl
from axolotl_maskthought.data.formats import IGNORE_INDEX, parse_gsm8k_row, tokenize_cot
from axolotl_maskthought.ops.schedule import REMOVE_ALL, optimizer_step_count
from axolotl_maskthought.toy.tiny import build_model, build_tokenizer

ROWS = 24
BATCH = 4  # 6 micro-batches per epoch


@pytest.fixture(scope="module")
def gsm8k(shared_data):
    examples = [parse_gsm8k_row(row) for row in read_jsonl(shared_data / "gsm8k" / "train.jsonl")[:ROWS]]
    template = PROMPT_TEMPLATES["plain"]
    texts = [template.format(question=e.question) + e.cot + e.answer for e in examples]
    tokenizer = build_tokenizer(texts, vocab_size=400)
    rows = [tokenize_cot(tokenizer, template.format(question=e.question), e.cot, f"#### {e.answer}") for e in examples]
    return tokenizer, rows


def _prompt_len(row) -> int:
    return next(i for i, label in enumerate(row["labels"]) if label != IGNORE_INDEX)


def _by_prompt(rows) -> dict:
    return {tuple(row["input_ids"][: _prompt_len(row)]): row for row in rows}


def _train(
    trainer_cls,
    tokenizer,
    rows,
    tmp_path,
    *,
    steps=None,
    epochs=3,
    seed=0,
    model=None,
    resume=None,
    save_steps=None,
    config_cls=None,
    extra_args=None,
    **techniques,
):
    """Train a tiny Llama; returns (trainer, training forwards, Adam step count after each optimizer step)."""
    from datasets import Dataset
    from transformers import DataCollatorForSeq2Seq, TrainerCallback, TrainingArguments

    model = model or build_model(tokenizer, "llama", hidden=32, layers=1, heads=2, seed=seed)
    forwards: list[dict] = []

    def record(module, args, kwargs):
        if module.training:
            forwards.append(
                {
                    key: kwargs[key].detach().cpu().clone()
                    for key in ("input_ids", "labels")
                    if kwargs.get(key) is not None
                }
            )

    model.register_forward_pre_hook(record, with_kwargs=True)
    adam_steps: list[int] = []

    class AdamStep(TrainerCallback):
        def on_step_end(self, args, state, control, optimizer=None, **kwargs):
            inner = getattr(optimizer, "optimizer", optimizer)
            first = next(p for group in inner.param_groups for p in group["params"])
            adam_steps.append(int(inner.state[first]["step"]))

    settings = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=BATCH,
        learning_rate=1e-3,
        logging_steps=1,
        report_to=[],
        seed=seed,
        use_cpu=True,
        dataloader_num_workers=0,
        save_strategy="steps" if save_steps else "no",
        save_steps=save_steps or 500,
        **(extra_args or {}),
    )
    if steps is not None:
        settings["max_steps"] = steps
    else:
        settings["num_train_epochs"] = epochs
    args = (config_cls or TrainingArguments)(**settings)
    trainer = trainer_cls(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True),
        callbacks=[AdamStep()],
        **techniques,
    )
    trainer.train(resume_from_checkpoint=resume)
    return trainer, forwards, adam_steps


def _check_removal(forwards, rows, trainer, tokenizer, accumulation=1):
    """Every trained row is its source with the first `count in force` CoT tokens cut out."""
    sources = _by_prompt(rows)
    checked = 0
    for index, forward in enumerate(forwards):
        step = index // accumulation
        count = trainer.applied_counts[step]
        for input_ids, labels in zip(forward["input_ids"].tolist(), forward["labels"].tolist()):
            row = next(sources[key] for key in sources if tuple(input_ids[: len(key)]) == key)
            prompt = _prompt_len(row)
            cot_len = sum(row["cot_mask"])
            cut = cot_len if count == REMOVE_ALL else min(count, cot_len)
            expected = row["input_ids"][:prompt] + row["input_ids"][prompt + cut :]
            assert input_ids[: len(expected)] == expected
            assert all(token == tokenizer.pad_token_id for token in input_ids[len(expected) :])
            assert labels[: len(expected)] == [IGNORE_INDEX] * prompt + expected[prompt:]
            checked += 1
    assert checked == len(forwards) * BATCH


def _expected_adam_steps(counts: list[int]) -> list[int]:
    steps, since = [], 0
    for step, count in enumerate(counts):
        since = 1 if step > 0 and count > counts[step - 1] else since + 1
        steps.append(since)
    return steps


def test_plain_trainer_follows_schedule_and_resets(gsm8k, tmp_path):
    from axolotl_maskthought.adapters.transformers import MaskThoughtTrainer

    tokenizer, rows = gsm8k
    removal = {"tokens_per_epoch": 2, "smoothing_lambda": None}
    trainer, forwards, adam = _train(MaskThoughtTrainer, tokenizer, rows, tmp_path, cot_removal=removal)
    # 5 tokens removed by the last step, of CoTs of 70+: the start-of-training report says so.
    from axolotl_maskthought.engine.cot_lengths import CoTLengthReportCallback

    report = next(c for c in trainer.callback_handler.callbacks if isinstance(c, CoTLengthReportCallback)).report
    assert report.final_count == 5 and report.with_cot_left == ROWS and report.fixes
    assert trainer.micro_batches_per_epoch == ROWS // BATCH
    counts = [trainer.applied_counts[step] for step in range(len(forwards))]
    assert counts == [optimizer_step_count(s, 1, ROWS // BATCH, 2) for s in range(3 * ROWS // BATCH)]
    assert counts[-1] == 5  # one more token every 3 micro-batches, 18 micro-batches
    _check_removal(forwards, rows, trainer, tokenizer)
    assert adam == _expected_adam_steps(counts)
    logged = [entry["cot_removal/scheduled"] for entry in trainer.state.log_history if "cot_removal/scheduled" in entry]
    assert logged == [float(c) for c in counts]


def test_plain_trainer_resume_restores_counts_and_state(gsm8k, tmp_path):
    from axolotl_maskthought.adapters.transformers import MaskThoughtTrainer

    tokenizer, rows = gsm8k
    removal = {"tokens_per_epoch": 3, "smoothing_lambda": None}
    full, _, full_adam = _train(
        MaskThoughtTrainer, tokenizer, rows, tmp_path / "a", epochs=2, save_steps=5, cot_removal=removal
    )
    resumed, _, resumed_adam = _train(
        MaskThoughtTrainer,
        tokenizer,
        rows,
        tmp_path / "b",
        epochs=2,
        resume=str(tmp_path / "a" / "out" / "checkpoint-5"),
        cot_removal=removal,
    )
    assert {s: full.applied_counts[s] for s in range(5, 12)} == resumed.applied_counts
    assert resumed_adam == full_adam[5:]


def test_plain_trainer_masked_thought(gsm8k, tmp_path):
    from axolotl_maskthought.adapters.transformers import MaskThoughtTrainer

    tokenizer, rows = gsm8k
    trainer, forwards, _ = _train(
        MaskThoughtTrainer, tokenizer, rows, tmp_path, epochs=2, masked_thought={"ratio": 0.5, "warmup": 0.0}
    )
    sources = _by_prompt(rows)
    changed = eligible = 0
    for forward in forwards:
        for input_ids, labels in zip(forward["input_ids"].tolist(), forward["labels"].tolist()):
            key = next(k for k in sources if tuple(input_ids[: len(k)]) == k)
            row = sources[key]
            length = len(row["input_ids"])
            assert labels[:length] == row["labels"]  # labels untouched, prompt included
            response = range(_prompt_len(row), length)
            changed += sum(input_ids[i] != row["input_ids"][i] for i in response)
            eligible += len(response)
            assert all(input_ids[i] < tokenizer.vocab_size for i in response)
    assert abs(changed / eligible - 0.5 * (1 - 1 / tokenizer.vocab_size)) < 0.03
    fractions = [
        e["masked_thought/masked_fraction"] for e in trainer.state.log_history if "masked_thought/masked_fraction" in e
    ]
    assert len(fractions) == len(forwards) and all(0.35 < f < 0.65 for f in fractions)


def test_random_replacement_never_draws_added_tokens(gsm8k, tmp_path):
    """Official Masked Thought draws from [0, tokenizer.vocab_size): never pad, <mask>, template markers."""
    from axolotl_maskthought.adapters.transformers import MaskThoughtTrainer

    tokenizer, rows = gsm8k
    tokenizer = tokenizer.__class__.from_pretrained(_saved(tokenizer, tmp_path))
    added = [f"<|marker_{i}|>" for i in range(26)]
    tokenizer.add_special_tokens({"additional_special_tokens": added})
    assert len(tokenizer) == tokenizer.vocab_size + 26
    model = build_model(tokenizer, "llama", hidden=32, layers=1, heads=2)
    _, forwards, _ = _train(
        MaskThoughtTrainer,
        tokenizer,
        rows,
        tmp_path,
        epochs=2,
        model=model,
        masked_thought={"ratio": 1.0, "warmup": 0.0},
    )
    drawn = torch.cat([f["input_ids"][f["labels"] != IGNORE_INDEX] for f in forwards])
    assert drawn.max() < tokenizer.vocab_size
    assert drawn.unique().numel() > 0.9 * tokenizer.vocab_size  # spread over the whole base vocabulary


def _saved(tokenizer, tmp_path):
    folder = tmp_path / "tokenizer"
    tokenizer.save_pretrained(folder)
    return folder


def test_eval_loss_is_normalised_by_the_labels_the_model_saw(gsm8k, tmp_path):
    """transformers counts `num_items_in_batch` in prediction_step; removal must come first."""
    from transformers import DataCollatorForSeq2Seq

    from axolotl_maskthought.adapters.transformers import MaskThoughtTrainer

    tokenizer, rows = gsm8k
    train_rows, eval_rows = rows[:16], rows[16:]
    trainer, _, _ = _train(
        MaskThoughtTrainer,
        tokenizer,
        train_rows,
        tmp_path,
        steps=6,
        extra_args={"per_device_eval_batch_size": len(eval_rows)},
        cot_removal={"remove_all_at": 2, "smoothing_lambda": None, "tokens_per_epoch": 8},
    )
    assert trainer.model_accepts_loss_kwargs and trainer.count_in_force == REMOVE_ALL
    from datasets import Dataset

    metrics = trainer.evaluate(Dataset.from_list(eval_rows))
    # Reference: each eval row without its CoT, token mean of the cross-entropy over its labels.
    trimmed = []
    for row in eval_rows:
        keep = [i for i, c in enumerate(row["cot_mask"]) if not c]
        trimmed.append({key: [row[key][i] for i in keep] for key in ("input_ids", "attention_mask", "labels")})
    batch = DataCollatorForSeq2Seq(tokenizer, padding=True)(trimmed)
    model = trainer.model.eval()
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    shifted = batch["labels"][:, 1:]
    losses = torch.nn.functional.cross_entropy(
        logits[:, :-1].flatten(0, 1).float(), shifted.flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
    )
    expected = losses.item() / (shifted != IGNORE_INDEX).sum().item()
    assert math.isclose(metrics["eval_loss"], expected, rel_tol=1e-4)


def test_trl_sft_trainer(gsm8k, tmp_path):
    from trl import SFTConfig, SFTTrainer

    from axolotl_maskthought.adapters.transformers import with_maskthought

    tokenizer, rows = gsm8k
    trainer_cls = with_maskthought(SFTTrainer)
    assert issubclass(trainer_cls, SFTTrainer) and with_maskthought(trainer_cls) is trainer_cls
    removal = {"tokens_per_epoch": 2, "smoothing_lambda": None}
    trainer, forwards, adam = _train(
        trainer_cls,
        tokenizer,
        rows,
        tmp_path,
        config_cls=SFTConfig,
        extra_args={"max_length": None},
        cot_removal=removal,
        masked_thought={"ratio": 0.3, "warmup": 0.0, "scope": "reasoning"},
    )
    counts = [trainer.applied_counts[step] for step in range(len(forwards))]
    assert counts == [optimizer_step_count(s, 1, ROWS // BATCH, 2) for s in range(3 * ROWS // BATCH)]
    assert adam == _expected_adam_steps(counts)
    fractions = [
        e["masked_thought/masked_fraction"] for e in trainer.state.log_history if "masked_thought/masked_fraction" in e
    ]
    assert len(fractions) == len(forwards) and 0.2 < sum(fractions) / len(fractions) < 0.4


def test_with_maskthought_refuses_non_trainers():
    from axolotl_maskthought.adapters.transformers import with_maskthought

    with pytest.raises(TypeError, match="transformers.Trainer subclass"):
        with_maskthought(dict)


def test_collator_refuses_a_cot_mask_out_of_step_with_the_tokens(gsm8k):
    from transformers import DataCollatorForSeq2Seq

    from axolotl_maskthought.engine.collator import CoTSpanCollator

    tokenizer, rows = gsm8k
    row = dict(rows[0])
    row["input_ids"] = row["input_ids"][:20]  # truncated without its cot_mask (TRL's max_length does this)
    row["labels"], row["attention_mask"] = row["labels"][:20], row["attention_mask"][:20]
    with pytest.raises(ValueError, match="`cot_mask` has"):
        CoTSpanCollator(DataCollatorForSeq2Seq(tokenizer, padding=True))([row])


def test_same_rows_and_schedule_as_through_axolotl(gsm8k, shared_data, tmp_path):
    """The same GSM8K rows through axolotl's gsm8k strategy and through `tokenize_cot`: identical
    token rows, and the same schedule, counts and resets (axolotl shuffles its prepared data, so
    batches differ: what each trained row holds is checked separately in both suites)."""
    from axolotl_run import gsm8k_dataset, run_in_process, write_config, write_jsonl

    from axolotl_maskthought.adapters.transformers import MaskThoughtTrainer

    tokenizer, rows = gsm8k
    model_dir = tmp_path / "model"
    tokenizer.save_pretrained(model_dir)
    build_model(tokenizer, "llama", hidden=32, layers=1, heads=2).save_pretrained(model_dir)
    data = write_jsonl(tmp_path / "gsm8k.jsonl", read_jsonl(shared_data / "gsm8k" / "train.jsonl")[:ROWS])
    removal = {"tokens_per_epoch": 2, "smoothing_lambda": None}
    config = write_config(
        tmp_path / "run.yml",
        base_model=model_dir,
        datasets=[gsm8k_dataset(data)],
        output_dir=tmp_path / "axolotl",
        micro_batch_size=BATCH,
        num_epochs=3,
        max_steps=None,
        sequence_len=2048,
        cot_format={"prompt_template": "plain"},
        cot_removal=removal,
    )
    through_axolotl = run_in_process(config).trainer
    key = lambda row: tuple(row["input_ids"])  # noqa: E731
    axolotl_rows = sorted(
        ({k: list(row[k]) for k in ("input_ids", "labels", "cot_mask")} for row in through_axolotl.train_dataset),
        key=key,
    )
    assert axolotl_rows == sorted(({k: row[k] for k in ("input_ids", "labels", "cot_mask")} for row in rows), key=key)

    plain, _, _ = _train(MaskThoughtTrainer, tokenizer, rows, tmp_path / "plain", cot_removal=removal)
    assert plain.micro_batches_per_epoch == through_axolotl.micro_batches_per_epoch
    assert plain.applied_counts == through_axolotl.applied_counts

    def resets(trainer):
        return [e["step"] for e in trainer.state.log_history if e.get("cot_removal/optimizer_reset")]

    assert resets(plain) == resets(through_axolotl) and len(resets(plain)) == 5


# ---- paces in optimizer steps (issue 16, item 3) ----------------------------------------------------
def test_plain_trainer_steps_per_token_from_start_step(gsm8k, tmp_path):
    from axolotl_maskthought.adapters.transformers import MaskThoughtTrainer
    from axolotl_maskthought.ops.schedule import step_pace_count

    tokenizer, rows = gsm8k
    removal = {"steps_per_token": 2, "start_step": 3, "smoothing_lambda": None}
    trainer, forwards, adam = _train(MaskThoughtTrainer, tokenizer, rows, tmp_path, cot_removal=removal)
    counts = [trainer.applied_counts[step] for step in range(len(forwards))]
    assert counts == [step_pace_count(s, 2, 3) for s in range(18)]
    assert counts[:6] == [0, 0, 0, 0, 0, 1] and counts[-1] == 7
    _check_removal(forwards, rows, trainer, tokenizer)
    assert adam == _expected_adam_steps(counts)
    logged = {
        e["step"] - 1: e["cot_removal/scheduled"] for e in trainer.state.log_history if "cot_removal/scheduled" in e
    }
    assert logged == {s: float(counts[s]) for s in range(3, 18)}  # from the start step, as with start_epoch


# beta 0: the level is the last step's loss, so the batches' spread alone makes the gate wait sometimes
GATE = {"loss_gate": {"min_steps": 2, "max_steps": 5, "recovery": 1.0, "ema_beta": 0.0}, "smoothing_lambda": None}


def _gate_trainer_cls():
    from axolotl_maskthought.adapters.transformers import MaskThoughtTrainer

    class LossRecorder(MaskThoughtTrainer):
        """Records each optimizer step's training loss as the Trainer sums it (the logged `loss`)."""

        def training_step(self, model, inputs, *args, **kwargs):
            loss = super().training_step(model, inputs, *args, **kwargs)
            self.__dict__.setdefault("step_losses", {}).setdefault(self.state.global_step, 0.0)
            self.step_losses[self.state.global_step] += float(loss)
            return loss

    return LossRecorder


def _replay_gate(step_losses: dict, steps: range, gate: dict, state=None):
    """The gate's counts from the ops functions alone, fed the recorded losses."""
    from axolotl_maskthought.ops.schedule import LossGateState, gate_advance, gate_observe, gate_opens

    state = state or LossGateState()
    counts = {}
    for step in steps:
        if step - 1 in step_losses:
            state = gate_observe(state, step_losses[step - 1], gate["ema_beta"])
        if gate_opens(state, step, gate["min_steps"], gate["max_steps"], gate["recovery"]):
            state = gate_advance(state, step)
        counts[step] = state.count
    return counts


def test_plain_trainer_loss_gate_decides_on_the_training_loss(gsm8k, tmp_path):
    tokenizer, rows = gsm8k
    trainer, forwards, adam = _train(_gate_trainer_cls(), tokenizer, rows, tmp_path, epochs=4, cot_removal=GATE)
    steps = range(len(forwards))
    counts = [trainer.applied_counts[step] for step in steps]
    assert counts == list(_replay_gate(trainer.step_losses, steps, GATE["loss_gate"]).values())
    changes = [s for s in steps if s and counts[s] > counts[s - 1]]
    gaps = [b - a for a, b in zip(changes, changes[1:])]
    assert changes[0] == 2 and all(2 <= gap <= 5 for gap in gaps)
    assert len(set(gaps)) > 1  # the loss, not a fixed pace, decided
    _check_removal(forwards, rows, trainer, tokenizer)
    assert adam == _expected_adam_steps(counts)
    # logged each step: the count, and the averaged loss the gate decided on (the Trainer's own loss)
    logs = {entry["step"] - 1: entry for entry in trainer.state.log_history if "loss" in entry}
    assert [logs[s]["cot_removal/scheduled"] for s in steps] == [float(c) for c in counts]
    first = trainer.step_losses[0]
    assert logs[0]["loss"] == pytest.approx(first, abs=1e-3)
    assert logs[1]["cot_removal/gate_loss"] == pytest.approx(first, abs=1e-4)  # step 1 decided on step 0's loss
    assert "cot_removal/gate_threshold" in logs[changes[0] + 1]


def test_plain_trainer_loss_gate_resumes_exactly(gsm8k, tmp_path):
    import json

    tokenizer, rows = gsm8k
    cls = _gate_trainer_cls()
    full, _, full_adam = _train(cls, tokenizer, rows, tmp_path / "a", epochs=3, save_steps=7, cot_removal=GATE)
    checkpoint = tmp_path / "a" / "out" / "checkpoint-7"
    saved = json.loads((checkpoint / "maskthought_state.json").read_text())
    assert saved["loss_gate"]["count"] == full.applied_counts[6]
    resumed, _, resumed_adam = _train(
        cls, tokenizer, rows, tmp_path / "b", epochs=3, resume=str(checkpoint), cot_removal=GATE
    )
    assert resumed.applied_counts == {s: full.applied_counts[s] for s in range(7, 18)}
    assert resumed_adam == full_adam[7:]
    assert resumed.step_losses == pytest.approx({s: full.step_losses[s] for s in range(7, 18)}, abs=1e-6)
