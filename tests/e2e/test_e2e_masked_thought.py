"""Masked Thought end to end, through axolotl's own entry points.

A tiny Llama (built once) trains for a few steps on 200 GSM8K rows. The capture
plugin (tests/axolotl_run.py) records what the model's forward receives, and each
masked run is compared with a plugin-off run of the same seed and data order:

======================  =========  =======  ===========  ====================
run                     packing    model    replacement  also
======================  =========  =======  ===========  ====================
off                     no         full     (off)        eval reference
random                  no         full     random       warm-up, accum 2, eval, checkpoints
resumed                 no         full     random       resumed from random's checkpoint-2
off_packed              yes        full     (off)
mask_lora_packed        yes        LoRA     mask_token   scope reasoning
cli_pad_packed (CLI)    yes        full     pad          ``axolotl preprocess`` + ``axolotl train``
stale_template          yes        full     (off)        same prepared path, other template
alpaca_lora             no         LoRA     random       axolotl's ``type: alpaca``
======================  =========  =======  ===========  ====================
"""

from __future__ import annotations

import math
from pathlib import Path

import axolotl_run
import pytest
import torch
from axolotl_run import gsm8k_dataset, load_capture, run_cli, run_in_process, write_config, write_jsonl

from axolotl_maskthought.config import PROMPT_TEMPLATES
from axolotl_maskthought.data.files import read_jsonl

IGNORE = -100
ROWS = 200
LORA = dict(adapter="lora", lora_r=4, lora_alpha=8, lora_target_linear=True)
PACKED = dict(sample_packing=True, attn_implementation="sdpa", micro_batch_size=2, max_steps=3)
# nopack runs: 4 optimizer steps of 2 micro-batches; warm-up over a quarter of the run:
# rate = 0.4 * step / (0.25 * 4 + 1) -> 0, 0.2, 0.4, 0.4
UNPACKED = dict(
    gradient_accumulation_steps=2,
    max_steps=4,
    val_set_size=0.05,
    eval_strategy="steps",
    eval_steps=4,
)
WARMUP_RATES = [0.0, 0.2, 0.4, 0.4]


# ---- shared inputs ------------------------------------------------------------------
@pytest.fixture(scope="module")
def workspace(tmp_path_factory, shared_data: Path) -> dict:
    root = tmp_path_factory.mktemp("mft")
    rows = read_jsonl(shared_data / "gsm8k" / "train.jsonl", limit=ROWS)
    assert len(rows) == ROWS
    texts = [row["question"] + "\n" + row["answer"] for row in rows] + list(PROMPT_TEMPLATES.values())
    model = axolotl_run.build_base_model(root / "model", texts, vocab_size=1000)
    alpaca_rows = [{"instruction": row["question"], "input": "", "output": row["answer"]} for row in rows]
    return {
        "root": root,
        "model": model,
        "gsm8k": write_jsonl(root / "gsm8k200.jsonl", rows),
        "alpaca": write_jsonl(root / "alpaca200.jsonl", alpaca_rows),
        "runs": {},  # name -> RunResult, each run once per module
    }


def _config(workspace: dict, name: str, prepared: str, datasets: list[dict] | None = None, **extra) -> Path:
    root = workspace["root"]
    return write_config(
        root / f"{name}.yml",
        base_model=workspace["model"],
        datasets=datasets or [gsm8k_dataset(workspace["gsm8k"])],
        output_dir=root / name,
        dataset_prepared_path=str(root / prepared),
        **extra,
    )


def _run(workspace: dict, name: str, prepared: str, **extra):
    """Run once per module, in this process; later tests reuse the record."""
    runs = workspace["runs"]
    if name not in runs:
        runs[name] = run_in_process(_config(workspace, name, prepared, **extra))
    return runs[name]


RANDOM_BLOCK = {"ratio": 0.4, "warmup": 0.25, "replacement": "random"}


@pytest.fixture(scope="module")
def run_off(workspace):
    return _run(workspace, "off", "prepared-unpacked", **UNPACKED)


@pytest.fixture(scope="module")
def run_random(workspace):
    return _run(
        workspace,
        "random",
        "prepared-unpacked",
        masked_thought=RANDOM_BLOCK,
        save_strategy="steps",
        save_steps=2,
        **UNPACKED,
    )


@pytest.fixture(scope="module")
def run_off_packed(workspace):
    return _run(workspace, "off_packed", "prepared-packed", **PACKED)


@pytest.fixture(scope="module")
def run_mask_lora_packed(workspace):
    return _run(
        workspace,
        "mask_lora_packed",
        "prepared-packed",
        masked_thought={"ratio": 0.3, "warmup": 0, "replacement": "mask_token", "scope": "reasoning"},
        lora_modules_to_save=["embed_tokens", "lm_head"],
        **LORA,
        **PACKED,
    )


