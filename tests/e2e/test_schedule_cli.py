"""`schedule`: the planned mask rate and removal count agree with what the trainer applies.

Two real axolotl runs (in-process, tiny Llama, 3x3 multiplication in the ICoT format)
record per optimizer step the removal count (`trainer.applied_counts`) and the logged
Masked Thought rate (`logging_steps: 1`); the `schedule` plan of the same YAML must
match step for step. The first run also holds rows out (`val_set_size`), stops inside
its last epoch (axolotl's step count) and checks the answer-accuracy callback.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from axolotl_run import (
    CAPTURE_PLUGIN,
    MASKTHOUGHT_PLUGIN,
    build_base_model,
    run_in_process,
    save_prepared_in_process,
    write_config,
)

from axolotl_maskthought import cli
from axolotl_maskthought.adapters.axolotl.plan import plan_schedule, run_shape
from axolotl_maskthought.cli.schedule import table_rows
from axolotl_maskthought.data.files import write_lines
from axolotl_maskthought.data.generators import generate_multiplication
from axolotl_maskthought.ops.schedule import REMOVE_ALL

ICOT = "axolotl_maskthought.strategies.icot"


# ---- the run's shape (no training) ---------------------------------------------------------
def shape_of(**config):
    config.setdefault("micro_batch_size", 4)
    return run_shape(config, dataset_size=config.pop("rows", 64), world_size=config.pop("world", 1))


@pytest.mark.parametrize(
    "config, batches, steps_per_epoch, max_steps, train_rows",
    [
        (dict(rows=64, num_epochs=3), 16, 16, 48, 64),
        # 57 rows: a last, short micro-batch; axolotl stops at ceil(57 * 3 / 4) = 43 < 3 * 15
        (dict(rows=57, num_epochs=3), 15, 15, 43, 57),
        (dict(rows=57, num_epochs=3, dataloader_drop_last=True), 14, 14, 43, 57),
        # accumulation 2 over 15 micro-batches: 8 optimizer steps, the last with one micro-batch
        (dict(rows=60, num_epochs=3, gradient_accumulation_steps=2), 15, 8, 23, 60),
        (dict(rows=64, num_epochs=3, batch_size=16), 16, 4, 12, 64),
        # val_set_size: a fraction holds out ceil(f * rows), a count holds out that many
        (dict(rows=64, num_epochs=1, val_set_size=0.1), 15, 15, 15, 57),
        (dict(rows=64, num_epochs=1, val_set_size=10), 14, 14, 14, 54),
        (dict(rows=64, num_epochs=1, val_set_size=0.1, test_datasets=[{"path": "t"}]), 16, 16, 16, 64),
        # two ranks: 15 batches sharded evenly -> 8 each; global batch 8 -> ceil(57 / 8) steps
        (dict(rows=57, num_epochs=1, world=2), 8, 8, 8, 57),
        (dict(rows=64, num_epochs=5, max_steps=7), 16, 16, 7, 64),
    ],
)
def test_run_shape(config, batches, steps_per_epoch, max_steps, train_rows):
    shape = shape_of(**config)
    assert (shape.micro_batches_per_epoch, shape.optimizer_steps_per_epoch, shape.max_steps, shape.train_rows) == (
        batches,
        steps_per_epoch,
        max_steps,
        train_rows,
    )


def test_packing_is_called_an_estimate():
    shape = shape_of(rows=64, sample_packing=True)
    assert any("ESTIMATE" in note for note in shape.notes)
    exact = run_shape(
        {"micro_batch_size": 4, "sample_packing": True, "num_epochs": 2}, 64, 1, micro_batches_per_epoch=5
    )
    assert (exact.micro_batches_per_epoch, exact.max_steps) == (5, 10)


def write_yaml(path: Path, **config) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


def test_rows_counted_from_local_files(tmp_path):
    text = tmp_path / "a.txt"
    text.write_text("1||2 #### 3\n\n4||5 #### 6\n")
    rows = tmp_path / "b.jsonl"
    rows.write_text('{"question": "q", "answer": "#### 1"}\n' * 5)
    array = tmp_path / "c.json"
    array.write_text('[{"question": "q",\n "answer": "#### 1"}, {"question": "r", "answer": "#### 2"}]')
    gsm8k = "axolotl_maskthought.strategies.gsm8k"
    config = {
        "micro_batch_size": 2,
        "cot_removal": {"tokens_per_epoch": 1},
        "datasets": [
            {"path": str(text), "type": ICOT},
            {"path": str(rows), "type": gsm8k},
            {"path": str(array), "ds_type": "json", "type": gsm8k},
        ],
    }
    plan = plan_schedule(config)
    assert plan.shape.train_rows == 9 and plan.shape.micro_batches_per_epoch == 5
    assert plan_schedule(config, dataset_size=20).shape.train_rows == 20


def test_long_runs_show_a_sample_with_every_change():
    config = {
        "micro_batch_size": 4,
        "num_epochs": 4,
        "masked_thought": {"ratio": 0.4, "warmup": 0.5},
        "cot_removal": {"tokens_per_epoch": 3, "remove_all_at": 9},
        "datasets": [{"type": ICOT}],
    }
    plan = plan_schedule(config, dataset_size=400)
    shown = table_rows(plan)
    assert len(plan.rows) == 400 and len(shown) < 80
    steps = {row.step for row in shown}
    assert set(plan.change_steps()) <= steps and plan.rows[-1].step in steps
    counts = [row.removal_count for row in plan.rows]
    assert counts[-1] == REMOVE_ALL and 8 in counts  # 9 is never shown as a number: all instead
    full = next(row.step for row in plan.rows if row.mask_rate == 0.4)
    assert full in plan.change_steps()


# ---- the command -----------------------------------------------------------------------------
def config_2x2(tmp_path, num_epochs: int, **blocks) -> Path:
    """A YAML on 40 2x2 problems, 4 a micro-batch: 10 optimizer steps per epoch."""
    data = tmp_path / "m.txt"
    write_lines(data, generate_multiplication(2, 2, 40, seed=0))
    datasets = [{"path": str(data), "type": ICOT}]
    return write_yaml(tmp_path / "c.yml", micro_batch_size=4, num_epochs=num_epochs, datasets=datasets, **blocks)


def test_command_prints_table_and_plot(tmp_path, capsys):
    config = config_2x2(
        tmp_path, num_epochs=2, cot_removal={"tokens_per_epoch": 2}, masked_thought={"ratio": 0.2, "warmup": 0}
    )
    plot = tmp_path / "s.png"
    assert cli.main(["schedule", str(config), "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    assert "optimizer steps: 20" in out and "mask rate" in out and "CoT removed" in out
    table = out.split("\n\n")[1].splitlines()
    assert len(table) == 1 + 20  # header + every step of a short run
    assert table[6].split()[:5] == ["5", "1", "5", "0.2000", "1"]  # round(10 / 2) = 5 batches per token
    assert "optimizer reset" in table[6]
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_masked_thought_alone_gets_no_removal_column(tmp_path, capsys):
    config = config_2x2(tmp_path, num_epochs=1, masked_thought={"ratio": 0.2, "warmup": 0.5})
    assert cli.main(["schedule", str(config)]) == 0
    header, *rows = capsys.readouterr().out.split("\n\n")[1].splitlines()
    assert header.split() == ["step", "epoch", "micro-batch", "mask", "rate"]
    assert [row.split()[3] for row in rows[:2]] == ["0.0000", "0.0333"]  # ratio x step / (warmup x 10 + 1)


@pytest.mark.parametrize(
    "config, message",
    [
        (dict(cot_removal={"tokens_per_epoch": 0}), "`cot_removal.tokens_per_epoch`"),
        (dict(masked_thought={"ratio": 2}), "`masked_thought.ratio`"),
        (dict(masked_thought={"rate": 0.2}), "`masked_thought.rate`"),
        (dict(cot_removal={}, datasets=[{"path": "x.jsonl", "type": "alpaca"}]), "`datasets[0].type`"),
        (dict(), "neither"),
        (dict(masked_thought={}, datasets=[{"path": "missing.jsonl", "type": ICOT}]), "--dataset-size"),
        (dict(masked_thought={}, micro_batch_size=0, datasets=[{"type": ICOT}]), "`micro_batch_size`"),
    ],
)
def test_bad_configs_fail_in_one_line(tmp_path, capsys, config, message):
    config.setdefault("micro_batch_size", 4)
    config.setdefault("datasets", [{"path": str(tmp_path / "missing.txt"), "type": ICOT}])
    path = write_yaml(tmp_path / "bad.yml", **config)
    extra = [] if "--dataset-size" == message else ["--dataset-size", "8"]
    assert cli.main(["schedule", str(path), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err


# ---- against real training -------------------------------------------------------------------
@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    from axolotl.utils.data import sft

    root = tmp_path_factory.mktemp("schedule_cli")
    lines = list(dict.fromkeys(generate_multiplication(3, 3, 80, seed=5)))[:64]
    write_lines(root / "m64.txt", lines)
    write_lines(root / "m60.txt", lines[:60])
    base = build_base_model(root / "model", lines, vocab_size=256, hidden=32, layers=1, heads=2)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sft, "save_preprocessed_dataset", save_prepared_in_process)
        yield root, base


def train_and_plan(workspace, name, data, **extra):
    root, base = workspace
    config_path = write_config(
        root / f"{name}.yml",
        base_model=base,
        datasets=[{"path": str(root / data), "type": ICOT}],
        output_dir=root / name,
        plugins=[MASKTHOUGHT_PLUGIN, CAPTURE_PLUGIN],
        max_steps=None,
        num_epochs=3,
        cot_removal={"tokens_per_epoch": 4, "smoothing_lambda": 4},
        masked_thought={"ratio": 0.4, "warmup": 0.5},
        **extra,
    )
    run = run_in_process(config_path)
    plan = plan_schedule(yaml.safe_load(config_path.read_text()))
    return run, plan


def check_agreement(run, plan):
    trainer = run.trainer
    assert trainer.micro_batches_per_epoch == plan.shape.micro_batches_per_epoch
    assert trainer.state.max_steps == plan.shape.max_steps == trainer.state.global_step
    assert trainer.applied_counts == {row.step: row.removal_count for row in plan.rows}
    # logged at step s + 1 (after the step), rounded by axolotl to 5 digits
    logged = {
        entry["step"] - 1: entry["masked_thought/rate"] for entry in run.log_history if "masked_thought/rate" in entry
    }
    assert sorted(logged) == [row.step for row in plan.rows]
    for row in plan.rows:
        assert logged[row.step] == pytest.approx(row.mask_rate, abs=1e-5), row.step
    scheduled = {
        entry["step"] - 1: entry["cot_removal/scheduled"]
        for entry in run.log_history
        if "cot_removal/scheduled" in entry
    }
    for row in plan.rows:
        assert scheduled[row.step] == (-1 if row.removal_count == REMOVE_ALL else row.removal_count)


def test_schedule_matches_training_with_val_split_and_accuracy_callback(workspace):
    # 64 rows, 7 held out: 57 rows = 15 micro-batches (last short); axolotl: ceil(57*3/4) = 43 steps
    run, plan = train_and_plan(
        workspace,
        "ga1",
        "m64.txt",
        val_set_size=0.1,
        eval_strategy="steps",
        eval_steps=20,
        cot_format={"eval_accuracy_samples": 4},
    )
    assert (plan.shape.micro_batches_per_epoch, plan.shape.max_steps) == (15, 43)
    check_agreement(run, plan)
    counts = [row.removal_count for row in plan.rows]
    assert counts[:5] == [0, 0, 0, 0, 1] and counts[-1] == 10  # one token every round(15/4) = 4 micro-batches
    rates = [row.mask_rate for row in plan.rows]
    assert rates[0] == 0 and rates[-1] == 0.4 and rates[10] == pytest.approx(0.4 * 10 / (0.5 * 43 + 1))

    # the accuracy callback: at each evaluation, with and without CoT, in [0, 1]
    eval_steps = [entry["step"] for entry in run.log_history if "eval_loss" in entry]
    accuracy = [entry for entry in run.log_history if "eval_accuracy_cot" in entry]
    assert {20, 40} <= set(eval_steps) and [entry["step"] for entry in accuracy] == eval_steps  # axolotl adds 0, end
    for entry in accuracy:
        assert 0 <= entry["eval_accuracy_cot"] <= 1 and 0 <= entry["eval_accuracy_no_cot"] <= 1
    callback = next(
        cb for cb in run.trainer.callback_handler.callbacks if type(cb).__name__ == "AnswerAccuracyCallback"
    )
    assert len(callback.examples) == 4 and all(example.cot and example.answer for example in callback.examples)


def test_schedule_matches_training_with_gradient_accumulation(workspace):
    # 60 rows = 15 micro-batches; accumulation 2: 8 optimizer steps per epoch, axolotl stops at 23
    run, plan = train_and_plan(workspace, "ga2", "m60.txt", gradient_accumulation_steps=2)
    assert (plan.shape.micro_batches_per_epoch, plan.shape.optimizer_steps_per_epoch, plan.shape.max_steps) == (
        15,
        8,
        23,
    )
    assert [row.first_micro_batch for row in plan.rows[6:10]] == [12, 14, 15, 17]
    check_agreement(run, plan)
    assert len(set(row.removal_count for row in plan.rows)) > 5


# ---- paces in optimizer steps (issue 16, item 3) ------------------------------------------------------
def test_command_shows_the_gate_bounds(tmp_path, capsys):
    removal = {"loss_gate": {"min_steps": 3, "max_steps": 8}, "start_epoch": 1}
    config = config_2x2(tmp_path, num_epochs=3, cot_removal=removal)  # 30 optimizer steps
    assert cli.main(["schedule", str(config), "--plot", str(tmp_path / "g.png")]) == 0
    out = capsys.readouterr().out
    assert (tmp_path / "g.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "loss-gated from step 10" in out and "after 3 to 8 optimizer steps per token" in out
    header, *lines = out.split("\n\n")[1].splitlines()
    # no mask-rate column without MFT; a gate's count is a range
    assert header.split() == ["step", "epoch", "micro-batch", "CoT", "removed", "(fewest-most)"]
    table = {line.split()[0]: line.split() for line in lines}
    assert table["12"][3] == "0" and table["13"][3] == "0-1" and table["18"][3] == "1-2" and table["29"][3] == "2-6"
    bounds = out[out.index("loss_gate bounds") :].splitlines()
    rows = [line.split() for line in bounds if line.strip() and line.split()[0].isdigit()]
    # the 2x2 CoT is 8 tokens: token k between step 10 + 3k and 10 + 8k; the run has 30 steps
    assert rows[0] == ["1", "13", "18"] and rows[1] == ["2", "16", "26"] and rows[2][:2] == ["3", "19"]
    assert " ".join(rows[2][2:]) == "after the run" and len(rows) == 6  # token 7 would go at 31 at the earliest


@pytest.mark.parametrize(
    "removal",
    [
        {"loss_gate": {"min_steps": 3, "max_steps": 5}, "start_epoch": 1},  # earliest bound: token 16 by step 59
        {"tokens_per_epoch": 4},  # 24 scheduled by the last step
    ],
)
def test_table_stops_at_the_longest_cot(tmp_path, capsys, removal):
    data = tmp_path / "m.txt"
    rows = generate_multiplication(2, 2, 40, seed=0)
    write_lines(data, rows)
    config = write_yaml(
        tmp_path / "g.yml",
        base_model=str(build_base_model(tmp_path / "model", rows, vocab_size=300)),  # its tokenizer: CoT lengths
        micro_batch_size=4,
        num_epochs=6,  # 60 optimizer steps: the schedule runs well past the 2x2 CoT
        datasets=[{"path": str(data), "type": ICOT}],
        cot_removal=removal,
    )
    assert cli.main(["schedule", str(config)]) == 0
    out = capsys.readouterr().out
    longest = int(out.split("counts at or past the longest CoT (")[1].split()[0])
    table = out.split("\n\n")[1].splitlines()[1:]
    cells = [line.split()[3] for line in table]  # step, epoch, micro-batch, CoT removed
    numbers = [int(part) for cell in cells for part in cell.split("-") if part.isdigit()]
    assert max(numbers) == longest - 1 and cells[-1] == "all"
    assert not any(f"token {count}" in out for count in range(longest, longest + 10))
    last_change = "no CoT left at the latest" if "loss_gate" in removal else "whole CoT removed from here on"
    assert last_change in out
    if "loss_gate" in removal:  # the earliest bound reaches the longest CoT at step 10 + 3 x longest
        row = next(line for line in table if "no CoT left at the earliest" in line)
        assert row.split()[0] == str(10 + 3 * longest) and row.split()[3].endswith("-all")


def test_schedule_matches_training_with_steps_per_token_and_gate(workspace):
    """Through axolotl (its config round trip included): `steps_per_token` from `start_epoch` is exactly
    the plan; the loss gate stays within the plan's bounds at every step, its state checkpointed."""
    import json

    root, base = workspace
    runs = {}
    for name, removal in {
        "spt": {"steps_per_token": 3, "start_epoch": 1, "smoothing_lambda": 4},
        "gate": {"loss_gate": {"min_steps": 2, "max_steps": 6, "ema_beta": 0.5}, "start_step": 4},
    }.items():
        config_path = write_config(
            root / f"{name}.yml",
            base_model=base,
            datasets=[{"path": str(root / "m64.txt"), "type": ICOT}],
            output_dir=root / name,
            plugins=[MASKTHOUGHT_PLUGIN, CAPTURE_PLUGIN],
            max_steps=None,
            num_epochs=2,
            save_strategy="steps",
            save_steps=20,
            logging_steps=1,
            cot_removal=removal,
        )
        runs[name] = (run_in_process(config_path), plan_schedule(yaml.safe_load(config_path.read_text())))
    run, plan = runs["spt"]
    assert run.trainer.applied_counts == {row.step: row.removal_count for row in plan.rows}
    scheduled = {e["step"] - 1: e["cot_removal/scheduled"] for e in run.log_history if "cot_removal/scheduled" in e}
    assert scheduled == {row.step: row.removal_count for row in plan.rows if row.step >= 16}  # logged from the start
    assert [row.removal_count for row in plan.rows][15:20] == [
        0,
        0,
        0,
        0,
        1,
    ]  # start: step 16 (epoch 2), token 1 three steps later
    run, plan = runs["gate"]
    applied = run.trainer.applied_counts
    assert sorted(applied) == [row.step for row in plan.rows]
    for row in plan.rows:
        assert row.removal_count <= applied[row.step] <= row.removal_count_most, row.step
    assert applied[5] == 0 and applied[6] == 1  # the first token: min_steps after start_step
    state = json.loads((root / "gate" / "checkpoint-20" / "maskthought_state.json").read_text())
    assert state["loss_gate"]["count"] == applied[19] and state["count_in_force"] == applied[19]
    logged = [entry["step"] for entry in run.log_history if "cot_removal/gate_loss" in entry]
    assert logged == list(range(2, plan.shape.max_steps + 1))  # every step after the first


def test_missing_config_file(tmp_path, capsys):
    assert cli.main(["schedule", str(tmp_path / "nope.yml")]) == 2
    assert "nope.yml" in capsys.readouterr().err
