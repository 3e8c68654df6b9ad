"""Every metric we log at evaluation is a first-class evaluation metric (issue 15, kind 3).

``eval_accuracy_cot`` / ``eval_accuracy_no_cot`` (the answer-accuracy callback) must work
wherever transformers and axolotl use evaluation metrics: ``metric_for_best_model`` with
``load_best_model_at_end`` (the best checkpoint is the one with the best value),
``early_stopping_patience`` (EarlyStoppingCallback), and the dict ``trainer.evaluate()``
returns. Through ``axolotl train`` (in process, tiny Llama, 3x3 multiplication in the
ICoT format) and through the plain-transformers adapter.
"""

from __future__ import annotations

import pytest
from axolotl_run import (
    CAPTURE_PLUGIN,
    MASKTHOUGHT_PLUGIN,
    build_base_model,
    run_in_process,
    save_prepared_in_process,
    write_config,
)

from axolotl_maskthought.data.files import write_lines
from axolotl_maskthought.data.formats import parse_icot_line, tokenize_icot
from axolotl_maskthought.data.generators import generate_multiplication
from axolotl_maskthought.toy.tiny import build_model, build_tokenizer

ICOT = "axolotl_maskthought.strategies.icot"
ACCURACY = ("eval_accuracy_cot", "eval_accuracy_no_cot")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    from axolotl.utils.data import sft

    root = tmp_path_factory.mktemp("eval_metrics")
    lines = list(dict.fromkeys(generate_multiplication(2, 2, 60, seed=11)))[:40]
    write_lines(root / "m.txt", lines)
    base = build_base_model(root / "model", lines, vocab_size=256, hidden=32, layers=1, heads=2)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sft, "save_preprocessed_dataset", save_prepared_in_process)
        yield root, base, lines


def _axolotl_run(workspace, name, **extra):
    root, base, _ = workspace
    config = write_config(
        root / f"{name}.yml",
        base_model=base,
        datasets=[{"path": str(root / "m.txt"), "type": ICOT}],
        output_dir=root / name,
        plugins=[MASKTHOUGHT_PLUGIN, CAPTURE_PLUGIN],
        val_set_size=0.2,
        eval_strategy="steps",
        cot_removal={"tokens_per_epoch": 4},
        cot_format={"eval_accuracy_samples": 4},
        **extra,
    )
    return run_in_process(config)


def _evaluations(run) -> list[dict]:
    return [entry for entry in run.log_history if "eval_loss" in entry]


def test_best_checkpoint_by_accuracy_without_cot(workspace):
    # The case: it died at the first save with KeyError 'eval_accuracy_no_cot'.
    run = _axolotl_run(
        workspace,
        "best",
        max_steps=6,
        eval_steps=3,
        save_strategy="steps",
        save_steps=3,
        metric_for_best_model="eval_accuracy_no_cot",
        load_best_model_at_end=True,
    )
    trainer = run.trainer
    out = workspace[0] / "best"
    assert (out / "checkpoint-3").is_dir() and (out / "checkpoint-6").is_dir()
    evaluations = _evaluations(run)
    assert {3, 6} <= {entry["step"] for entry in evaluations}  # axolotl also evaluates at step 0
    for entry in evaluations:  # logged in the same entry as eval_loss
        assert all(0 <= entry[key] <= 1 for key in ACCURACY), entry
    # the best checkpoint is the first evaluation with the highest accuracy (ties keep the earlier)
    scored = [(entry["eval_accuracy_no_cot"], -entry["step"]) for entry in evaluations if entry["step"] in (3, 6)]
    best_value, best_step = max(scored)
    assert trainer.args.greater_is_better is True
    assert trainer.state.best_metric == best_value
    assert trainer.state.best_model_checkpoint == str(out / f"checkpoint-{-best_step}")

    # trainer.evaluate() returns the accuracies with eval_loss
    metrics = trainer.evaluate()
    assert {"eval_loss", *ACCURACY} <= set(metrics)


def test_early_stopping_on_accuracy(workspace):
    # A tiny model's accuracy stays flat, so patience 1 stops at the second evaluation
    # (eval_loss keeps falling: stopping there shows the accuracy was the metric used).
    run = _axolotl_run(
        workspace,
        "early",
        max_steps=12,
        eval_steps=2,
        save_strategy="steps",
        save_steps=2,
        metric_for_best_model="eval_accuracy_cot",
        load_best_model_at_end=True,
        early_stopping_patience=1,
        learning_rate=1e-5,
    )
    evaluations = _evaluations(run)
    values = [entry["eval_accuracy_cot"] for entry in evaluations]
    assert values[0] >= values[1], "accuracy improved: the run may not stop, pick a smaller learning rate"
    assert run.trainer.state.global_step == 4


# ---- the plain-transformers adapter --------------------------------------------------------
@pytest.fixture(scope="module")
def icot_rows():
    lines = list(dict.fromkeys(generate_multiplication(2, 2, 40, seed=3)))[:24]
    tokenizer = build_tokenizer(lines, vocab_size=200)
    examples = [parse_icot_line(line) for line in lines]
    return tokenizer, examples, [tokenize_icot(tokenizer, example) for example in examples]


