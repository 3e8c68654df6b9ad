"""Figures and verdicts of bench/gpu_check.py: ratios against ``off``, checks, targets, markdown."""

from __future__ import annotations

import collections
import json

from common import spread
from gpu_probe import PACKAGE

MODES = ("off", "masked_thought", "cot_removal", "both")
TARGETS = [
    ("masked_thought", "step_time", 1.01),
    ("cot_removal", "step_time", 1.00),
    ("masked_thought", "peak_memory", 1.01),
    ("cot_removal", "peak_memory", 1.01),
    ("both", "peak_memory", 1.01),
]


def summarise(runs: list[dict], opts, device_type: str) -> dict:
    """Ratios against ``off`` of the same round, per-mode figures and the pass/fail checks."""
    rounds = collections.defaultdict(dict)
    for run in runs:
        rounds[run["round"]][run["mode"]] = run
    ratios = {
        mode: {
            metric: spread(
                r[mode][key] / r["off"][key]
                for r in rounds.values()
                if mode in r and "off" in r and r["off"][key] and r[mode][key] is not None
            )
            for metric, key in (("step_time", "step_seconds"), ("peak_memory", "peak_bytes"))
        }
        for mode in MODES[1:]
    }
    modes = {}
    for mode in MODES:
        mine = [run for run in runs if run["mode"] == mode]
        steps = [step for run in mine for step in run["syncs_per_step"] or []]
        check_steps = sum(run["check_steps"] for run in mine)
        sites, reads = collections.Counter(), collections.Counter()
        for run in mine:
            sites.update(run["sync_sites"])
            reads.update(run["host_reads"])
        modes[mode] = {
            "step_seconds": spread(run["step_seconds"] for run in mine),
            "peak_gib": spread(run["peak_bytes"] / 2**30 for run in mine if run["peak_bytes"]),
            "syncs_per_step": spread(sum(step.values()) for step in steps),
            "plugin_syncs_per_step": spread(step.get(PACKAGE, 0) for step in steps),
            "sync_sites_per_step": {site: n / len(steps) for site, n in sites.most_common(12)} if steps else None,
            "plugin_host_reads_per_step": sum(reads.values()) / max(1, check_steps),
            "plugin_host_read_sites": dict(reads.most_common(12)),
            "plugin_ops_with_host_outputs": sorted({k for run in mine for k in run["host_outputs"]}),
            "transform_ops_per_step": spread(run["transform_ops_per_step"] for run in mine),
            "forward_devices": sorted({d for run in mine for d in run["forward_devices"]}),
            "batch_devices": sorted({d for run in mine for d in run["batch_devices"]}),
            "resets": [run["resets"] for run in mine],
            "expected_resets": [run["expected_resets"] for run in mine],
            "masked_fraction": spread(run["masked_fraction"] for run in mine),
            "removed_tokens_per_row": spread(run["removed_tokens_per_row"] for run in mine),
        }
    on_device = all(
        d.startswith(device_type) for m in modes.values() for d in m["forward_devices"] + m["batch_devices"]
    )
    expected_fraction = opts.ratio * (1 - 1 / opts.vocab)

    def field(mode, key, name):
        return modes[mode][key][name] if modes[mode][key] else None

    fraction = field("masked_thought", "masked_fraction", "median")
    checks = {
        "inputs_and_batches_on_training_device": on_device
        and all(m["forward_devices"] and m["batch_devices"] for m in modes.values()),
        "no_plugin_op_with_host_outputs": not any(m["plugin_ops_with_host_outputs"] for m in modes.values()),
        "transforms_recorded_in_plugin_modes_only": field("off", "transform_ops_per_step", "max") == 0
        and all((field(m, "transform_ops_per_step", "min") or 0) > 0 for m in MODES[1:]),
        "masked_fraction_near_ratio": fraction is not None and abs(fraction - expected_fraction) <= 0.25 * opts.ratio,
        "tokens_removed_in_removal_modes": field("off", "removed_tokens_per_row", "max") == 0
        and all((field(m, "removed_tokens_per_row", "min") or 0) > 0 for m in ("cot_removal", "both")),
        "resets_as_scheduled": all(m["resets"] and m["resets"] == m["expected_resets"] for m in modes.values()),
    }
    targets = []
    for mode, metric, limit in TARGETS:
        value = ratios[mode][metric]["median"] if ratios[mode][metric] else None
        targets.append(
            {
                "mode": mode,
                "metric": metric,
                "median_ratio": value,
                "target": f"<= {limit:.2f}",
                "met": None if value is None else value <= limit,
            }
        )
    return {
        "ratios_vs_off": ratios,
        "modes": modes,
        "checks": checks,
        "targets": targets,
        "expected_masked_fraction": expected_fraction,
    }


