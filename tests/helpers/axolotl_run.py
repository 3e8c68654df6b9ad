"""Run axolotl end to end on a tiny local model and record what the model receives.

Shared by the end-to-end tests (Masked Thought, CoT removal). Nothing here is a
mock: axolotl loads the YAML, the data and the model itself; :class:`CapturePlugin`
(listed in ``plugins:`` after ours) only watches, through a forward pre-hook on
the trainer's model, so the recorded tensors are exactly the model's inputs after
every transform the plugin applies.

Usage::

    base = build_base_model(tmp / "model", texts)
    config = write_config(tmp / "run.yml", base_model=base, datasets=[...],
                          output_dir=tmp / "out", masked_thought={"ratio": 0.4})
    run = run_in_process(config)        # or run_cli(["train", config])
    run.train_forwards[0]["input_ids"]  # (B, T) tensor the model got
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from axolotl.integrations.base import BasePlugin
from paths import HELPERS_DIR

from axolotl_maskthought.data.files import read_jsonl  # noqa: F401  (the tests read their rows through it)
from axolotl_maskthought.toy.tiny import OFFLINE_ENV, cpu_config

MASKTHOUGHT_PLUGIN = "axolotl_maskthought.MaskThoughtPlugin"
CAPTURE_PLUGIN = "axolotl_run.CapturePlugin"
RECORDED_KEYS = ("input_ids", "labels", "attention_mask", "position_ids")

CAPTURE_ENV = "AXOLOTL_RUN_CAPTURE"
RUN_THREADS = 1  # torch intra-op threads for runs (see run_in_process)

for _key, _value in OFFLINE_ENV.items():  # never reach the network, whoever imports this
    os.environ.setdefault(_key, _value)

# Filled by CapturePlugin during a run; reset by run_in_process.
FORWARDS: list[dict] = []  # one dict per forward call: RECORDED_KEYS (cpu tensors) + "training"
EVENTS: list[str] = []  # plugin hooks in call order
STATE: dict = {}  # "trainer", "embeddings" (input/output rows at trainer creation)


def forward_record(module, args, kwargs, keys) -> dict:
    """CPU copies of a forward call's ``keys`` (``input_ids`` may come positionally)
    and whether the module was training; for ``register_forward_pre_hook(with_kwargs=True)``."""
    values = dict(kwargs)
    if args and "input_ids" not in values:
        values["input_ids"] = args[0]
    entry = {"training": bool(module.training)}
    for key in keys:
        value = values.get(key)
        entry[key] = value.detach().cpu().clone() if value is not None else None
    return entry


@contextmanager
def logged_records(logger_name: str):
    """The ``logging.LogRecord`` list that ``logger_name`` emits inside the ``with`` block."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger(logger_name)
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)


def _record_forward(module, args, kwargs):
    FORWARDS.append(forward_record(module, args, kwargs, RECORDED_KEYS))


class CapturePlugin(BasePlugin):
    """Records hook order, the trainer, the embeddings at trainer creation and every forward.

    In a subprocess run (``run_cli``) the record is written with ``torch.save`` to the
    file named by ``$AXOLOTL_RUN_CAPTURE`` after training; read it with :func:`load_capture`.
    """

    def pre_model_load(self, cfg):
        EVENTS.append("pre_model_load")

    def post_model_load(self, cfg, model):
        EVENTS.append("post_model_load")

    def post_trainer_create(self, cfg, trainer):
        EVENTS.append("post_trainer_create")
        STATE["trainer"] = trainer
        model = trainer.model
        output = model.get_output_embeddings()
        STATE["embeddings"] = {
            "input": model.get_input_embeddings().weight.detach().cpu().clone(),
            "output": output.weight.detach().cpu().clone() if output is not None else None,
        }
        model.register_forward_pre_hook(_record_forward, with_kwargs=True)

    def post_train(self, cfg, model):
        EVENTS.append("post_train")
        target = os.environ.get(CAPTURE_ENV)
        if target:
            import torch

            trainer = STATE.get("trainer")
            torch.save(
                {
                    "forwards": FORWARDS,
                    "events": EVENTS,
                    "embeddings": STATE.get("embeddings"),
                    "log_history": list(trainer.state.log_history) if trainer is not None else [],
                },
                target,
            )


