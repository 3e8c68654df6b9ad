"""Step-time and peak-memory overhead of the plugin, against plain axolotl, side by side.

Four configurations of the same tiny Llama and the same GSM8K rows through
axolotl: plugin off (plain AxolotlTrainer, same tokenized data), Masked Thought,
CoT removal, both. Each training run is its own process (clean ``ru_maxrss``);
the configurations are interleaved (round-robin) and repeated. Time per step is
the interval between consecutive ``on_step_end`` calls (bench/steptimer.py),
warm-up steps skipped; the per-run median is taken, then the median and spread
over repeats of the ratio to the plugin-off run of the same round.

Each round also has one "cycle" run: a single process whose steps rotate
through off / masked_thought / cot_removal / both (bench/steptimer.py,
STEPTIMER_CYCLE=1), so all four see the same machine noise; its "off" is the
plugin installed but idle.

Training runs use one torch thread (OMP_NUM_THREADS=1, --threads): on a shared
2-core machine two threads per run oversubscribe the cores and the step time
swings several-fold.

Then a micro-benchmark in this process: one call of ``masking.mask_thought`` and
of ``removal.remove_cot`` against one forward+backward of the model, on the
same collated batch, interleaved.

    python bench/overhead.py [--repeats 3] [--steps 40] [--warmup 5] [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from common import (
    WORK_DIR,
    base_config,
    command_line,
    machine_note,
    run_training,
    save_json,
    shared_file,
    spread,
    write_yaml,
)

from axolotl_maskthought.data.files import read_jsonl

PLUGIN = "axolotl_maskthought.MaskThoughtPlugin"
TIMER = "steptimer.StepTimerPlugin"
# Δ 8 on 400 rows (50 steps an epoch): the count grows, and AdamW is reset, every ~6 steps.
REMOVAL = {"tokens_per_epoch": 8, "smoothing_lambda": 4, "reset_optimizer": True}
CONFIGS = {
    "off": {"plugins": [TIMER]},
    "masked_thought": {"plugins": [PLUGIN, TIMER], "masked_thought": {"ratio": 0.4, "replacement": "random"}},
    "cot_removal": {"plugins": [PLUGIN, TIMER], "cot_removal": REMOVAL},
    "both": {
        "plugins": [PLUGIN, TIMER],
        "masked_thought": {"ratio": 0.4, "replacement": "random"},
        "cot_removal": REMOVAL,
    },
}
MODES = ("off", "masked_thought", "cot_removal", "both")
MODEL = dict(arch="llama", hidden=256, layers=4, heads=4, max_positions=512, seed=0)
VOCAB = 2048


def prepare(work: Path, rows: int) -> tuple[Path, Path]:
    from axolotl_maskthought.data.files import write_jsonl
    from axolotl_maskthought.toy.tiny import build_tiny

    data = read_jsonl(shared_file("gsm8k", "train.jsonl"), limit=rows)
    data_path = work / f"gsm8k_{rows}.jsonl"
    write_jsonl(data_path, data)
    model_dir = work / "llama256"
    if not (model_dir / "config.json").exists():
        texts = [row["question"] + "\n" + row["answer"] for row in data]
        build_tiny(model_dir, texts, vocab_size=VOCAB, **MODEL)
    return model_dir, data_path


def training_rounds(
    work: Path,
    model_dir: Path,
    data_path: Path,
    repeats: int,
    steps: int,
    warmup: int,
    threads: int,
    names: list[str],
    cycle_repeats: int,
    packing: bool = False,
) -> dict:
    extra = {"sample_packing": True, "pad_to_sequence_len": True} if packing else {}
    dataset = {"path": str(data_path), "ds_type": "json", "type": "axolotl_maskthought.strategies.gsm8k"}
    runs: dict[str, list[dict]] = {name: [] for name in names}
    cycle: dict[str, list[float]] = {mode: [] for mode in MODES}
    for round_index in range(max(repeats, cycle_repeats)):
        order = list(names) if round_index % 2 == 0 else list(reversed(names))
        order = order if round_index < repeats else []
        if round_index < cycle_repeats:
            order.insert(round_index % (len(order) + 1), "cycle")
        for name in order:
            if name == "cycle":
                config = base_config(
                    model_dir, dataset, work / "out" / name, max_steps=steps + 4 * warmup, **CONFIGS["both"], **extra
                )
                config_path = write_yaml(work / "cycle.yml", config)
                result = run_training(
                    config_path,
                    work / "cycle.json",
                    work / f"cycle.{round_index}.log",
                    env={"STEPTIMER_CYCLE": "1"},
                    threads=threads,
                )
                pairs = list(zip(result["step_modes"], result["step_seconds"]))[4 * warmup :]
                per_mode = {mode: statistics.median([s for m, s in pairs if m == mode]) for mode in MODES}
                for mode in MODES:
                    cycle[mode].append(per_mode[mode] / per_mode["off"])
                print(
                    f"round {round_index} cycle           "
                    + "  ".join(f"{mode} {per_mode[mode] * 1000:.0f} ms" for mode in MODES),
                    flush=True,
                )
                continue
            config = base_config(model_dir, dataset, work / "out" / name, max_steps=steps, **CONFIGS[name], **extra)
            config_path = write_yaml(work / f"{name}.yml", config)
            result = run_training(
                config_path, work / f"{name}.json", work / f"{name}.{round_index}.log", threads=threads
            )
            timed = result["step_seconds"][warmup:]
            runs[name].append(
                {
                    "round": round_index,
                    "median_step_s": statistics.median(timed),
                    "mean_step_s": statistics.fmean(timed),
                    "maxrss_mib": result["maxrss_kib"] / 1024,
                    "wall_s": result["wall_seconds"],
                    "steps_timed": len(timed),
                }
            )
            print(
                f"round {round_index} {name:15s} median step {runs[name][-1]['median_step_s'] * 1000:7.1f} ms  "
                f"maxrss {runs[name][-1]['maxrss_mib']:7.1f} MiB  wall {result['wall_seconds']:.0f} s",
                flush=True,
            )
    ratios = {}
    for name in names:
        if not runs[name]:
            continue
        time_ratios = [run["median_step_s"] / base["median_step_s"] for run, base in zip(runs[name], runs["off"])]
        rss_ratios = [run["maxrss_mib"] / base["maxrss_mib"] for run, base in zip(runs[name], runs["off"])]
        ratios[name] = {
            "step_time": spread([run["median_step_s"] for run in runs[name]]),
            "step_time_ratio": spread(time_ratios),
            "maxrss_mib": spread([run["maxrss_mib"] for run in runs[name]]),
            "maxrss_ratio": spread(rss_ratios),
        }
    cycle_ratios = {mode: spread(values) for mode, values in cycle.items() if values}
    return {"runs": runs, "ratios": ratios, "cycle_ratios": cycle_ratios}


def micro_benchmark(model_dir: Path, data_path: Path, repeats: int) -> dict:
    """Per-call time of the pure transforms vs forward+backward on one batch of 8."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from axolotl_maskthought.config import PROMPT_TEMPLATES
    from axolotl_maskthought.data.formats import parse_gsm8k_row, tokenize_gsm8k
    from axolotl_maskthought.engine.optimizer_reset import reset_optimizer_state
    from axolotl_maskthought.ops.masking import make_generator, mask_thought
    from axolotl_maskthought.ops.removal import remove_cot
    from axolotl_maskthought.ops.schedule import smoothing_distribution

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    model.train()
    examples = []
    for row in read_jsonl(data_path):
        example = tokenize_gsm8k(tokenizer, parse_gsm8k_row(row), PROMPT_TEMPLATES["alpaca"])
        if len(example["input_ids"]) <= 256:
            examples.append(example)
        if len(examples) == 8:
            break
    width = max(len(e["input_ids"]) for e in examples)

    def pad(key, fill):
        return torch.tensor([e[key] + [fill] * (width - len(e[key])) for e in examples])

    batch = {
        "input_ids": pad("input_ids", tokenizer.pad_token_id),
        "attention_mask": pad("attention_mask", 0),
        "labels": pad("labels", -100),
    }
    cot_mask = pad("cot_mask", 0)
    probs = smoothing_distribution(4.0)
    generator = make_generator(0, "cpu")
    vocab = len(tokenizer)

    def masking_call():
        mask_thought(batch["input_ids"], batch["labels"] != -100, 0.4, "random", generator, vocab_size=vocab)

    def removal_call():
        remove_cot(
            batch, cot_mask, 10, "left", smoothing_probs=probs, generator=generator, pad_token_id=tokenizer.pad_token_id
        )

    def forward_backward(inputs=batch):
        model.zero_grad(set_to_none=True)
        model(**inputs).loss.backward()

    # Masked Thought changes input values, not shapes: same work, unless the kernels care
    masked_ids, _ = mask_thought(
        batch["input_ids"], batch["labels"] != -100, 0.4, "random", generator, vocab_size=vocab
    )
    masked_batch = {**batch, "input_ids": masked_ids}

    def forward_backward_masked():
        forward_backward(masked_batch)

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)

    def optimizer_step():
        optimizer.step()  # on the gradients of the last forward_backward

    def optimizer_reset():
        optimizer_step()  # a reset of an empty state costs nothing: fill it first
        reset_optimizer_state(optimizer)

    def time_call(fn, calls):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        return (time.perf_counter() - start) / calls

    for fn in (masking_call, removal_call, forward_backward, optimizer_step, optimizer_reset):
        fn()  # warm-up
    samples = {
        "mask_thought": [],
        "remove_cot": [],
        "forward_backward": [],
        "forward_backward_masked": [],
        "adamw_step": [],
        "adamw_step_then_reset": [],
    }
    for _ in range(repeats):
        samples["mask_thought"].append(time_call(masking_call, 200))
        samples["remove_cot"].append(time_call(removal_call, 100))
        samples["forward_backward"].append(time_call(forward_backward, 3))
        samples["forward_backward_masked"].append(time_call(forward_backward_masked, 3))
        samples["adamw_step"].append(time_call(optimizer_step, 20))
        samples["adamw_step_then_reset"].append(time_call(optimizer_reset, 20))
    fb = statistics.median(samples["forward_backward"])
    reset = statistics.median(samples["adamw_step_then_reset"]) - statistics.median(samples["adamw_step"])
    return {
        "batch_shape": list(batch["input_ids"].shape),
        "seconds_per_call": {name: spread(values) for name, values in samples.items()},
        "fraction_of_forward_backward": {
            name: statistics.median(samples[name]) / fb for name in ("mask_thought", "remove_cot")
        },
        "masked_inputs_forward_backward_ratio": spread(
            [m / o for m, o in zip(samples["forward_backward_masked"], samples["forward_backward"])]
        ),
        # reset_optimizer_state alone = (step + reset) - step; once per removed token, not per step
        "optimizer_reset_seconds": reset,
        "optimizer_reset_fraction_of_forward_backward": reset / fb,
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per training run")
    parser.add_argument("--cycle-repeats", type=int, default=None, help="cycle runs (default: --repeats)")
    parser.add_argument("--configs", default=",".join(CONFIGS), help="separate-process configurations (off first)")
    parser.add_argument("--packing", action="store_true", help="sample_packing: true in every run")
    parser.add_argument("--no-micro", action="store_true", help="skip the in-process micro-benchmark")
    parser.add_argument("--quick", action="store_true", help="1 round of 8 steps, off/both/cycle only")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.steps, args.warmup, args.rows, args.configs = 1, 8, 2, 200, "off,both"
    work = WORK_DIR / ("overhead_packing" if args.packing else "overhead")
    work.mkdir(parents=True, exist_ok=True)
    note = machine_note()
    model_dir, data_path = prepare(work, args.rows)
    result = {
        "command": command_line(),
        "machine": note,
        "model": MODEL,
        "vocab": VOCAB,
        "steps": args.steps,
        "warmup_steps": args.warmup,
        "repeats": args.repeats,
        "threads": args.threads,
        "cycle_repeats": args.cycle_repeats,
        "packing": args.packing,
        "removal": REMOVAL,
    }
    result["training"] = training_rounds(
        work,
        model_dir,
        data_path,
        args.repeats,
        args.steps,
        args.warmup,
        args.threads,
        args.configs.split(","),
        args.repeats if args.cycle_repeats is None else args.cycle_repeats,
        packing=args.packing,
    )
    if not args.no_micro:
        import torch

        torch.set_num_threads(args.threads)
        result["micro"] = micro_benchmark(model_dir, data_path, 3 if args.quick else 7)
    cycles = args.repeats if args.cycle_repeats is None else args.cycle_repeats
    # one file per design, so the recorded invocations do not overwrite each other
    save_json(work / f"overhead_result_{args.repeats}separate_{cycles}cycle.json", result)
    print_report(result)
    return result


def print_report(result: dict) -> None:
    print(f"\n{result['command']}\n{result['machine']}")
    for name, ratio in result["training"]["ratios"].items():
        t, r = ratio["step_time_ratio"], ratio["maxrss_ratio"]
        print(
            f"{name:15s} step {ratio['step_time']['median'] * 1000:7.1f} ms  ratio {t['median']:.3f} "
            f"[{t['min']:.3f}, {t['max']:.3f}]  maxrss {ratio['maxrss_mib']['median']:.0f} MiB  "
            f"ratio {r['median']:.3f} [{r['min']:.3f}, {r['max']:.3f}]"
        )
    cycle = result["training"]["cycle_ratios"]
    if cycle:
        print(
            "cycle (one process, modes rotate per step), ratio to idle plugin:",
            {mode: f"{c['median']:.3f} [{c['min']:.3f}, {c['max']:.3f}]" for mode, c in cycle.items()},
        )
    micro = result.get("micro")
    if micro is None:
        return
    for name, stats in micro["seconds_per_call"].items():
        print(f"{name:17s} {stats['median'] * 1e3:8.3f} ms/call  [{stats['min'] * 1e3:.3f}, {stats['max'] * 1e3:.3f}]")
    print("fraction of forward+backward:", {k: round(v, 4) for k, v in micro["fraction_of_forward_backward"].items()})
    ratio = micro["masked_inputs_forward_backward_ratio"]
    print(
        f"forward+backward on masked / original inputs {ratio['median']:.3f} [{ratio['min']:.3f}, {ratio['max']:.3f}]"
    )
    print(
        f"optimizer reset {micro['optimizer_reset_seconds'] * 1e3:.3f} ms "
        f"({micro['optimizer_reset_fraction_of_forward_backward']:.4f} of forward+backward)"
    )


if __name__ == "__main__":
    main()
