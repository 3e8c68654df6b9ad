"""`masked_thought.replacement: mask_token` under DeepSpeed ZeRO-3 on CPU, two ranks (gloo):
the `<mask>` input and output rows equal the mean of the existing rows on every rank,
also when the embeddings are partitioned at the moment the rows are written (issue 18).

Two levels:

* the engine's write (``engine.embeddings.init_rows_to_mean``) on a tiny Llama built under
  ``deepspeed.zero.Init`` (``zero3_rows_worker``), beside two deliberately broken writes
  that the same check must catch: on the partitioned placeholders (no gather), and
  gathered without ``modifier_rank`` (DeepSpeed drops the write on exit);
* a real axolotl training run per rank (``ds_worker``), ZeRO-3 from the repository's
  ``examples/deepspeed/zero3.json``, reading the rows when training begins, with the
  embeddings as transformers hands them back after the resize, and with them partitioned
  just before the plugin writes the rows; and that run without the gather, which must fail.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from paths import HELPERS_DIR, REPO_ROOT

pytest.importorskip("deepspeed")

RANKS = 2
TIMEOUT_S = 600  # a hang guard: the two CI legs run side by side, one core each
ROWS_WORKER = HELPERS_DIR / "zero3_rows_worker.py"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_ranks(command: list[str], root: Path, name: str, extra_env: dict | None = None) -> list:
    """Start ``RANKS`` processes of ``command`` (``{rank}`` in it replaced), one gloo group."""
    port = str(_free_port())
    processes = []
    for rank in range(RANKS):
        env = {
            **os.environ,
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(RANKS),
            "LOCAL_WORLD_SIZE": str(RANKS),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": port,
            "DS_ACCELERATOR": "cpu",
            "CUDA_VISIBLE_DEVICES": "",
            "OMP_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join([str(HELPERS_DIR), str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
            **(extra_env or {}),
        }
        log = root / f"{name}.rank{rank}.log"
        with open(log, "w") as handle:
            process = subprocess.Popen(
                [sys.executable, *(part.format(rank=rank) for part in command)],
                cwd=root,
                env=env,
                stdout=handle,
                stderr=subprocess.STDOUT,
            )
        processes.append((process, log))
    return processes


def finish_ranks(processes: list, timeout: float = TIMEOUT_S) -> list[int]:
    """Wait for every rank; their exit codes (a rank past ``timeout`` is killed: -9)."""
    codes = []
    for process, _ in processes:
        try:
            codes.append(process.wait(timeout=timeout))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            codes.append(-9)
    return codes


def mask_row_problems(record: dict) -> list[str]:
    """What is wrong with one rank's record: an error, no matrices read, or a new row
    that is not the mean of the existing rows (tolerance 1e-6; the write is exact)."""
    if record.get("error"):
        return [f"rank {record.get('rank')}: {record['error']}"]
    matrices = record.get("matrices") or []
    if not matrices:
        return [f"rank {record.get('rank')}: no embedding matrix read"]
    problems = []
    for index, matrix in enumerate(matrices):
        for row in matrix["new_rows"]:
            gap = max(abs(value - mean) for value, mean in zip(row, matrix["mean"]))
            if gap > 1e-6:
                problems.append(f"rank {record['rank']} matrix {index}: new row differs from the mean by {gap:.3g}")
    return problems


# ---- the engine's write on a model built partitioned ----------------------------------------
ENGINE_VARIANTS = ("engine", "no_gather", "no_modifier")


@pytest.fixture(scope="module")
def engine_runs(tmp_path_factory):
    """variant -> the record of every rank; the three variants run at once."""
    root = tmp_path_factory.mktemp("zero3_rows")
    started = {
        variant: start_ranks([str(ROWS_WORKER), variant, str(root / f"{variant}.rank{{rank}}.json")], root, variant)
        for variant in ENGINE_VARIANTS
    }
    records = {}
    for variant, processes in started.items():
        finish_ranks(processes)
        records[variant] = []
        for rank, (_, log) in enumerate(processes):
            path = root / f"{variant}.rank{rank}.json"
            records[variant].append(
                json.loads(path.read_text()) if path.exists() else {"rank": rank, "error": log.read_text()[-3000:]}
            )
    return records


def test_engine_write_under_zero3_is_the_mean_on_every_rank(engine_runs):
    records = engine_runs["engine"]
    assert [record["rank"] for record in records] == list(range(RANKS))
    for record in records:
        assert record["partitioned"] == [True, True], "the embeddings were not partitioned: nothing tested"
        assert [matrix["shape"] for matrix in record["matrices"]] == [[98, 16], [98, 16]]
    assert [mask_row_problems(record) for record in records] == [[]] * RANKS


def test_a_write_on_the_partitioned_placeholders_is_caught(engine_runs):
    rank0 = engine_runs["no_gather"][0]
    assert "partitioned (ZeRO-3) parameter must be gathered first" in rank0.get("error", ""), rank0
    assert all(mask_row_problems(record) for record in engine_runs["no_gather"])


def test_a_gather_that_drops_the_write_is_caught(engine_runs):
    records = engine_runs["no_modifier"]
    assert not any(record.get("error") for record in records), records
    assert all(mask_row_problems(record) for record in records)  # the rows kept their resize values


# ---- a real axolotl run per rank -----------------------------------------------------------
DS_WORKER = HELPERS_DIR / "ds_worker.py"
ZERO3 = REPO_ROOT / "examples" / "deepspeed" / "zero3.json"
# case -> extra environment of the worker
AXOLOTL_CASES = {
    "as_loaded": {},  # the embeddings as transformers hands them back after the resize
    "partitioned": {"DS_WORKER_PARTITION_EMBEDDINGS": "1"},
    "partitioned_no_gather": {"DS_WORKER_PARTITION_EMBEDDINGS": "1", "DS_WORKER_SKIP_GATHER": "1"},
}


@pytest.fixture(scope="module")
def axolotl_runs(tmp_path_factory):
    """case -> (exit codes, per-rank records, log tails); every case's ranks start at once."""
    import yaml

    from axolotl_maskthought.data.files import write_lines
    from axolotl_maskthought.data.generators import generate_multiplication
    from axolotl_maskthought.toy.tiny import OFFLINE_ENV, build_tiny, cpu_config

    root = tmp_path_factory.mktemp("zero3_axolotl")
    lines = generate_multiplication(2, 2, 16, seed=5)
    data = root / "mult_2x2.txt"
    write_lines(data, lines)
    texts = [line.replace("||", " ").replace("####", " #### ") for line in lines]
    base_model = build_tiny(root / "model", texts, vocab_size=256, arch="llama")
    started = {}
    for case, case_env in AXOLOTL_CASES.items():
        config = cpu_config(
            base_model,
            [{"path": str(data), "type": "axolotl_maskthought.strategies.icot"}],
            root / f"out-{case}",
            plugins=[
                "ds_worker.PartitionEmbeddingsPlugin",  # wraps our pre_lora_load (see its docstring)
                "axolotl_maskthought.MaskThoughtPlugin",
                "ds_worker.StepRecorderPlugin",
            ],
            masked_thought={"ratio": 0.4, "replacement": "mask_token", "warmup": 0},
            deepspeed=str(ZERO3),
            sequence_len=128,
            micro_batch_size=2,
            max_steps=2,
        )
        path = root / f"{case}.yml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        command = [str(DS_WORKER), str(path), str(root / f"{case}.rank{{rank}}.json")]
        started[case] = start_ranks(command, root, case, {**OFFLINE_ENV, **case_env})
    runs = {}
    for case, processes in started.items():
        codes = finish_ranks(processes, timeout=600)
        records = []
        for rank, (_, log) in enumerate(processes):
            path = root / f"{case}.rank{rank}.json"
            records.append(json.loads(path.read_text()) if path.exists() else {})
        runs[case] = (codes, records, [log.read_text()[-3000:] for _, log in processes])
    return runs


