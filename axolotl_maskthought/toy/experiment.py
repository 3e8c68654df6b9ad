"""Small experiments on a CPU: tiny model, generated multiplication problems, runs through axolotl.

The runner behind ``axolotl-maskthought quickstart`` (and the experiment scripts in ``bench/``):
:func:`prepare` writes disjoint train/validation/test files and a tiny GPT-2; :func:`run_method`
trains one method as ``axolotl train`` would (in this process) and scores it on the held-out
problems with the package's own :func:`~axolotl_maskthought.eval.evaluation.evaluate_model`;
:func:`run` does a whole comparison and :func:`verdict` says, from the numbers, who won.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from axolotl_maskthought.toy.tiny import OFFLINE_ENV


@dataclass(frozen=True)
class Sizes:
    """Everything that makes a run longer or shorter."""

    a_digits: int
    b_digits: int
    train_rows: int
    test_rows: int
    epochs: int
    micro_batch_size: int
    learning_rate: float
    hidden: int
    layers: int
    heads: int
    eval_steps: int
    eval_accuracy_samples: int  # rows of the validation file scored at each evaluation (the curves)
    val_rows: int = 200
    max_steps: int | None = None  # optimizer steps; None = `epochs` passes over the training rows
    warmup_steps: int = 0  # linear learning-rate warm-up, then constant


@dataclass(frozen=True)
class Pace:
    """A Stepwise Internalization pace in optimizer steps: ``cot_removal.start_step`` and either
    ``steps_per_token`` (fixed) or ``loss_gate`` (``min_steps``, ``max_steps``, ``recovery``).

    Raises ``ValueError`` when given both or neither."""

    start_step: int  # full-CoT steps first
    steps_per_token: int | None = None
    loss_gate: dict | None = None

    def __post_init__(self) -> None:
        if (self.steps_per_token is None) == (self.loss_gate is None):
            raise ValueError("a Pace takes steps_per_token or loss_gate, one of the two")

    def block(self) -> dict:
        """The ``cot_removal`` keys of this pace."""
        paced = {"steps_per_token": self.steps_per_token} if self.loss_gate is None else {"loss_gate": self.loss_gate}
        return {"start_step": self.start_step, **paced}


@dataclass(frozen=True)
class Method:
    name: str
    label: str  # for the verdict
    train_file: str  # with or without the CoT
    no_cot_eval: bool
    blocks: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Comparison:
    title: str
    baseline: Method
    treatment: Method
    sizes: Sizes
    error_recovery: bool = False  # with-CoT methods: also score after one injected CoT error


SFT = Method("sft", "SFT", "train_cot.txt", False)
NO_COT = Method("no_cot_training", "no-CoT training", "train_no_cot.txt", True)


def masked_thought(ratio: float, replacement: str = "random") -> Method:
    return Method(
        "masked_thought",
        "Masked Thought",
        "train_cot.txt",
        False,
        {"masked_thought": {"ratio": ratio, "replacement": replacement, "warmup": 0.66}},
    )


def stepwise_internalization(
    tokens_per_epoch: float | None = None,
    start_epoch: int = 0,
    smoothing_lambda: float = 4,
    keep_position: bool = True,
    reset_optimizer: bool = False,
    remove_all_at: int | None = None,
    pace: Pace | None = None,
) -> Method:
    """SI with the Δ-per-epoch schedule, or with ``pace`` in optimizer steps (then no Δ, no start_epoch)."""
    schedule = pace.block() if pace is not None else {"tokens_per_epoch": tokens_per_epoch, "start_epoch": start_epoch}
    removal = {
        **schedule,
        "smoothing_lambda": smoothing_lambda,
        "side": "left",
        "keep_position": keep_position,
        "reset_optimizer": reset_optimizer,
    }
    if remove_all_at is not None:
        removal["remove_all_at"] = remove_all_at
    return Method(
        "stepwise_internalization", "Stepwise Internalization", "train_cot.txt", True, {"cot_removal": removal}
    )


# Default: the 2x2 win, SI (keep_position, λ 4, reset on) against no-CoT training of the same model for the
# same optimizer steps, both answering with NO CoT, both arms side by side (one process per core). The setting
# chosen on the validation split in bench/RESULTS.md §7, the most that fits the quickstart's time: 6,400
# distinct problems x 36 epochs = 7,200 steps, 1,000 full-CoT steps, then one token every 300 steps (all 9 CoT
# tokens gone at step 3,700). From the final code, seed 0: SI 0.320 vs 0.172 (§9); the 16,000-step recipe of
# examples/yaml/cpu_multiplication_2x2_icot_si.yml reaches 0.970 [0.950, 0.970] over seeds 0-2.
WIN_2X2_SIZES = Sizes(
    a_digits=2,
    b_digits=2,
    train_rows=6400,
    test_rows=500,
    epochs=36,
    micro_batch_size=32,
    learning_rate=1e-3,
    hidden=128,
    layers=2,
    heads=4,
    eval_steps=600,
    eval_accuracy_samples=200,
    max_steps=7200,  # = 36 epochs of 200 micro-batches
    warmup_steps=200,
)
WIN_2X2_PACE = Pace(start_step=1000, steps_per_token=300)
WIN_2X2 = Comparison(
    "Stepwise Internalization vs no-CoT training, answering with NO CoT",
    NO_COT,
    stepwise_internalization(pace=WIN_2X2_PACE, smoothing_lambda=4, keep_position=True, reset_optimizer=True),
    WIN_2X2_SIZES,
)
# --mft: Masked Thought vs SFT, the cheapest comparison that held on every seed tried (bench/RESULTS.md §5),
# scored with CoT and after one injected CoT error (the recovery Masked Thought argues for).
FULL = Comparison(
    "Masked Thought vs SFT, answering with CoT",
    SFT,
    masked_thought(0.2),
    Sizes(
        a_digits=2,
        b_digits=2,
        train_rows=400,
        test_rows=500,
        epochs=62,
        micro_batch_size=32,
        learning_rate=1e-3,
        hidden=128,
        layers=2,
        heads=4,
        eval_steps=100,
        eval_accuracy_samples=100,
    ),
    error_recovery=True,
)
MFT = FULL
# --long: the 3x3 recipe of examples/yaml/cpu_multiplication_icot_si.yml, the best median of the 3x3 study
# (bench/RESULTS.md §11): 20,000 distinct problems, 3,125 full-CoT steps, then one CoT token every 2,000
# steps (all 25 gone at step 53,125), 55,000 steps.
LONG_SIZES = replace(
    WIN_2X2_SIZES,
    a_digits=3,
    b_digits=3,
    train_rows=20000,
    epochs=88,
    max_steps=55000,  # = 88 epochs of 625 micro-batches
    eval_steps=2000,
)
LONG_PACE = Pace(start_step=3125, steps_per_token=2000)
LONG = Comparison(
    "Stepwise Internalization vs no-CoT training, answering with NO CoT",
    NO_COT,
    stepwise_internalization(pace=LONG_PACE, smoothing_lambda=4, keep_position=True, reset_optimizer=True),
    LONG_SIZES,
)
_TOY = Sizes(
    a_digits=2,
    b_digits=2,
    train_rows=256,
    test_rows=32,
    epochs=2,
    micro_batch_size=16,
    learning_rate=1e-3,
    hidden=32,
    layers=1,
    heads=2,
    eval_steps=16,
    eval_accuracy_samples=16,
    val_rows=16,
)
QUICK = [  # the default's code path (a pace in steps, side by side), then --mft's (with error recovery)
    replace(
        WIN_2X2,
        treatment=stepwise_internalization(pace=Pace(start_step=8, steps_per_token=2), reset_optimizer=True),
        sizes=replace(_TOY, max_steps=32, warmup_steps=4),
    ),
    replace(MFT, sizes=_TOY),
]


# ---- data and model ------------------------------------------------------------------
def strip_cot(line: str) -> str:
    """``q||cot #### a`` -> ``q|| #### a`` (the icot strategy then trains ``q eos eos #### a eos``)."""
    question, solution = line.split("||", 1)
    return f"{question}|| #### {solution.split('####', 1)[1].strip()}"