# ---- checks shared by the runs --------------------------------------------------------
def _assert_same_batches_except_masking(masked_run, off_run) -> None:
    """Same data order, labels and layout; inputs differ only where labels are trained."""
    masked, off = masked_run.train_forwards, off_run.train_forwards
    assert len(masked) == len(off) > 0
    for index, (got, clean) in enumerate(zip(masked, off)):
        assert torch.equal(got["labels"], clean["labels"]), f"micro-batch {index}: labels changed"
        for key in ("attention_mask", "position_ids"):
            if clean[key] is None:
                assert got[key] is None
            else:
                assert torch.equal(got[key], clean[key]), f"micro-batch {index}: {key} changed"
        untrained = clean["labels"] == IGNORE
        assert untrained.any()
        assert torch.equal(got["input_ids"][untrained], clean["input_ids"][untrained]), (
            f"micro-batch {index}: a prompt or padding input changed"
        )
        # the clean run's inputs are its labels wherever trained
        assert torch.equal(clean["input_ids"][~untrained], clean["labels"][~untrained])


def _assert_rate(changed: int, trials: int, probability: float, what: str) -> None:
    sigma = math.sqrt(trials * probability * (1 - probability))
    assert abs(changed - trials * probability) <= 3 * sigma, (
        f"{what}: {changed}/{trials} = {changed / trials:.4f}, expected {probability:.4f} ± {3 * sigma / trials:.4f}"
    )


