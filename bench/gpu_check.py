"""GPU check of the plain-transformers path: overhead, device residency, syncs, reset, LoRA.

One command, no downloads, needs only torch, transformers, peft and pydantic::

    python bench/gpu_check.py [--out DIR]          # CUDA: ~1B Llama, bf16, sdpa (sized for ~4 min)
    python bench/gpu_check.py --cpu-smoke          # same code, tiny fp32 model on the CPU (< 1 min)

What it does (issue 12, item 3):

1. **Overhead.** A randomly initialised Llama trains on synthetic rows
   (``question eos cot eos answer eos``, random token ids from a seeded generator;
   labels -100 over the question) in four modes: ``off`` (plain
   ``transformers.Trainer``, the baseline), ``masked_thought``, ``cot_removal``
   and ``both`` (``MaskThoughtTrainer``). Each (round, mode) is one ``train()``
   of ``warmup + timed + check`` optimizer steps on the same model object; the
   mode order is rotated each round. Step time = wall time of the timed steps
   between two ``torch.cuda.synchronize()`` calls; peak memory =
   ``torch.cuda.max_memory_allocated`` since the run began. Ratios are taken
   against ``off`` of the same round: median [min, max] over rounds. The CoT
   removal count grows every ``--removal-every`` steps, so AdamW is reset several
   times inside the timed window (a stress case: the paper's runs reset every
   ~3,000 steps), and few tokens are removed (little shortening to gain from).
2. **Device residency and host-device syncs**, on ``check`` steps after the timed
   ones (bench/gpu_probe.py): the torch calls this package makes inside
   ``get_batch_samples`` and their devices, the devices of the model's inputs,
   what masking and removal changed, and the synchronisations per optimizer step
   (``torch.cuda.set_sync_debug_mode("warn")``, every warning counted and
   attributed to the innermost frame outside torch; a self-test checks that one
   ``.item()`` counts as one). On the CPU, sync counting is skipped and the host
   reads of tensor data in this package's code are listed instead.
3. **Resets**: the number of optimizer steps that begin with an empty optimizer
   state must equal the number of scheduled removal-count increases.
4. **Optimizer reset**: after ``reset_optimizer_state`` on a used
   ``torch.optim.AdamW(fused=True)``, its next step must equal a freshly built
   one's step (max abs difference 0); without the reset it must differ.
5. **LoRA** through peft in the ``both`` mode: the loss stays finite, the adapter
   trains and the base weights do not change.

Writes ``gpu_check.json`` and ``gpu_check.md`` to ``--out``. The exit status is 1
when a correctness check fails; the speed and memory targets (Masked Thought
step time <= 1.01x off, CoT removal <= 1.00x, peak memory <= 1.01x) are reported
as met / not met and do not change it.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch
from gpu_probe import Probe, callback, probed
from gpu_report import MODES, markdown, summarise

# ~1.03B parameters (20 layers of width 2048, 32 query / 8 key-value heads, untied 32k vocabulary);
# 4 modes x 6 rounds x 37 steps of 8 x <= 512 tokens, sized for ~4 minutes on one H100/H200 (estimate);
# rounds stop early when the next would pass `budget_seconds`. The count of removed CoT tokens grows
# every `removal_every` steps (the epoch is sized for it): resets at steps 12 and 24 (timed) and 36 (checked).
GPU = dict(
    vocab=32000,
    hidden=2048,
    intermediate=5632,
    layers=20,
    heads=32,
    kv_heads=8,
    seq_len=512,
    batch=8,
    rounds=6,
    warmup_steps=5,
    timed_steps=30,
    check_steps=2,
    removal_every=12,
    lora_steps=20,
    workers=2,
    budget_seconds=420,
)
SMOKE = dict(
    vocab=512,
    hidden=64,
    intermediate=128,
    layers=2,
    heads=4,
    kv_heads=2,
    seq_len=64,
    batch=4,
    rounds=2,
    warmup_steps=1,
    timed_steps=3,
    check_steps=2,
    removal_every=2,
    lora_steps=4,
    workers=0,
    budget_seconds=0,
)
RESERVE_SECONDS = 45  # after the rounds: sync self-test, reset check, LoRA, report


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny fp32 model on the CPU (CI)")
    parser.add_argument("--out", default=".", help="folder for gpu_check.json and gpu_check.md")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ratio", type=float, default=0.4, help="masked_thought.ratio (warm-up off)")
    parser.add_argument("--tokens-per-epoch", type=float, default=8, help="cot_removal.tokens_per_epoch")
    for name, value in GPU.items():
        parser.add_argument(
            f"--{name.replace('_', '-')}",
            type=int,
            default=None,
            help=f"default {value} on CUDA, {SMOKE[name]} with --cpu-smoke",
        )
    opts = parser.parse_args(argv)
    for name, value in (SMOKE if opts.cpu_smoke else GPU).items():
        if getattr(opts, name) is None:
            setattr(opts, name, value)
    return opts


# ---- data and model ----------------------------------------------------------------------
def build_tokenizer(vocab_size: int):
    """A word-level tokenizer with ``vocab_size`` base tokens (``<pad>`` 0, ``<eos>`` 1), built locally."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<pad>", "<eos>", "<unk>"] + [f"w{i}" for i in range(3, vocab_size)]
    backend = Tokenizer(models.WordLevel({word: i for i, word in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")


def synthetic_rows(count: int, seq_len: int, vocab_size: int, eos_id: int, seed: int) -> list[dict]:
    """``count`` rows ``question eos cot eos answer eos`` of 3/4 to all of ``seq_len`` tokens.

    ``labels`` is -100 over the question and the first EOS; ``cot_mask`` is 1 on the CoT.
    """
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(count):
        length, question, answer = (
            int(torch.randint(low, high, (1,), generator=generator))
            for low, high in ((seq_len * 3 // 4, seq_len + 1), (seq_len // 8, seq_len // 4), (2, max(3, seq_len // 32)))
        )
        cot = length - question - answer - 3
        ids = torch.randint(3, vocab_size, (length,), generator=generator)
        ids[question] = ids[question + 1 + cot] = ids[-1] = eos_id
        labels = ids.clone()
        labels[: question + 1] = -100
        cot_mask = torch.zeros(length, dtype=torch.long)
        cot_mask[question + 1 : question + 1 + cot] = 1
        rows.append(
            {
                "input_ids": ids.tolist(),
                "attention_mask": [1] * length,
                "labels": labels.tolist(),
                "cot_mask": cot_mask.tolist(),
            }
        )
    return rows


def build_model(opts, device: torch.device):
    """A randomly initialised ``LlamaForCausalLM`` (sdpa attention), bf16 on CUDA, fp32 on the CPU."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=opts.vocab,
        hidden_size=opts.hidden,
        intermediate_size=opts.intermediate,
        num_hidden_layers=opts.layers,
        num_attention_heads=opts.heads,
        num_key_value_heads=opts.kv_heads,
        max_position_embeddings=opts.seq_len,
        tie_word_embeddings=False,
        attn_implementation="sdpa",
    )
    torch.manual_seed(opts.seed)
    with torch.device(device):
        model = LlamaForCausalLM(config)
    return model.to(torch.bfloat16 if device.type == "cuda" else torch.float32)


# ---- runs ------------------------------------------------------------------------------------
def make_trainer(mode: str, model, tokenizer, rows, opts, device, probe: Probe | None, max_steps: int, **overrides):
    """The trainer of one run: plain ``transformers.Trainer`` for ``off``, else ``MaskThoughtTrainer``."""
    from transformers import DataCollatorForSeq2Seq, PrinterCallback, Trainer, TrainingArguments

    from axolotl_maskthought.adapters.transformers import MaskThoughtTrainer
    from axolotl_maskthought.config import CoTRemovalConfig, MaskedThoughtConfig
    from axolotl_maskthought.engine.collator import CoTSpanCollator

    cuda = device.type == "cuda"
    settings = dict(
        output_dir=os.path.join(tempfile.gettempdir(), "gpu_check"),
        per_device_train_batch_size=opts.batch,
        max_steps=max_steps,
        learning_rate=1e-5,
        lr_scheduler_type="constant",
        weight_decay=0.01,
        seed=opts.seed,
        bf16=cuda,
        use_cpu=not cuda,
        optim="adamw_torch_fused" if cuda else "adamw_torch",
        dataloader_num_workers=opts.workers,
        logging_strategy="no",
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
    )
    kwargs = dict(
        model=model,
        args=TrainingArguments(**{**settings, **overrides}),
        train_dataset=rows,
        processing_class=tokenizer,
        callbacks=[callback(probe)] if probe else [],
        data_collator=CoTSpanCollator(DataCollatorForSeq2Seq(tokenizer, padding=True)),
    )
    if mode == "off":
        trainer = probed(Trainer)(**kwargs)
    else:
        masking, removal = mode in ("masked_thought", "both"), mode in ("cot_removal", "both")
        trainer = probed(MaskThoughtTrainer)(
            **kwargs,
            masked_thought=MaskedThoughtConfig(ratio=opts.ratio, warmup=0.0) if masking else None,
            cot_removal=CoTRemovalConfig(tokens_per_epoch=opts.tokens_per_epoch) if removal else None,
        )
    trainer.probe = probe
    trainer.remove_callback(PrinterCallback)  # logs stay in trainer.state.log_history
    return trainer


def train_once(mode: str, model, tokenizer, rows, opts, device, probe: Probe) -> dict:
    """One ``train()`` of ``warmup + timed + check`` optimizer steps; the probe's figures of it."""
    total = opts.warmup_steps + opts.timed_steps + opts.check_steps
    trainer = make_trainer(mode, model, tokenizer, rows, opts, device, probe, total)
    probe.begin(trainer)
    with probe.warnings_counted():
        trainer.train()
    expected = (total - 1) // opts.removal_every if mode in ("cot_removal", "both") else 0
    record = {"mode": mode, **probe.record(mode), "expected_resets": expected}
    probe.trainer = trainer = None
    release(model)
    return record


def release(model) -> None:
    """Between runs on the same model: free the last trainer, undo accelerate's forward wrapper.

    accelerate wraps ``model.forward`` in autocast at each ``prepare()``; without this,
    each run would stack one more wrapper, and the last optimizer state could count in
    the next run's memory.
    """
    gc.collect()
    model.__dict__.pop("forward", None)
    model.__dict__.pop("_original_forward", None)


# ---- one-off checks ----------------------------------------------------------------------------
def reset_check(device: torch.device, seed: int) -> dict:
    """After ``reset_optimizer_state``, a used ``AdamW(fused=True)`` steps exactly as a fresh one.

    Three steps on random gradients, then one more step with the same gradients on
    (a) the reset optimizer, (b) a fresh optimizer on a copy of the parameters,
    (c) a copy of the used optimizer, not reset (the control: it must differ).
    """
    from axolotl_maskthought.engine.optimizer_reset import reset_optimizer_state

    generator = torch.Generator().manual_seed(seed)
    hyper = dict(lr=1e-3, betas=(0.9, 0.95), weight_decay=0.01, fused=True)
    results = {}
    for dtype in (torch.float32, torch.bfloat16):

        def randn(shape):
            return torch.randn(shape, generator=generator).to(device, dtype)

        def step(params, optimizer, grads):
            for param, grad in zip(params, grads):
                param.grad = grad.clone()
            optimizer.step()
            return [param.detach().clone() for param in params]

        params = [randn(shape).requires_grad_() for shape in ((64, 48), (48,), (300, 16))]
        used = torch.optim.AdamW(params, **hyper)
        for _ in range(3):
            step(params, used, [randn(p.shape) for p in params])
        grads = [randn(p.shape) for p in params]
        control_params = [p.detach().clone().requires_grad_() for p in params]
        fresh_params = [p.detach().clone().requires_grad_() for p in params]
        control = torch.optim.AdamW(control_params, **hyper)
        control.load_state_dict(used.state_dict())
        reset_entries = reset_optimizer_state(used)
        after_reset, control_step = step(params, used, grads), step(control_params, control, grads)
        fresh = torch.optim.AdamW(fresh_params, **hyper)
        fresh_step = step(fresh_params, fresh, grads)

        def max_diff(a, b):
            return max(float((x.float() - y.float()).abs().max()) for x, y in zip(a, b))

        state_diff = max(
            max_diff(
                [used.state[p][k] for k in sorted(used.state[p])], [fresh.state[q][k] for k in sorted(fresh.state[q])]
            )
            for p, q in zip(params, fresh_params)
        )
        same_keys = all(sorted(used.state[p]) == sorted(fresh.state[q]) for p, q in zip(params, fresh_params))
        results[str(dtype).replace("torch.", "")] = {
            "reset_entries": reset_entries,
            "max_abs_diff_params": max_diff(after_reset, fresh_step),
            "max_abs_diff_state": state_diff,
            "same_state_keys": same_keys,
            "control_max_abs_diff_without_reset": max_diff(control_step, fresh_step),
        }
    return {"optimizer": "torch.optim.AdamW(fused=True)", "device": str(device), **results}


def lora_check(model, tokenizer, rows, opts, device) -> dict:
    """LoRA (peft) on the attention projections, both techniques on: does it train, stay finite?"""
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(
        model,
        LoraConfig(
            r=8,
            lora_alpha=16,
            lora_dropout=0.0,
            task_type="CAUSAL_LM",
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
        ),
    )
    named = dict(peft_model.named_parameters())
    base_name = next(name for name in named if name.endswith("q_proj.base_layer.weight"))
    base_before = named[base_name].detach().clone()
    trainer = make_trainer(
        "both",
        peft_model,
        tokenizer,
        rows,
        opts,
        device,
        None,
        opts.lora_steps,
        logging_strategy="steps",
        logging_steps=1,
        learning_rate=1e-3,
    )
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return {
        "mode": "both",
        "steps": opts.lora_steps,
        "losses": losses,
        "trainable_parameters": sum(p.numel() for p in named.values() if p.requires_grad),
        "loss_finite": bool(losses) and all(math.isfinite(loss) for loss in losses),
        "adapter_trained": any(float(p.detach().abs().sum()) > 0 for name, p in named.items() if "lora_B" in name),
        "base_unchanged": torch.equal(base_before, named[base_name].detach()),
    }


def guarded(errors: dict, name: str, fn, *args):
    """Run one phase; a failure is printed and recorded in the report (failing ``no_errors``)."""
    try:
        return fn(*args)
    except Exception:  # noqa: BLE001 - a one-shot GPU run must still write what it measured
        errors[name] = traceback.format_exc()
        print(errors[name], flush=True)
        return None


def main(argv=None) -> int:
    opts = parse_args(argv)
    started = time.perf_counter()
    import peft
    import transformers

    transformers.logging.set_verbosity_error()
    if not opts.cpu_smoke and not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device; use --cpu-smoke")
    device = torch.device("cpu" if opts.cpu_smoke else "cuda")
    cuda = device.type == "cuda"
    if not cuda:
        torch.set_num_threads(1)  # a tiny model: more threads only contend (10-30x slower on a busy machine)
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)

    def log(text):
        print(f"[{time.perf_counter() - started:6.1f}s] {text}", flush=True)

    tokenizer = build_tokenizer(opts.vocab)
    rows = synthetic_rows(
        opts.batch * round(opts.removal_every * opts.tokens_per_epoch),
        opts.seq_len,
        opts.vocab,
        tokenizer.eos_token_id,
        opts.seed,
    )
    model = build_model(opts, device)
    parameters = sum(p.numel() for p in model.parameters())
    log(f"{parameters / 1e6:.1f}M-parameter Llama on {device}, {len(rows)} synthetic rows")
    probe, runs, errors, notes = Probe(opts.warmup_steps, opts.timed_steps, opts.check_steps, device), [], {}, []
    model.register_forward_pre_hook(probe.forward_hook, with_kwargs=True)

    def all_rounds():
        make_trainer("off", model, tokenizer, rows, opts, device, None, opts.warmup_steps + 1).train()  # discarded
        release(model)
        rounds_started = time.perf_counter()
        for round_index in range(opts.rounds):
            now = time.perf_counter()
            per_round = (now - rounds_started) / round_index if round_index else 0.0
            if (
                round_index
                and opts.budget_seconds
                and (now - started + per_round + RESERVE_SECONDS > opts.budget_seconds)
            ):
                notes.append(
                    f"stopped after {round_index} of {opts.rounds} rounds: "
                    f"the next would pass --budget-seconds {opts.budget_seconds}"
                )
                log(notes[-1])
                break
            shift = round_index % len(MODES)
            for position, mode in enumerate(MODES[shift:] + MODES[:shift]):
                run = train_once(mode, model, tokenizer, rows, opts, device, probe)
                runs.append({"round": round_index, "position": position, **run})
                peak = f"{run['peak_bytes'] / 2**30:.2f} GiB" if run["peak_bytes"] else "n/a"
                log(
                    f"round {round_index} {mode:>14}: {run['step_seconds'] * 1e3:8.2f} ms/step, peak {peak}, "
                    f"resets {run['resets']}, syncs/step {run['syncs_per_step']}"
                )

    guarded(errors, "rounds", all_rounds)
    selftest = (
        guarded(errors, "sync_selftest", probe.count_syncs, lambda: torch.ones(4, device=device).sum().item())
        if cuda
        else None
    )
    reset = guarded(errors, "reset_check", reset_check, device, opts.seed) or {}
    log(f"fused AdamW reset check: {reset}")
    lora = guarded(errors, "lora", lora_check, model, tokenizer, rows, opts, device) or {}
    log(f"LoRA: {lora}")
    summary = guarded(errors, "summary", summarise, runs, opts, device.type) or {}
    checks = summary.pop("checks", {})
    if cuda:
        checks["sync_counter_selftest_one_item_is_one_sync"] = selftest == 1
    checks["fused_adamw_reset_equals_fresh"] = bool(reset) and all(
        r["max_abs_diff_params"] == 0
        and r["max_abs_diff_state"] == 0
        and r["same_state_keys"]
        and r["control_max_abs_diff_without_reset"] > 0
        for r in reset.values()
        if isinstance(r, dict)
    )
    checks["lora_trains_finite"] = (
        bool(lora) and lora["loss_finite"] and lora["adapter_trained"] and lora["base_unchanged"]
    )
    checks["no_errors"] = not errors
    skipped = (
        []
        if cuda
        else [
            "sync counting (CUDA sync debug mode) and its self-test: need CUDA; host reads of this package's code listed instead",
            "peak memory: torch.cuda.max_memory_allocated needs CUDA",
            "bf16: the CPU smoke run trains in fp32, one torch thread",
            "speed and memory targets: not judged on the CPU (timings of a tiny model say nothing about a GPU)",
        ]
    )
    if not cuda:
        summary["targets"] = [{**t, "met": None} for t in summary.get("targets", [])]
    report = {
        "kind": "cuda" if cuda else "cpu-smoke",
        "environment": {
            "device_name": torch.cuda.get_device_name(0) if cuda else platform.processor() or "cpu",
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "transformers": transformers.__version__,
            "peft": peft.__version__,
            "python": platform.python_version(),
            "axolotl_imported": any(name.split(".")[0] == "axolotl" for name in sys.modules),
        },
        "settings": vars(opts),
        "model": {
            "parameters": parameters,
            "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
            "attention": model.config._attn_implementation,
            "layers": opts.layers,
            "hidden": opts.hidden,
        },
        "baseline": "plain transformers.Trainer (same rows and collator; cot_mask dropped as an unused column)",
        "sync_method": "torch.cuda.set_sync_debug_mode('warn') on the check steps; each warning counted for its "
        "optimizer step and attributed to the innermost Python frame outside torch",
        "sync_selftest": selftest,
        "checks": checks,
        "all_checks_passed": all(checks.values()),
        "errors": errors,
        "summary": summary,
        "reset_check": reset,
        "lora": lora,
        "runs": runs,
        "skipped": skipped,
        "notes": notes,
        "wall_seconds": time.perf_counter() - started,
    }
    (out / "gpu_check.json").write_text(json.dumps(report, indent=1, default=str))
    text = guarded(errors, "markdown", markdown, report) or f"markdown failed: {errors.get('markdown')}"
    (out / "gpu_check.md").write_text(text)
    print(text, flush=True)
    return 0 if report["all_checks_passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