def prepare(directory: Path, sizes: Sizes) -> Path:
    """Write the problem files (:func:`write_problems`) and a tiny model; return the model dir."""
    train = write_problems(directory, sizes)
    return build_model(directory / "model", train, sizes, seed=0)


def write_problems(directory: Path, sizes: Sizes) -> list[str]:
    """Write ``train_cot.txt`` (``sizes.train_rows`` distinct problems, seed 0), ``train_no_cot.txt``
    (the same without CoT), ``test.txt`` and ``valid.txt`` (``test_rows`` and ``val_rows`` problems,
    seed 1, none in training nor in each other); return the training lines. Raises ``ValueError``
    when the problem space is too small for the sizes."""
    from axolotl_maskthought.data import generators as data

    train = data.generate_multiplication(sizes.a_digits, sizes.b_digits, sizes.train_rows, seed=0, distinct=True)
    held_out = data.generate_multiplication(
        sizes.a_digits, sizes.b_digits, sizes.test_rows + sizes.val_rows, seed=1, distinct=True, exclude=train
    )
    test, val = held_out[: sizes.test_rows], held_out[sizes.test_rows :]
    data.write_lines(directory / "train_cot.txt", train)
    data.write_lines(directory / "train_no_cot.txt", [strip_cot(line) for line in train])
    data.write_lines(directory / "test.txt", test)
    data.write_lines(directory / "valid.txt", val)
    return train