def _plain_trainer(icot_rows, tmp_path, callbacks=(), **args):
    from datasets import Dataset
    from transformers import DataCollatorForSeq2Seq, TrainingArguments

    from axolotl_maskthought.adapters.transformers import MaskThoughtTrainer

    tokenizer, _, rows = icot_rows
    model = build_model(tokenizer, "llama", hidden=32, layers=1, heads=2, seed=0)
    arguments = TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        per_device_eval_batch_size=4,
        learning_rate=1e-5,
        logging_steps=1,
        report_to=[],
        use_cpu=True,
        seed=0,
        **args,
    )
    trainer = MaskThoughtTrainer(
        model=model,
        args=arguments,
        train_dataset=Dataset.from_list(rows[:16]),
        eval_dataset=Dataset.from_list(rows[16:]),
        processing_class=tokenizer,
        data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True),
        callbacks=list(callbacks),
        cot_removal={"tokens_per_epoch": 2},
    )
    return trainer


def _accuracy_callback(trainer, icot_rows):
    from axolotl_maskthought.eval.callback import AnswerAccuracyCallback

    _, examples, _ = icot_rows
    return AnswerAccuracyCallback(trainer, examples[16:20], "icot", None, max_new_tokens=24)


def test_plain_trainer_evaluate_returns_accuracy(icot_rows, tmp_path):
    trainer = _plain_trainer(icot_rows, tmp_path)
    trainer.add_callback(_accuracy_callback(trainer, icot_rows))
    metrics = trainer.evaluate()
    assert {"eval_loss", *ACCURACY} <= set(metrics)
    logged = trainer.state.log_history[-1]
    assert {"eval_loss", *ACCURACY} <= set(logged)  # one entry, not a separate one
    assert trainer.evaluate(metric_key_prefix="test").keys() >= {"test_accuracy_cot", "test_accuracy_no_cot"}
    assert not any(key.endswith("accuracy_cot") for key in trainer.predict(trainer.eval_dataset).metrics)


def test_plain_trainer_best_checkpoint_and_early_stopping(icot_rows, tmp_path):
    # A provider whose value rises then falls: the best checkpoint must be the peak's,
    # and patience 2 must stop two evaluations after it.
    from transformers import EarlyStoppingCallback

    trainer = _plain_trainer(
        icot_rows,
        tmp_path,
        callbacks=[EarlyStoppingCallback(early_stopping_patience=2)],
        max_steps=20,
        eval_strategy="steps",
        eval_steps=2,
        save_strategy="steps",
        save_steps=2,
        metric_for_best_model="eval_accuracy_no_cot",
        load_best_model_at_end=True,
    )
    scripted = iter([0.25, 0.75, 0.5, 0.5, 1.0, 1.0])

    def accuracy(model, prefix):
        return {"accuracy_no_cot": next(scripted)}

    trainer.add_evaluation_metrics(accuracy)
    trainer.train()
    assert trainer.state.global_step == 8  # evaluations at 2, 4 (best), 6, 8 (patience 2 spent)
    assert trainer.state.best_metric == 0.75
    assert trainer.state.best_model_checkpoint == str(tmp_path / "checkpoint-4")


def test_plain_trainer_save_strategy_best_on_accuracy(icot_rows, tmp_path):
    # `save_strategy: best` saves only when the metric improves: here at evaluations 1 and 3.
    trainer = _plain_trainer(
        icot_rows,
        tmp_path,
        max_steps=8,
        eval_strategy="steps",
        eval_steps=2,
        save_strategy="best",
        metric_for_best_model="accuracy_cot",
    )
    scripted = iter([0.5, 0.25, 0.75, 0.75])
    trainer.add_evaluation_metrics(lambda model, prefix: {"accuracy_cot": next(scripted)})
    trainer.train()
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-6"]
    assert trainer.state.best_metric == 0.75


def test_plain_trainer_reduce_lr_on_plateau_reads_accuracy(icot_rows, tmp_path):
    # transformers steps ReduceLROnPlateau with metrics[metric_for_best_model] after each evaluation:
    # the accuracy must be there, and the optimizer resets of CoT removal must keep the reduced LR.
    trainer = _plain_trainer(
        icot_rows,
        tmp_path,
        max_steps=8,
        eval_strategy="steps",
        eval_steps=2,
        save_strategy="no",
        metric_for_best_model="eval_accuracy_no_cot",
        lr_scheduler_type="reduce_lr_on_plateau",
        lr_scheduler_kwargs={"mode": "max", "patience": 0, "factor": 0.5, "threshold": 0.0},
    )
    scripted = iter([0.5, 0.25, 0.75, 0.75])  # worse at evaluation 2, not better at 4: two reductions
    trainer.add_evaluation_metrics(lambda model, prefix: {"accuracy_no_cot": next(scripted)})
    trainer.train()
    assert trainer.lr_scheduler.best == 0.75
    assert [group["lr"] for group in trainer.optimizer.param_groups] == pytest.approx(
        [0.25e-5] * len(trainer.optimizer.param_groups)
    )