# ---- random replacement, no packing, full fine-tuning ---------------------------------
def test_random_masks_only_trained_inputs_at_the_warmed_up_rate(run_random, run_off) -> None:
    _assert_same_batches_except_masking(run_random, run_off)
    vocab = len(run_random.trainer.processing_class)
    accumulation = UNPACKED["gradient_accumulation_steps"]
    changed = trials = 0
    expected = variance = 0.0
    for index, forward in enumerate(run_random.train_forwards):
        rate = WARMUP_RATES[index // accumulation]
        trained = forward["labels"] != IGNORE
        differs = (forward["input_ids"] != forward["labels"]) & trained
        if rate == 0:
            assert not differs.any(), f"micro-batch {index}: masked at rate 0"
        probability = rate * (1 - 1 / vocab)  # a random draw can hit the original token
        changed += int(differs.sum())
        trials += int(trained.sum())
        expected += int(trained.sum()) * probability
        variance += int(trained.sum()) * probability * (1 - probability)
        assert int(forward["input_ids"].max()) < vocab
    assert abs(changed - expected) <= 3 * math.sqrt(variance), (changed, expected, trials)
    print(f"random: {changed}/{trials} trained inputs replaced, expected {expected:.0f}")


def test_random_rate_and_fraction_are_logged(run_random) -> None:
    rates = run_random.logged("masked_thought/rate")
    fractions = run_random.logged("masked_thought/masked_fraction")
    assert rates == pytest.approx(WARMUP_RATES, abs=1e-6)
    assert len(fractions) == len(WARMUP_RATES)
    accumulation = UNPACKED["gradient_accumulation_steps"]
    forwards = run_random.train_forwards
    for step, logged in enumerate(fractions):
        observed = []
        for forward in forwards[step * accumulation : (step + 1) * accumulation]:
            trained = forward["labels"] != IGNORE
            observed.append(float(((forward["input_ids"] != forward["labels"]) & trained).sum() / trained.sum()))
        seen = sum(observed) / len(observed)
        # logged = selected positions; seen misses the few random draws of the original token
        assert seen - 1e-4 <= logged <= seen + 0.01, (step, logged, seen)
    print(f"random: logged rates {rates}, masked fractions {fractions}")


def test_gradient_accumulation_draws_fresh_masks_per_micro_batch(run_random) -> None:
    forwards = run_random.train_forwards
    assert len(forwards) == len(WARMUP_RATES) * UNPACKED["gradient_accumulation_steps"]
    first, second = forwards[4], forwards[5]  # optimizer step 2, rate 0.4
    width = min(first["labels"].shape[1], second["labels"].shape[1])
    both = (first["labels"][:, :width] != IGNORE) & (second["labels"][:, :width] != IGNORE)
    masked_first = (first["input_ids"][:, :width] != first["labels"][:, :width])[both]
    masked_second = (second["input_ids"][:, :width] != second["labels"][:, :width])[both]
    disagreement = float((masked_first != masked_second).float().mean())
    # the same draws would disagree nowhere; independent ones on 2 * 0.4 * 0.6 = 0.48
    assert 0.38 < disagreement < 0.58, disagreement


def test_no_masking_at_evaluation(run_random, run_off) -> None:
    evals = run_random.eval_forwards
    assert len(evals) == len(run_off.eval_forwards) > 0
    for got, clean in zip(evals, run_off.eval_forwards):
        trained = got["labels"] != IGNORE
        assert torch.equal(got["input_ids"][trained], got["labels"][trained])
        assert torch.equal(got["input_ids"], clean["input_ids"])
    assert any("eval_loss" in entry for entry in run_random.log_history)


def test_resume_reproduces_the_uninterrupted_masks(workspace, run_random) -> None:
    checkpoint = workspace["root"] / "random" / "checkpoint-2"
    assert checkpoint.is_dir()
    resumed = _run(
        workspace,
        "resumed",
        "prepared-unpacked",
        masked_thought=RANDOM_BLOCK,
        resume_from_checkpoint=str(checkpoint),
        **UNPACKED,
    )
    accumulation = UNPACKED["gradient_accumulation_steps"]
    after = run_random.train_forwards[2 * accumulation :]
    assert len(resumed.train_forwards) == len(after) == 2 * accumulation
    for index, (got, expected) in enumerate(zip(resumed.train_forwards, after)):
        assert torch.equal(got["labels"], expected["labels"]), f"micro-batch {index}: other data after resume"
        assert torch.equal(got["input_ids"], expected["input_ids"]), f"micro-batch {index}: other masks after resume"
        assert (got["input_ids"] != got["labels"]).any()
    # the log history comes back from the checkpoint; the last two steps are the resumed run's
    assert resumed.logged("masked_thought/rate") == pytest.approx(WARMUP_RATES, abs=1e-6)
    assert resumed.logged("masked_thought/masked_fraction")[2:] == pytest.approx(
        run_random.logged("masked_thought/masked_fraction")[2:], abs=1e-6
    )


# ---- mask_token, packing, LoRA, scope reasoning --------------------------------------
def test_mask_token_added_and_initialised_to_the_mean(run_mask_lora_packed, workspace) -> None:
    from transformers import AutoTokenizer

    run = run_mask_lora_packed
    base = AutoTokenizer.from_pretrained(workspace["model"])
    tokenizer = run.trainer.processing_class
    mask_id = tokenizer.convert_tokens_to_ids("<mask>")
    assert "<mask>" not in base.get_vocab()
    assert len(tokenizer) == len(base) + 1 and mask_id == len(base)
    for which in ("input", "output"):
        rows = run.embeddings[which]  # at trainer creation, before the first step
        assert rows.shape[0] >= len(tokenizer)
        torch.testing.assert_close(rows[mask_id], rows[: len(base)].mean(dim=0))
        assert not torch.allclose(rows[mask_id], rows[0])
    # the row is in the trained (modules_to_save) copy and moves with training
    final = run.trainer.model.get_input_embeddings().weight.detach().cpu()
    assert not torch.allclose(final[mask_id], run.embeddings["input"][mask_id])


def test_mask_token_masks_only_the_cot(run_mask_lora_packed, run_off_packed) -> None:
    run = run_mask_lora_packed
    _assert_same_batches_except_masking(run, run_off_packed)
    mask_id = run.trainer.processing_class.convert_tokens_to_ids("<mask>")
    dataset = run.trainer.train_dataset
    selected = cot_total = 0
    fractions = []
    for forward in run.train_forwards:
        assert forward["position_ids"] is not None  # packed
        masked = forward["input_ids"] == mask_id
        batch_selected = batch_cot = 0
        examples = axolotl_run.clean_examples(forward, dataset)
        assert len(examples) > forward["labels"].shape[0]  # more examples than rows: packed
        covered = torch.zeros_like(masked)
        for row, start, end, example in examples:
            cot = torch.tensor(example["cot_mask"], dtype=torch.bool)
            assert len(cot) == end - start
            segment = masked[row, start:end]
            assert not segment[~cot].any(), "masked outside the CoT span"
            clean = torch.tensor(example["input_ids"])
            assert torch.equal(forward["input_ids"][row, start:end][~segment], clean[~segment])
            batch_selected += int(segment.sum())
            batch_cot += int(cot.sum())
            covered[row, start:end] = True
        assert not masked[~covered].any()
        fractions.append(batch_selected / batch_cot)
        selected += batch_selected
        cot_total += batch_cot
    _assert_rate(selected, cot_total, 0.3, "mask_token on CoT tokens")
    assert run.logged("masked_thought/rate") == pytest.approx([0.3] * len(fractions))
    assert run.logged("masked_thought/masked_fraction") == pytest.approx(fractions, abs=1e-4)
    print(f"mask_token: {selected}/{cot_total} CoT inputs masked")


# ---- pad, packing, full fine-tuning, through the real CLI -----------------------------
@pytest.fixture(scope="module")
def cli_pad_packed(workspace):
    root = workspace["root"]
    config = _config(
        workspace,
        "cli_pad_packed",
        "prepared-cli",
        masked_thought={"ratio": 0.4, "warmup": 0, "replacement": "pad"},
        **PACKED,
    )
    preprocess = run_cli(["preprocess", config], cwd=root)
    assert preprocess.returncode == 0, preprocess.stdout[-3000:]
    capture = root / "cli_pad_packed.capture"
    train = run_cli(["train", config, "--launcher", "python"], cwd=root, capture_file=capture)
    assert train.returncode == 0, train.stdout[-3000:]
    return {"config": config, "preprocess": preprocess, "train": train, "run": load_capture(capture)}


def test_cli_preprocess_then_train(cli_pad_packed, workspace) -> None:
    prepared = workspace["root"] / "prepared-cli"
    keyed = sorted(path.name for path in prepared.iterdir())
    assert len(keyed) == 1 and keyed[0].startswith("maskthought-"), keyed
    assert f"Loading prepared dataset from disk at {prepared / keyed[0]}" in cli_pad_packed["train"].stdout
    output = workspace["root"] / "cli_pad_packed"
    assert (output / "model.safetensors").is_file()
    assert cli_pad_packed["run"].events[:3] == ["pre_model_load", "post_model_load", "post_trainer_create"]


def test_cli_pad_masks_trained_inputs_with_pad(cli_pad_packed, run_off_packed, workspace) -> None:
    from transformers import AutoTokenizer

    run = cli_pad_packed["run"]
    _assert_same_batches_except_masking(run, run_off_packed)
    pad_id = AutoTokenizer.from_pretrained(workspace["model"]).pad_token_id
    selected = trials = 0
    for forward in run.train_forwards:
        trained = forward["labels"] != IGNORE
        differs = (forward["input_ids"] != forward["labels"]) & trained
        assert (forward["input_ids"][differs] == pad_id).all()
        selected += int(differs.sum())
        trials += int(trained.sum())
    _assert_rate(selected, trials, 0.4, "pad on trained tokens")
    assert run.logged("masked_thought/rate") == pytest.approx([0.4] * PACKED["max_steps"])
    print(f"pad: {selected}/{trials} trained inputs masked")


def test_changed_template_does_not_reuse_stale_prepared_data(cli_pad_packed, workspace) -> None:
    """Same dataset_prepared_path, other `cot_format.prompt_template`: axolotl's own hash
    does not see the template, so without the plugin's keyed path the alpaca-templated
    data prepared by the CLI would be loaded again."""
    run = _run(
        workspace,
        "stale_template",
        "prepared-cli",
        cot_format={"prompt_template": "plain"},
        **{**PACKED, "max_steps": 1},
    )
    tokenizer = run.trainer.processing_class
    before = cli_pad_packed["run"].train_forwards[0]
    after = run.train_forwards[0]
    _, start, end = axolotl_run.segments(after)[0]
    assert tokenizer.decode(after["input_ids"][0, start:end]).startswith("<s>Question: ")
    _, start, end = axolotl_run.segments(before)[0]
    assert tokenizer.decode(before["input_ids"][0, start:end]).startswith("<s>Below is an instruction")
    keyed = [path.name for path in (workspace["root"] / "prepared-cli").iterdir()]
    assert len(keyed) == 2 and all(name.startswith("maskthought-") for name in keyed), keyed


# ---- any dataset type: axolotl's alpaca, scope response --------------------------------
def test_alpaca_dataset_with_response_scope(workspace) -> None:
    run = _run(
        workspace,
        "alpaca_lora",
        "prepared-alpaca",
        datasets=[{"path": str(workspace["alpaca"]), "ds_type": "json", "type": "alpaca"}],
        masked_thought={"ratio": 0.4, "warmup": 0},
        max_steps=2,
        **LORA,
    )
    vocab = len(run.trainer.processing_class)
    changed = trials = 0
    for forward in run.train_forwards:
        examples = axolotl_run.clean_examples(forward, run.trainer.train_dataset)
        assert len(examples) == forward["labels"].shape[0]
        for row, start, end, example in examples:
            clean = torch.tensor(example["input_ids"])
            trained = torch.tensor(example["labels"]) != IGNORE
            got = forward["input_ids"][row, start:end]
            assert torch.equal(got[~trained], clean[~trained]), "prompt input changed"
            changed += int((got[trained] != clean[trained]).sum())
            trials += int(trained.sum())
    _assert_rate(changed, trials, 0.4 * (1 - 1 / vocab), "random on alpaca responses")
    assert run.logged("masked_thought/rate") == pytest.approx([0.4, 0.4])
    print(f"alpaca: {changed}/{trials} response inputs replaced")