def build_model(model_dir: Path, train: list[str], sizes: Sizes, seed: int) -> Path:
    """The runner's tiny GPT-2 (``sizes``' width, layers, heads) and a BPE tokenizer trained on
    ``train``, saved to ``model_dir``; ``seed`` draws the initial weights."""
    from axolotl_maskthought.toy import tiny

    return tiny.build_tiny(
        model_dir,
        train,
        vocab_size=300,
        arch="gpt2",
        hidden=sizes.hidden,
        layers=sizes.layers,
        heads=sizes.heads,
        max_positions=128,
        seed=seed,
    )


def config_for(method: Method, sizes: Sizes, directory: Path, model_dir: Path, seed: int) -> dict:
    icot = "axolotl_maskthought.strategies.icot"
    return {
        "base_model": str(model_dir),
        "plugins": ["axolotl_maskthought.MaskThoughtPlugin"],
        **method.blocks,
        "cot_format": {"eval_accuracy_samples": sizes.eval_accuracy_samples},
        "datasets": [{"path": str(directory / method.train_file), "type": icot}],
        # validation problems for the in-training accuracy curve; the table uses test.txt
        "test_datasets": [{"path": str(directory / "valid.txt"), "type": icot, "split": "train"}],
        "dataset_prepared_path": str(directory / "prepared"),
        "sequence_len": 128,
        # pad each batch to its longest row: axolotl's default multiple of 64 halves the speed of these
        # ~24-token rows (bench/RESULTS.md §7)
        "pad_to_sequence_len": False,
        "micro_batch_size": sizes.micro_batch_size,
        "eval_batch_size": 64,
        "gradient_accumulation_steps": 1,
        "num_epochs": sizes.epochs,
        **({"max_steps": sizes.max_steps} if sizes.max_steps else {}),
        "learning_rate": sizes.learning_rate,
        "optimizer": "adamw_torch",
        "weight_decay": 0.01,
        "max_grad_norm": 1.0,
        "lr_scheduler": "constant_with_warmup" if sizes.warmup_steps else "constant",
        **({"warmup_steps": sizes.warmup_steps} if sizes.warmup_steps else {}),
        "bf16": False,
        "fp16": False,
        "seed": seed,
        "output_dir": str(directory / "runs" / method.name),
        "save_strategy": "no",
        "eval_strategy": "steps",
        "eval_steps": sizes.eval_steps,
        "logging_steps": 10,
        "dataloader_num_workers": 0,
        "dataset_num_proc": 1,
        "special_tokens": {"pad_token": "<pad>"},
    }