def _fmt(stat, digits: int = 3) -> str:
    if not stat:
        return "n/a"
    return f"{stat['median']:.{digits}f} [{stat['min']:.{digits}f}, {stat['max']:.{digits}f}]"


def markdown(report: dict) -> str:
    """A short human summary of ``report`` (every figure is also in the JSON)."""
    env, summary, opts, model = report["environment"], report["summary"], report["settings"], report["model"]
    lines = [
        f"# GPU check: {env['device_name']}",
        "",
        f"torch {env['torch']}, transformers {env['transformers']}, peft {env['peft']}, Python {env['python']}; "
        f"{model['parameters'] / 1e6:.1f}M-parameter Llama, {model['dtype']}, {model['attention']} attention; "
        f"batch {opts['batch']} x up to {opts['seq_len']} tokens; "
        f"{len({run['round'] for run in report['runs']})} of {opts['rounds']} rounds (mode order rotated), "
        f"{opts['warmup_steps']} warm-up + {opts['timed_steps']} timed + {opts['check_steps']} check steps per run; "
        f"baseline: {report['baseline']}. Total {report['wall_seconds']:.0f} s.",
        "",
    ]
    modes = summary.get("modes", {})
    if modes:
        lines += [
            "| mode | step time vs off | peak memory vs off | s/step | syncs/step | of which this package "
            "| host reads/step in this package | resets (expected) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for mode, m in modes.items():
            r = summary["ratios_vs_off"].get(mode, {})
            lines.append(
                f"| {mode} | {_fmt(r.get('step_time'))} | {_fmt(r.get('peak_memory'))} "
                f"| {_fmt(m['step_seconds'], 4)} | {_fmt(m['syncs_per_step'], 1)} "
                f"| {_fmt(m['plugin_syncs_per_step'], 1)} | {m['plugin_host_reads_per_step']:.1f} "
                f"| {sum(m['resets'])} ({sum(m['expected_resets'])}) |"
            )
        lines += [
            "",
            "Ratios: median [min, max] over rounds, each against `off` of the same round. "
            f"Syncs: {report['sync_method']}.",
            "",
        ]
    for t in summary.get("targets", []):
        verdict = "n/a" if t["met"] is None else ("met" if t["met"] else "NOT met")
        value = "n/a" if t["median_ratio"] is None else f"{t['median_ratio']:.3f}"
        lines.append(f"- target {t['mode']} {t['metric']} {t['target']}: {value}, **{verdict}**")
    lines += [""] + [f"- check {name}: {'pass' if ok else 'FAIL'}" for name, ok in report["checks"].items()]
    for mode, m in modes.items():
        sites = m["sync_sites_per_step"] or m["plugin_host_read_sites"]
        lines.append(f"- sites, {mode}: " + (", ".join(f"`{k}` {v:g}" for k, v in sites.items()) or "none"))
    lines += [f"- reset check: `{json.dumps(report['reset_check'])}`", f"- LoRA: `{json.dumps(report['lora'])}`"]
    lines += (
        [f"- note: {s}" for s in report["notes"]]
        + [f"- skipped: {s}" for s in report["skipped"]]
        + [f"- ERROR in {k}: see the JSON" for k in report["errors"]]
    )
    return "\n".join(lines) + "\n"