@dataclass
class RunResult:
    """What one run recorded. ``trainer`` is None for subprocess runs."""

    forwards: list[dict] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    log_history: list[dict] = field(default_factory=list)
    embeddings: dict | None = None
    trainer: object = None

    @property
    def train_forwards(self) -> list[dict]:
        return [f for f in self.forwards if f["training"]]

    @property
    def eval_forwards(self) -> list[dict]:
        return [f for f in self.forwards if not f["training"]]

    def logged(self, key: str) -> list[float]:
        """Values of ``key`` over the training log, in order (one per logging step)."""
        return [entry[key] for entry in self.log_history if key in entry]


# ---- inputs -----------------------------------------------------------------------
def build_base_model(directory: Path, texts: Iterable[str], vocab_size: int = 512, **model_kwargs) -> Path:
    """A tiny Llama and its byte-level BPE tokenizer, saved as an axolotl ``base_model``."""
    from axolotl_maskthought.toy.tiny import build_tiny

    return build_tiny(directory, list(texts), vocab_size=vocab_size, arch="llama", **model_kwargs)


def write_jsonl(path: Path, rows: Iterable[dict]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
    return path


def save_prepared_in_process(cfg, dataset, dataset_hash, split) -> None:
    """Stand-in for axolotl's ``save_preprocessed_dataset``: the same files, written in
    this process (``datasets``' ``save_to_disk`` starts a spawn pool even with
    ``num_proc=1``, which re-imports torch and axolotl: tens of seconds a run here)."""
    from axolotl.utils.data import shared

    path = shared.get_prepared_dataset_path(cfg, dataset_hash)
    path.mkdir(parents=True, exist_ok=True)
    dataset.save_to_disk(str(path))


def base_config(base_model: Path, datasets: list[dict], output_dir: Path, **extra) -> dict:
    """A small CPU config with our plugin and the capture plugin; ``extra`` keys override.

    ``dataset_prepared_path`` defaults to ``output_dir/../prepared-<name>`` so runs never
    write axolotl's default ``last_run_prepared`` into the working directory.
    """
    extra.setdefault("plugins", [MASKTHOUGHT_PLUGIN, CAPTURE_PLUGIN])
    extra.setdefault("max_steps", 4)
    return cpu_config(base_model, datasets, output_dir, **extra)


def write_config(path: Path, base_model: Path, datasets: list[dict], output_dir: Path, **extra) -> Path:
    """Write :func:`base_config` as YAML; a key given as ``None`` in ``extra`` is left out."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(base_config(base_model, datasets, output_dir, **extra), sort_keys=False))
    return path


def gsm8k_dataset(path: Path) -> dict:
    return {"path": str(path), "ds_type": "json", "type": "axolotl_maskthought.strategies.gsm8k"}


# ---- running ----------------------------------------------------------------------
def reset_plugins() -> None:
    """Forget plugins registered by earlier runs in this process (a fresh process has none)
    and what the capture plugin recorded."""
    from axolotl.integrations.base import PluginManager

    FORWARDS.clear()
    EVENTS.clear()
    STATE.clear()
    PluginManager.get_instance().plugins.clear()


def run_in_process(config_path: Path, **overrides) -> RunResult:
    """What ``axolotl train`` does, in this process (the package's one in-process runner,
    :func:`axolotl_maskthought.toy.experiment.train_in_process`); returns the trainer and forwards.

    An exception raised by axolotl (or by a plugin) propagates; ``EVENTS`` then
    shows how far the run got. Leaves torch at ``RUN_THREADS`` threads.
    """
    import gc

    import torch

    from axolotl_maskthought.toy.experiment import train_in_process

    reset_plugins()
    # One intra-op thread: on a small shared CPU, two threads spin-waiting for each
    # other's tiny matmuls cost 10-20x the CPU time of one.
    torch.set_num_threads(RUN_THREADS)
    # axolotl calls gc.collect() several times a run; with torch, transformers and
    # earlier runs' records on the heap each call costs ~1 s of CPU. Objects alive now
    # are kept out of the collector's sight for the run.
    gc.collect()
    gc.freeze()
    try:
        train_in_process(config_path, **overrides)
    finally:
        gc.unfreeze()
    trainer = STATE.get("trainer")
    return RunResult(
        forwards=list(FORWARDS),
        events=list(EVENTS),
        log_history=list(trainer.state.log_history) if trainer is not None else [],
        embeddings=STATE.get("embeddings"),
        trainer=trainer,
    )


def load_capture(path: Path) -> RunResult:
    """The record a subprocess run wrote to ``$AXOLOTL_RUN_CAPTURE``."""
    import torch

    record = torch.load(path, weights_only=False)
    return RunResult(
        forwards=record["forwards"],
        events=record["events"],
        log_history=record["log_history"],
        embeddings=record["embeddings"],
    )


# ---- reading what the model received ---------------------------------------------
def segments(forward: dict) -> list[tuple[int, int, int]]:
    """(row, start, end) of each example in a captured batch, trailing padding cut.

    Packed rows restart ``position_ids`` at 0 for each example; an unpacked row is one
    example. An example ends at its last trained position (labels != -100), so padding
    (and an all-padding segment) is left out.
    """
    labels = forward["labels"]
    position_ids = forward.get("position_ids")
    found = []
    for row in range(labels.shape[0]):
        if position_ids is not None:
            starts = (position_ids[row] == 0).nonzero().flatten().tolist()
        else:
            starts = [0]
        bounds = starts + [labels.shape[1]]
        for start, end in zip(bounds, bounds[1:]):
            trained = (labels[row, start:end] != -100).nonzero().flatten()
            if len(trained):
                found.append((row, start, start + int(trained[-1]) + 1))
    return found


def clean_examples(forward: dict, dataset) -> list[tuple[int, int, int, dict]]:
    """Each example of a captured batch with the tokenized dataset row it came from:
    (row, start, end, dataset_row). Matched by labels, which Masked Thought leaves
    alone (after CoT removal, match on the prompt instead)."""
    by_labels = {}
    for example in dataset:
        labels = list(example["labels"])
        while labels and labels[-1] == -100:
            labels.pop()
        by_labels[tuple(labels)] = example
    matched = []
    for row, start, end in segments(forward):
        key = tuple(forward["labels"][row, start:end].tolist())
        if key not in by_labels:
            raise AssertionError(f"batch row {row} [{start}:{end}] matches no dataset example")
        matched.append((row, start, end, by_labels[key]))
    return matched


def run_cli(
    args: list, cwd: Path, capture_file: Path | None = None, timeout: float = 600
) -> subprocess.CompletedProcess:
    """The real ``axolotl`` console script in a subprocess (``tests/`` on PYTHONPATH for
    the capture plugin, which saves its record to ``capture_file``). Returns the
    completed process, stdout and stderr combined in ``.stdout``."""
    executable = Path(sys.executable).with_name("axolotl")
    env = {**os.environ, **OFFLINE_ENV}
    env.pop(CAPTURE_ENV, None)
    env.setdefault("OMP_NUM_THREADS", str(RUN_THREADS))
    if capture_file is not None:
        env[CAPTURE_ENV] = str(capture_file)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HELPERS_DIR), env.get("PYTHONPATH")]))
    return subprocess.run(
        [str(executable), *map(str, args)],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
        check=False,
    )