def _rows_records(run) -> list[dict]:
    """Each rank's mask-row record, or its error."""
    codes, records, logs = run
    rows = []
    for rank, record in enumerate(records):
        error = record.get("error") or (None if codes[rank] == 0 else f"exit code {codes[rank]}: {logs[rank]}")
        rows.append({"rank": rank, "error": error} if error else record["mask_rows"])
    return rows


@pytest.mark.parametrize("case", ["as_loaded", "partitioned"])
def test_axolotl_zero3_mask_rows_are_the_mean_on_every_rank(axolotl_runs, case):
    codes, records, logs = axolotl_runs[case]
    assert codes == [0] * RANKS, f"{case}: exit codes {codes}\n" + "\n".join(
        f"rank {rank}: {record.get('error')}\n{record.get('traceback', '')}\n{log}"
        for rank, (record, log) in enumerate(zip(records, logs))
    )
    for record in records:
        assert record["zero_stage"] == 3 and record["global_step"] == 2
        assert len(record["mask_rows"]["matrices"]) == 2  # input and output embeddings (untied)
        assert record["mask_rows"]["token_id"] == record["mask_rows"]["existing_rows"]  # one row added
    print(case, "embeddings partitioned as loaded:", [r["embeddings_partitioned_as_loaded"] for r in records])
    if case == "partitioned":  # the plugin really wrote through the gather
        assert all(record["embeddings_partitioned_at_write"] == [True, True] for record in records)
    rows = _rows_records(axolotl_runs[case])
    assert [record["rank"] for record in rows] == list(range(RANKS))
    assert [mask_row_problems(record) for record in rows] == [[]] * RANKS


def test_axolotl_zero3_write_without_the_gather_is_caught(axolotl_runs):
    """The same run with the gather taken out: the check above must fail."""
    rows = _rows_records(axolotl_runs["partitioned_no_gather"])
    assert all(mask_row_problems(record) for record in rows), rows
    assert any("must be gathered first" in (record.get("error") or "") for record in rows), rows
