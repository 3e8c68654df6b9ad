"""CoT removal with optimizer resets and Masked Thought under a real DeepSpeed engine on CPU.

Each case is one ``axolotl.cli.train.do_cli`` run in a subprocess (``ds_worker.py``),
with our plugin and the recording plugin ``ds_worker.StepRecorderPlugin``, a tiny Llama
and 40 ICoT 2x2 multiplication lines, using the repository's DeepSpeed configs
(``examples/deepspeed/*.json``) unmodified. With 10 micro-batches per epoch and
``tokens_per_epoch: 3`` the removal count grows every 3 optimizer steps (0,0,0,1,1,1,
2,2,2,3); after each optimizer step the worker reads the Adam step counters of the
optimizer that owns the state (torch AdamW inside ZeRO-2/3, DeepSpeedCPUAdam with
offload), so a reset shows as the counter dropping back to 1.

The three runs start together (one intra-op thread each) to keep the wall time of
the file within budget on a 2-core machine; each has its own 600 s deadline (the
offload case 300 s more when DeepSpeed's cpu_adam op still has to be compiled). See
``ds_worker`` for what axolotl 0.19 + DeepSpeed needs on a CPU-only machine.
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from paths import HELPERS_DIR, REPO_ROOT

from axolotl_maskthought.toy.tiny import cpu_config

EXAMPLES = REPO_ROOT / "examples" / "deepspeed"
WORKER = HELPERS_DIR / "ds_worker.py"
TIMEOUT_S = 600  # a hang guard: the two CI legs run side by side, one core each
# The offload case JIT-builds DeepSpeed's cpu_adam op on first use (a minute or two on
# 2 cores); a cold torch_extensions cache gets this much longer.
COLD_BUILD_S = 300

ROWS = 40
MICRO_BATCH = 4
TOKENS_PER_EPOCH = 3  # round(10 micro-batches / 3) = an increment every 3 steps
EXPECTED_COUNTS = [0, 0, 0, 1, 1, 1, 2, 2, 2, 3]

# case -> (DeepSpeed config, ZeRO stage, ZeRO optimizer class, state-owning optimizer, offload device)
CASES = {
    "zero2": ("zero2.json", 2, "DeepSpeedZeroOptimizer", "AdamW", None),
    "zero3": ("zero3.json", 3, "DeepSpeedZeroOptimizer_Stage3", "AdamW", None),
    "zero3_offload": ("zero3_offload.json", 3, "DeepSpeedZeroOptimizer_Stage3", "DeepSpeedCPUAdam", "cpu"),
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _cpu_adam_cached() -> bool:
    from torch.utils.cpp_extension import get_default_build_root

    root = Path(os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root())
    return any(root.glob("*/cpu_adam/cpu_adam*.so"))


def _config(root: Path, base_model: Path, data: Path, case: str) -> Path:
    config = cpu_config(
        base_model,
        [{"path": str(data), "type": "axolotl_maskthought.strategies.icot"}],
        root / f"out-{case}",
        plugins=["axolotl_maskthought.MaskThoughtPlugin", "ds_worker.StepRecorderPlugin"],
        dataset_prepared_path=str(root / f"prepared-{case}"),  # runs are concurrent
        masked_thought={"ratio": 0.4, "replacement": "random", "warmup": 0},
        cot_removal={"tokens_per_epoch": TOKENS_PER_EPOCH, "smoothing_lambda": None, "reset_optimizer": True},
        deepspeed=str(EXAMPLES / CASES[case][0]),
        sequence_len=128,
        micro_batch_size=MICRO_BATCH,
    )
    path = root / f"{case}.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Start every case's worker at once; yields case -> (process, record, log, timeout, deadline)."""
    pytest.importorskip("deepspeed")
    from axolotl_maskthought.data.files import write_lines
    from axolotl_maskthought.data.generators import generate_multiplication
    from axolotl_maskthought.toy.tiny import build_tiny

    root = tmp_path_factory.mktemp("deepspeed_e2e")
    lines = generate_multiplication(2, 2, ROWS, seed=3)
    data = root / "mult_2x2.txt"
    write_lines(data, lines)
    texts = [line.replace("||", " ").replace("####", " #### ") for line in lines]
    base_model = build_tiny(root / "model", texts, vocab_size=256, arch="llama")

    started = {}
    cold = not _cpu_adam_cached()
    for case in CASES:
        env = dict(os.environ)
        env.update(
            DS_ACCELERATOR="cpu",
            CUDA_VISIBLE_DEVICES="",
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(_free_port()),
            RANK="0",
            LOCAL_RANK="0",
            WORLD_SIZE="1",
            LOCAL_WORLD_SIZE="1",
            OMP_NUM_THREADS="1",
            HF_HUB_OFFLINE="1",
            HF_DATASETS_OFFLINE="1",
            TRANSFORMERS_OFFLINE="1",
            AXOLOTL_DO_NOT_TRACK="1",
            WANDB_MODE="disabled",
            TOKENIZERS_PARALLELISM="false",
        )
        config = _config(root, base_model, data, case)
        record, log = root / f"{case}.json", root / f"{case}.log"
        with open(log, "w") as handle:  # a file, not a pipe: nobody reads while they run
            process = subprocess.Popen(
                [sys.executable, str(WORKER), str(config), str(record)],
                cwd=root,
                env=env,
                stdout=handle,
                stderr=subprocess.STDOUT,
            )
        timeout = TIMEOUT_S + (COLD_BUILD_S if cold and CASES[case][4] else 0)
        started[case] = (process, record, log, timeout, time.monotonic() + timeout)
    yield started
    for process, *_ in started.values():
        if process.poll() is None:
            process.kill()
            process.wait()


