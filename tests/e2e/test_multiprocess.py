"""Two data-parallel processes on CPU (torch DDP over gloo), both techniques on.

The real user command runs: ``axolotl train cfg.yml --launcher torchrun --
--nproc_per_node 2``. A watching plugin (``tests/mp_capture.py``) writes what each
rank did. Every rank must follow the same CoT-removal schedule and reset its
optimizer at the same steps (else DDP would hang on the collective in the reset
check, or the replicas would drift apart), while the masks and the smoothing
offsets, drawn per rank, differ.

Three things only a CPU-only machine needs, set in the environment of this test:
- ``ACCELERATE_USE_CPU=true``: without it transformers' TrainingArguments builds
  accelerate's ``PartialState`` without ``cpu=True``, accelerate then finds no GPU
  backend (accelerate/state.py ``_prepare_backend``), ``parallel_mode`` is not
  DISTRIBUTED and each process trains alone on the whole dataset (no DDP, no
  distributed sampler).
- ``MASKTHOUGHT_CAPTURE_CPU_ONLY=1``, two workarounds in the capture plugin:
  - axolotl sets ``device_map = {"": LOCAL_RANK}`` whenever WORLD_SIZE > 1
    (0.19: axolotl/utils/config/__init__.py:229-230); on CPU transformers refuses the
    ordinal ("Cannot access accelerator device when none is available",
    transformers/modeling_utils.py:5026). The plugin puts the model on the CPU instead.
  - axolotl's start-up P2P probe (``utils/environment.py: check_cuda_p2p_support``,
    run by ``prepare_optim_env`` in every rank) calls
    ``torch.cuda.can_device_access_peer`` and tolerates only the AssertionError of a CPU
    build of torch. The 0.21 stack's torch from PyPI is a CUDA build, which raises
    "Found no NVIDIA driver" on this machine; the plugin makes the probe answer as on
    a CPU build when torch sees no CUDA device. No environment variable of axolotl or
    torch avoids the call; a CPU user of 0.21 installs the CPU build of torch instead.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mp_capture import arithmetic_workspace
from paths import HELPERS_DIR
from processes import free_port

from axolotl_maskthought.toy.tiny import OFFLINE_ENV, cpu_config

TIMEOUT_SECONDS = 420
ROWS = 40
MAX_STEPS = 8


def _config(tmp: Path) -> Path:
    data, model = arithmetic_workspace(
        tmp, ROWS, seed=3, terms=4, vocab_size=300, arch="llama", hidden=32, layers=2, heads=2
    )
    config = cpu_config(
        model,
        [{"path": str(data), "ds_type": "json", "type": "axolotl_maskthought.strategies.gsm8k"}],
        tmp / "out",
        plugins=["axolotl_maskthought.MaskThoughtPlugin", "mp_capture.CapturePerRank"],
        masked_thought={"ratio": 0.4, "replacement": "random", "warmup": 0},
        # 20 rows per rank / micro-batch 2 = 10 micro-batches per epoch; Δ 5 -> one more
        # token every 2 steps: counts 0,0,1,1,2,2,3,3 and resets at steps 2, 4, 6.
        # λ 1 makes the per-example smoothing offsets (drawn per rank) often non-zero.
        cot_removal={"tokens_per_epoch": 5, "smoothing_lambda": 1, "side": "left", "reset_optimizer": True},
        cot_format={"prompt_template": "plain"},
        dataset_prepared_path=str(tmp / "prepared"),
        sequence_len=256,
        micro_batch_size=2,
        max_steps=MAX_STEPS,
        dataset_num_proc=None,
    )
    path = tmp / "ddp.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    tmp = tmp_path_factory.mktemp("ddp")
    config = _config(tmp)
    capture = tmp / "capture"
    bin_dir = str(Path(sys.executable).parent)
    # Chosen per run: CI runs both stacks' suites at once, and two rendezvous on one port hang.
    port = str(free_port())
    env = {
        **os.environ,
        "PATH": os.pathsep.join([bin_dir, os.environ.get("PATH", "")]),  # axolotl execs `torchrun`
        "PYTHONPATH": os.pathsep.join(filter(None, [str(HELPERS_DIR), os.environ.get("PYTHONPATH")])),
        **OFFLINE_ENV,
        "OMP_NUM_THREADS": "1",
        "ACCELERATE_USE_CPU": "true",
        "MASKTHOUGHT_CAPTURE_CPU_ONLY": "1",
        "MASKTHOUGHT_CAPTURE_DIR": str(capture),
        "MASTER_PORT": port,
    }
    command = [
        str(Path(bin_dir) / "axolotl"),
        "train",
        str(config),
        "--launcher",
        "torchrun",
        "--",
        "--nproc_per_node",
        "2",
        "--master_port",
        port,
    ]
    # Own process group, so that a hang is ended with torchrun's workers too.
    process = subprocess.Popen(
        command, cwd=tmp, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        output, _ = process.communicate(timeout=TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        pytest.fail(f"2-process run did not finish in {TIMEOUT_SECONDS}s (hang?):\n{output[-4000:]}")
    if process.returncode != 0:
        pytest.fail(f"2-process run failed ({process.returncode}):\n{output[-6000:]}")
    files = sorted(capture.glob("rank*.json"))
    assert [f.name for f in files] == ["rank0.json", "rank1.json"], output[-3000:]
    return [json.loads(f.read_text()) for f in files]


def test_runs_as_ddp_over_gloo(ranks):
    for rank, record in enumerate(ranks):
        assert record["rank"] == rank
        assert record["world_size"] == 2
        assert record["backend"] == "gloo"
        assert record["parallel_mode"] == "ParallelMode.DISTRIBUTED"
        assert record["global_step"] == MAX_STEPS
        # Each rank sees half of the data: 20 rows in micro-batches of 2.
        assert record["micro_batches_per_epoch"] == ROWS // 2 // 2


def test_same_schedule_and_resets_on_every_rank(ranks):
    expected = {str(step): step // 2 for step in range(MAX_STEPS)}
    for record in ranks:
        assert record["applied_counts"] == expected
        assert record["resets"] == [2, 4, 6]
    # Replicas stay identical only if both ranks took the same steps from the same state.
    assert ranks[0]["param_checksum"] == ranks[1]["param_checksum"]


def test_removal_follows_the_count_with_per_rank_offsets(ranks):
    for record in ranks:
        assert sorted(record["removed"], key=int) == [str(step) for step in range(MAX_STEPS)]
        for step, micro_batches in record["removed"].items():
            count = record["applied_counts"][step]
            for removed_per_example in micro_batches:
                assert len(removed_per_example) == 2
                assert all(removed >= count for removed in removed_per_example)
    offsets = [
        [
            removed - record["applied_counts"][step]
            for step in sorted(record["removed"], key=int)
            for batch in record["removed"][step]
            for removed in batch
        ]
        for record in ranks
    ]
    assert any(offsets[0]) and any(offsets[1]), "λ 1 should give some non-zero smoothing offsets"
    assert offsets[0] != offsets[1]


def test_masks_differ_between_ranks(ranks):
    first, second = (record["mask_hashes"] for record in ranks)
    assert sorted(first, key=int) == sorted(second, key=int) == [str(step) for step in range(MAX_STEPS)]
    for step in first:
        assert len(first[step]) == len(second[step]) == 1
        assert first[step] != second[step], f"step {step}: both ranks masked the same positions"