# ---- training and evaluation ------------------------------------------------------------
def train_in_process(config_path: Path, **overrides):
    """What ``axolotl train CONFIG`` does (``axolotl.cli.train.do_train``), in this process;
    returns (model, tokenizer, trainer). ``overrides``: config keys that win over the file's,
    as ``axolotl train CONFIG --key value``. The one way this package, its tests and bench/
    run axolotl in-process."""
    from axolotl.cli.args import TrainerCliArgs
    from axolotl.cli.config import load_cfg
    from axolotl.common.datasets import load_datasets
    from axolotl.integrations.base import PluginManager
    from axolotl.train import train

    cfg = load_cfg(str(config_path), **overrides)
    plugins = PluginManager.get_instance()
    dataset_meta = plugins.load_datasets(cfg, preprocess=False)  # a plugin may load the data itself
    if dataset_meta is None:
        dataset_meta = load_datasets(cfg=cfg, cli_args=TrainerCliArgs())
    try:
        return train(cfg=cfg, dataset_meta=dataset_meta)
    finally:
        plugins.post_train_unload(cfg)


def held_out_examples(path: Path):
    from axolotl_maskthought.data.formats import parse_icot_line

    return [parse_icot_line(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def write_config(method: Method, sizes: Sizes, directory: Path, model_dir: Path, seed: int) -> Path:
    """The axolotl YAML of one arm, written beside the data."""
    import yaml

    config_path = directory / f"{method.name}.yml"
    config_path.write_text(yaml.safe_dump(config_for(method, sizes, directory, model_dir, seed), sort_keys=False))
    return config_path


def run_method(
    method: Method, sizes: Sizes, directory: Path, model_dir: Path, seed: int, say, error_recovery: bool = False
) -> dict:
    """Train one arm as ``axolotl train`` would (in this process) and score it on ``test.txt``.

    ``error_recovery`` (with-CoT arms): also the accuracy after one injected CoT error
    (:func:`~axolotl_maskthought.eval.error_injection.evaluate_error_recovery`, digit rule, seed 0).
    """
    import torch

    from axolotl_maskthought.eval.callback import METRIC_COT, METRIC_NO_COT

    torch.set_num_threads(int(os.environ.get("MASKTHOUGHT_QUICKSTART_THREADS", torch.get_num_threads())))
    config_path = write_config(method, sizes, directory, model_dir, seed)
    say(f"  {method.label}: training as `axolotl train {config_path}` would (in this process) ...")
    started = time.perf_counter()
    model, tokenizer, trainer = train_in_process(config_path)
    run_seconds = time.perf_counter() - started
    history = trainer.state.log_history
    # the training loop alone (with its evaluations), as the HF Trainer measured it
    train_seconds = next((entry["train_runtime"] for entry in history if "train_runtime" in entry), run_seconds)
    examples = held_out_examples(directory / "test.txt")
    keep_position = bool((method.blocks.get("cot_removal") or {}).get("keep_position"))
    scored = score_examples(model, tokenizer, examples, method.no_cot_eval, keep_position)
    metric = METRIC_NO_COT if method.no_cot_eval else METRIC_COT
    after_error = None
    if error_recovery and not method.no_cot_eval:
        from axolotl_maskthought.eval.error_injection import evaluate_error_recovery

        after_error = evaluate_error_recovery(
            model, tokenizer, examples, "icot", None, 0, "digit", 64, _max_new_tokens(tokenizer, examples), False
        )
    result = {
        "method": method.name,
        "label": method.label,
        "eval": "no CoT" if method.no_cot_eval else "with CoT",
        "accuracy": scored["accuracy"],
        "correct": scored["correct"],
        "n": scored["n"],
        "steps": trainer.state.global_step,
        "parameters": model.num_parameters(),
        "train_seconds": round(train_seconds, 1),
        "run_seconds": round(run_seconds, 1),  # + loading data and model, saving
        "config": str(config_path),
        **(
            {
                "after_error_accuracy": after_error["accuracy"],
                "after_error_correct": after_error["correct"],
                "after_error_n": after_error["n"],
                # per held-out problem, in test.txt order: the paired comparison of recovery_verdict
                "clean_correct_each": [bool(row["correct"]) for row in scored["predictions"]],
                "after_error_correct_each": [bool(row["correct"]) for row in after_error["predictions"]],
            }
            if after_error is not None
            else {}
        ),
        "history": {
            "loss": _series(history, "loss"),
            "removed_tokens_mean": _series(history, "cot_removal/removed_tokens_mean"),
            "accuracy": _series(history, metric),  # on valid.txt, in the evaluation mode of the table
        },
    }
    say(
        f"  {method.label}: {result['steps']} steps in {train_seconds:.0f} s, held-out accuracy "
        f"{result['accuracy']:.3f} ({result['correct']}/{result['n']}, {result['eval']})"
        + (f", after one CoT error {after_error['accuracy']:.3f}" if after_error is not None else "")
    )
    del model, trainer
    return result


def score_examples(model, tokenizer, examples, no_cot: bool, keep_position: bool = False, batch_size: int = 64) -> dict:
    """How the runner scores held-out ICoT problems: greedy :func:`~axolotl_maskthought.eval.evaluation.evaluate_model`
    (``icot`` format, room for the whole CoT and answer), with or without CoT; returns its summary dict."""
    from axolotl_maskthought.eval.evaluation import evaluate_model

    max_new = _max_new_tokens(tokenizer, examples)
    return evaluate_model(
        model,
        tokenizer,
        examples,
        "icot",
        None,
        no_cot,
        batch_size,
        max_new,
        progress=False,
        keep_position=keep_position,
    )


def _max_new_tokens(tokenizer, examples) -> int:
    return 8 + max(len(tokenizer(f" {e.cot} #### {e.answer}")["input_ids"]) for e in examples)


def _series(history: list[dict], key: str) -> list[list[float]]:
    return [[entry["step"], entry[key]] for entry in history if key in entry]


def _run_method_job(
    method: Method, sizes: Sizes, directory: Path, model_dir: Path, seed: int, error_recovery: bool
) -> dict:
    """One arm in a worker process; its progress lines go to the process's stdout (the log)."""
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
    return run_method(method, sizes, directory, model_dir, seed, _printer(sys.stdout), error_recovery)


def run_arms(comparison: Comparison, directory: Path, model_dir: Path, seed: int, say, jobs: int = 1) -> list[dict]:
    """[baseline, treatment] results; with ``jobs`` >= 2 the two arms train side by side, one process
    each (spawned: a fresh interpreter, one torch thread unless MASKTHOUGHT_QUICKSTART_THREADS says)."""
    methods = (comparison.baseline, comparison.treatment)
    sizes = comparison.sizes
    if jobs < 2:
        return [run_method(m, sizes, directory, model_dir, seed, say, comparison.error_recovery) for m in methods]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    for method in methods:
        path = write_config(method, sizes, directory, model_dir, seed)
        say(f"  {method.label}: training as `axolotl train {path}` would (its own process) ...")
    started = time.perf_counter()
    with ProcessPoolExecutor(max_workers=2, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [
            pool.submit(_run_method_job, method, sizes, directory, model_dir, seed, comparison.error_recovery)
            for method in methods
        ]
        results = [future.result() for future in futures]
    for result in results:
        say(
            f"  {result['label']}: {result['steps']} steps in {result['train_seconds']:.0f} s, held-out accuracy "
            f"{result['accuracy']:.3f} ({result['correct']}/{result['n']}, {result['eval']})"
        )
    say(f"  both arms side by side: {time.perf_counter() - started:.0f} s")
    return results


def run(output: Path, comparisons: list[Comparison], seed: int = 0, terminal=None, jobs: int = 1) -> dict:
    """Train and score every comparison (``jobs`` >= 2: both arms of each side by side); write
    ``results.json``; return the summary."""
    say = _printer(terminal or sys.stdout)
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
    output.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    summary = {"seed": seed, "comparisons": []}
    for index, comparison in enumerate(comparisons, 1):
        sizes = comparison.sizes
        directory = output if len(comparisons) == 1 else output / f"comparison{index}"
        directory.mkdir(parents=True, exist_ok=True)
        # axolotl keys prepared data by file path, not content: never reuse an earlier run's.
        shutil.rmtree(directory / "prepared", ignore_errors=True)
        model_dir = prepare(directory, sizes)
        length = f"{sizes.max_steps:,} optimizer steps" if sizes.max_steps else f"x {sizes.epochs} epochs"
        say(
            f"{comparison.title}: {sizes.a_digits}x{sizes.b_digits} multiplication, {sizes.train_rows:,} training "
            f"problems, {length}, {sizes.test_rows} held out; GPT-2 from scratch ({sizes.layers} "
            f"layer{'s' if sizes.layers != 1 else ''}, width {sizes.hidden})"
        )
        results = run_arms(comparison, directory, model_dir, seed, say, jobs)
        summary["comparisons"].append(
            {
                "title": comparison.title,
                "task": f"{sizes.a_digits}x{sizes.b_digits} multiplication (ICoT format)",
                "sizes": asdict(sizes),
                "methods": {result["method"]: comparison_blocks(comparison, result["method"]) for result in results},
                "results": results,
                "verdict": verdict(results[1], results[0]),
            }
        )
    summary["total_seconds"] = round(time.perf_counter() - started, 1)
    (output / "results.json").write_text(json.dumps(summary, indent=2))
    return summary


def comparison_blocks(comparison: Comparison, method_name: str) -> dict:
    """The plugin blocks an arm trained with (for results.json)."""
    method = comparison.treatment if comparison.treatment.name == method_name else comparison.baseline
    return method.blocks


# ---- report -----------------------------------------------------------------------------
def verdict(treatment: dict, baseline: dict) -> str:
    """One sentence from the two measured accuracies (``accuracy``, ``n``, ``label``, ``eval``); a second
    one on the accuracy after an injected CoT error when both results carry ``after_error_accuracy``."""
    sentence = _accuracy_verdict(treatment, baseline)
    if "after_error_accuracy" in treatment and "after_error_accuracy" in baseline:
        sentence += " " + recovery_verdict(treatment, baseline)
    return sentence


def recovery_verdict(treatment: dict, baseline: dict) -> str:
    """How often each answer survived one injected CoT error, and the ratio, from the numbers.

    A difference no larger than two standard errors of the difference of the two proportions
    (``sqrt(p1 (1 - p1) / n1 + p2 (1 - p2) / n2)``, one seed each) is called sampling noise.
    """
    mine, theirs = treatment["after_error_accuracy"], baseline["after_error_accuracy"]
    ratio = f", {mine / theirs:.1f}x" if theirs > 0 else ""
    better = "more" if mine > theirs else "less" if mine < theirs else "as"
    text = (
        f"After one injected CoT error the answer survived {mine:.3f} of the time with {treatment['label']} "
        f"against {theirs:.3f} with {baseline['label']} ({treatment['after_error_n']} problems{ratio})"
    )
    if better == "as":
        return text + ": equal recovery." + _paired_recovery(treatment, baseline)
    two_se = 2 * math.sqrt(
        mine * (1 - mine) / treatment["after_error_n"] + theirs * (1 - theirs) / baseline["after_error_n"]
    )
    if abs(mine - theirs) <= two_se:
        return (
            text + f": a difference of {mine - theirs:+.3f}, within sampling noise (two standard errors "
            f"{two_se:.3f}); no evidence either way." + _paired_recovery(treatment, baseline)
        )
    return text + f": {better} robust to an error in its chain of thought." + _paired_recovery(treatment, baseline)


def _paired_recovery(treatment: dict, baseline: dict) -> str:
    """On the problems both arms answer right without an error, how often each answer survives it
    (the same problems for both, so a lower clean accuracy cannot flatter either); "" without the
    per-problem lists (``clean_correct_each``, ``after_error_correct_each``, one entry per problem)."""
    lists = [
        arm.get(key) for arm in (treatment, baseline) for key in ("clean_correct_each", "after_error_correct_each")
    ]
    if any(item is None for item in lists) or len({len(item) for item in lists}) != 1:
        return ""
    mine_clean, mine_after, theirs_clean, theirs_after = lists
    both = [index for index, (a, b) in enumerate(zip(mine_clean, theirs_clean)) if a and b]
    if not both:
        return ""
    mine = sum(mine_after[index] for index in both) / len(both)
    theirs = sum(theirs_after[index] for index in both) / len(both)
    return (
        f" On the {len(both)} problems both answer right without an error, the answer survived it "
        f"{mine:.3f} of the time with {treatment['label']} against {theirs:.3f} with {baseline['label']}."
    )


def _accuracy_verdict(treatment: dict, baseline: dict) -> str:
    points = 100 * (treatment["accuracy"] - baseline["accuracy"])
    figures = (
        f"{treatment['accuracy']:.3f} vs {baseline['accuracy']:.3f} on {treatment['n']} held-out problems, "
        f"{treatment['eval']}"
    )
    if points > 0:
        return f"{treatment['label']} beat {baseline['label']} by {points:.1f} points ({figures})."
    if points == 0:
        return f"{treatment['label']} did not beat {baseline['label']}: equal accuracy ({figures})."
    return f"{treatment['label']} did not beat {baseline['label']}: {-points:.1f} points lower ({figures})."


def format_table(results: list[dict]) -> str:
    """The comparison as a text table; an ``after error`` column when a result carries one."""
    recovery = any("after_error_accuracy" in r for r in results)
    rows = [
        ("method", "answers", "accuracy", "correct") + (("after error",) if recovery else ()) + ("steps", "train time")
    ]
    rows += [
        (
            r["label"],
            r["eval"],
            f"{r['accuracy']:.3f}",
            f"{r['correct']}/{r['n']}",
        )
        + (
            (
                f"{r['after_error_accuracy']:.3f} ({r['after_error_correct']}/{r['after_error_n']})"
                if "after_error_accuracy" in r
                else "-",
            )
            if recovery
            else ()
        )
        + (str(r["steps"]), f"{r['train_seconds']:.0f} s")
        for r in results
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def plot(summary: dict, path: Path) -> None:
    """Training loss and held-out (validation) accuracy against the optimizer step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    comparisons = summary["comparisons"]
    figure, axes = plt.subplots(len(comparisons), 2, figsize=(10, 3.2 * len(comparisons)), squeeze=False)
    for row, comparison in zip(axes, comparisons):
        for index, result in enumerate(comparison["results"]):
            label = f"{result['label']} ({result['eval']})"
            for axis, key in zip(row, ("loss", "accuracy")):
                if result["history"][key]:
                    steps, values = zip(*result["history"][key])
                    axis.plot(steps, values, color=f"C{index}", marker="." if key == "accuracy" else None, label=label)
        row[0].set_title("training loss", fontsize=9)
        row[1].set_title(f"{comparison['task']}: validation accuracy", fontsize=9)
        row[1].set_ylim(-0.02, 1.02)
        for axis in row:
            axis.set_xlabel("optimizer step")
            if axis.lines:
                axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)


def _printer(stream):
    def say(text: str = "") -> None:
        print(text, file=stream, flush=True)

    return say