def _finish(runs, case) -> dict:
    process, record, log, timeout, deadline = runs[case]
    try:
        process.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        pytest.fail(f"{case}: no result within {timeout} s\n{log.read_text()[-4000:]}")
    result = json.loads(record.read_text()) if record.exists() else {}
    assert process.returncode == 0 and "error" not in result, (
        f"{case} failed (exit code {process.returncode}): {result.get('error')}\n"
        f"{result.get('traceback', '')}\nlog tail:\n{log.read_text()[-4000:]}"
    )
    return result


def expected_adam_steps(counts: list[int]) -> list[int]:
    """Adam's step after each optimizer step when the state is reset wherever the count grew."""
    steps = []
    for index, count in enumerate(counts):
        restarted = index == 0 or count > counts[index - 1]
        steps.append(1 if restarted else steps[-1] + 1)
    return steps


def test_expected_adam_steps():
    assert expected_adam_steps([0, 0, 1, 1, 1, 3]) == [1, 2, 1, 2, 3, 1]


@pytest.mark.parametrize("case", list(CASES))
def test_deepspeed_reset_and_masking(runs, case):
    result = _finish(runs, case)
    _, stage, zero_optimizer, inner_optimizer, offload = CASES[case]

    # A real DeepSpeed engine, with the stage and optimizers the config asks for.
    assert result["is_deepspeed_enabled"]
    assert result["zero_stage"] == stage
    assert result["chain"][-2:] == [zero_optimizer, inner_optimizer], result["chain"]
    assert result["offload_optimizer"] == offload

    # Training completed with the intended schedule.
    assert result["micro_batches_per_epoch"] == ROWS // MICRO_BATCH
    assert result["global_step"] == result["max_steps"] == len(EXPECTED_COUNTS)
    records = result["steps"]
    assert [r["step"] for r in records] == list(range(len(EXPECTED_COUNTS)))
    counts = [r["count"] for r in records]
    assert counts == EXPECTED_COUNTS
    assert result["applied_counts"] == {str(step): count for step, count in enumerate(counts)}

    # The Adam step restarts exactly where the count grew, and grows by one otherwise.
    for r in records:
        assert len(r["adam_steps"]) == 1, f"step {r['step']}: parameters disagree: {r['adam_steps']}"
    adam = [r["adam_steps"][0] for r in records]
    assert adam == expected_adam_steps(counts), list(zip(counts, adam))
    increments = [s for s in range(1, len(counts)) if counts[s] > counts[s - 1]]
    assert [s for s in range(len(adam)) if s and adam[s] == 1] == increments == [3, 6, 9]

    # The trainer's logs: finite loss, Masked Thought active, a reset logged at each increment.
    logs = [entry for entry in result["log_history"] if "loss" in entry]
    assert len(logs) == len(EXPECTED_COUNTS)
    assert result["losses_finite"] and all(math.isfinite(entry["loss"]) for entry in logs)
    fractions = [entry["masked_thought/masked_fraction"] for entry in logs]
    assert all(0.2 < fraction < 0.6 for fraction in fractions), fractions  # ratio 0.4
    reset_steps = [entry["step"] - 1 for entry in logs if "cot_removal/optimizer_reset" in entry]
    assert reset_steps == increments
