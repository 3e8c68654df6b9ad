"""bench/gpu_check.py --cpu-smoke: the GPU check's code path runs on the CPU, and what it checks holds.

One subprocess run (a tiny Llama, four modes x two rounds, the fused-AdamW reset
check, LoRA) in which importing axolotl fails, as on a GPU machine that has only
torch, transformers and peft; the tests read the JSON it writes.
"""

import importlib
import json
import os
import subprocess
import sys
import warnings
from types import SimpleNamespace

import pytest
import torch
from paths import REPO_ROOT as REPO

MODES = ("off", "masked_thought", "cot_removal", "both")
# Runs bench/gpu_check.py (argv[1]: the bench folder) with every `import axolotl...` failing.
WITHOUT_AXOLOTL = """
import importlib.abc, runpy, sys

class NoAxolotl(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "axolotl":
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)", name=name)

sys.meta_path.insert(0, NoAxolotl())
bench = sys.argv[1]
sys.path.insert(0, bench)
sys.argv = [bench + "/gpu_check.py", *sys.argv[2:]]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run(
        [sys.executable, "-c", WITHOUT_AXOLOTL, str(REPO / "bench"), "--cpu-smoke", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=out,
    )
    assert (out / "gpu_check.json").exists(), proc.stdout[-6000:] + proc.stderr[-6000:]
    return proc, json.loads((out / "gpu_check.json").read_text()), (out / "gpu_check.md").read_text()


@pytest.fixture(scope="module")
def report(run):
    return run[1]


def test_exits_0_with_every_check_passed(run):
    proc, report, _ = run
    failed = [name for name, ok in report["checks"].items() if not ok]
    assert proc.returncode == 0 and report["all_checks_passed"], (failed, report["errors"], proc.stdout[-4000:])


def test_every_mode_ran_in_every_round_in_rotated_order(report):
    runs = report["runs"]
    assert sorted((r["round"], r["mode"]) for r in runs) == sorted((i, m) for i in range(2) for m in MODES)
    first = [next(r["mode"] for r in runs if r["round"] == i and r["position"] == 0) for i in range(2)]
    assert first == ["off", "masked_thought"]
    assert all(r["step_seconds"] > 0 for r in runs)
    assert report["kind"] == "cpu-smoke" and report["errors"] == {}
    assert report["environment"]["axolotl_imported"] is False


def test_every_check_is_reported(report):
    assert set(report["checks"]) == {
        "inputs_and_batches_on_training_device",
        "no_plugin_op_with_host_outputs",
        "transforms_recorded_in_plugin_modes_only",
        "masked_fraction_near_ratio",
        "tokens_removed_in_removal_modes",
        "resets_as_scheduled",
        "fused_adamw_reset_equals_fresh",
        "lora_trains_finite",
        "no_errors",
    }


def test_fused_adamw_reset_equals_a_fresh_optimizer_and_the_control_differs(report):
    reset = report["reset_check"]
    for dtype in ("float32", "bfloat16"):
        assert reset[dtype]["reset_entries"] == 3
        assert reset[dtype]["max_abs_diff_params"] == 0.0
        assert reset[dtype]["max_abs_diff_state"] == 0.0
        assert reset[dtype]["control_max_abs_diff_without_reset"] > 0


def test_counts_are_those_of_each_mode(report):
    modes = report["summary"]["modes"]
    for mode in MODES:
        runs = modes[mode]
        removal = mode in ("cot_removal", "both")
        # 6 steps, the count grows every 2 steps: resets before steps 2 and 4
        assert runs["resets"] == runs["expected_resets"] == ([2, 2] if removal else [0, 0])
        ops = runs["transform_ops_per_step"]
        assert (ops["min"] > 0) if mode != "off" else (ops["max"] == 0)
        assert runs["forward_devices"] == runs["batch_devices"] == ["cpu"]
        assert (runs["removed_tokens_per_row"]["min"] > 0) if removal else (runs["removed_tokens_per_row"]["max"] == 0)
        assert runs["syncs_per_step"] is None  # CUDA only, and said so
    fraction = modes["masked_thought"]["masked_fraction"]["median"]
    assert abs(fraction - report["summary"]["expected_masked_fraction"]) <= 0.1
    assert modes["off"]["plugin_host_reads_per_step"] == 0
    assert any("needs CUDA" in s or "need CUDA" in s for s in report["skipped"])


def test_lora_trains_with_finite_loss(report):
    lora = report["lora"]
    assert len(lora["losses"]) == lora["steps"] == 4
    assert lora["loss_finite"] and lora["adapter_trained"] and lora["base_unchanged"]


def test_markdown_summary_lists_modes_targets_and_checks(run):
    text = run[2]
    for mode in MODES:
        assert f"| {mode} |" in text
    assert "target masked_thought step_time <= 1.01" in text and "**n/a**" in text
    assert "check resets_as_scheduled: pass" in text


def load_bench(name, monkeypatch):
    """A module of bench/ (they import each other by name, as scripts there do)."""
    monkeypatch.syspath_prepend(str(REPO / "bench"))
    return importlib.import_module(name)


def test_a_run_cut_short_still_gives_a_summary_with_failed_checks(report, monkeypatch):
    """The GPU run is one shot: if it dies mid-round, what it measured must still be summarised."""
    gpu_report = load_bench("gpu_report", monkeypatch)
    opts = SimpleNamespace(**report["settings"])
    partial = [run for run in report["runs"] if run["round"] == 0][:2]  # off and masked_thought only
    summary = gpu_report.summarise(partial, opts, "cpu")
    assert summary["ratios_vs_off"]["masked_thought"]["step_time"]["n"] == 1
    assert summary["ratios_vs_off"]["both"]["step_time"] is None
    assert summary["checks"]["masked_fraction_near_ratio"] is True
    assert summary["checks"]["tokens_removed_in_removal_modes"] is False
    assert summary["checks"]["resets_as_scheduled"] is False
    text = gpu_report.markdown({**report, "runs": partial, "summary": summary})
    assert "| both | n/a |" in text


def test_sync_warnings_are_counted_per_check_step_with_their_site(monkeypatch):
    """The CUDA sync counting plumbing, fed torch's warning text on the CPU: only the check
    steps count, one bucket per optimizer step, every warning (no de-duplication), other
    warnings pass through."""
    gpu_probe = load_bench("gpu_probe", monkeypatch)
    sync = gpu_probe.SYNC_WARNING + " (Triggered internally at CUDAFunctions.cpp:1.)"
    probe = gpu_probe.Probe(warmup=1, timed=1, check=2, device=torch.device("cpu"))
    probe.begin(trainer=None)
    with pytest.warns(UserWarning, match="unrelated"):
        warnings.simplefilter("default")  # Python's own: once per line
        with probe.warnings_counted():
            run_steps(probe, sync)
    assert [dict(bucket) for bucket in probe.syncs] == [{"other": 2}, {"other": 1}]
    assert {site.split(":")[0] for site in probe.sync_sites} == {"test_gpu_check.py"}
    assert sum(probe.sync_sites.values()) == 3 and not probe.checking


def run_steps(probe, sync):
    """Step ends 1..4 of a run with 1 warm-up, 1 timed and 2 check steps, warning in between."""
    probe.step_end(1)  # warm-up over: the timed step
    warnings.warn(sync)  # not a check step: not counted
    probe.step_end(2)  # timed step over: check steps begin
    for _ in range(2):
        warnings.warn(sync)
    warnings.warn("unrelated")
    probe.step_end(3)
    warnings.warn(sync)
    probe.step_end(4)  # check steps over
    warnings.warn(sync)
