"""The README's promises to an axolotl user, each run as the user would (issue 18):

* `axolotl inference` (the real console script, prompt on stdin) answers with the model
  training produced, full fine-tune and LoRA, with the added `<mask>` token in the prompt;
* the plugin's metrics (README "What shows in your logs") reach wandb's offline run files;
* a LoRA adapter trained with `<mask>` loads in plain peft once the base model's embeddings
  are resized to the training tokenizer (``model.resize_token_embeddings(len(tokenizer))``);
  without the resize peft refuses it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import axolotl_run
import pytest
import torch
from axolotl_run import gsm8k_dataset, run_cli, write_config

from axolotl_maskthought.config import PROMPT_TEMPLATES
from axolotl_maskthought.data.files import read_jsonl

MASK = "<mask>"
ROWS = 32
BASE_VOCAB = 800
CAPTURE_PLUGIN = "promise_capture.FirstForwardCapture"
PROMPT = f"Question: Natalia sold {MASK} clips to {MASK} of her friends. How many clips?"
# Every key of the README's metrics table that a training step logs (eval accuracy is logged at
# evaluation steps with `cot_format.eval_accuracy_samples`; it is not part of this run).
STEP_METRICS = [
    "masked_thought/rate",
    "masked_thought/masked_fraction",
    "cot_removal/scheduled",
    "cot_removal/removed_tokens_mean",
    "cot_removal/no_cot_fraction",
    "cot_removal/optimizer_reset",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, shared_data: Path) -> dict:
    """A full fine-tune (Masked Thought with `<mask>`, CoT removal with resets, wandb offline)
    and a LoRA run (`<mask>`, embeddings in `lora_modules_to_save`), both by `axolotl train`."""
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("promises")
    rows = read_jsonl(shared_data / "gsm8k" / "train.jsonl", limit=ROWS)
    texts = [row["question"] + "\n" + row["answer"] for row in rows] + list(PROMPT_TEMPLATES.values())
    base = axolotl_run.build_base_model(root / "model", texts, vocab_size=BASE_VOCAB)
    assert len(AutoTokenizer.from_pretrained(base)) == BASE_VOCAB
    data = [gsm8k_dataset(axolotl_run.write_jsonl(root / "gsm8k.jsonl", rows))]
    plugins = [axolotl_run.MASKTHOUGHT_PLUGIN, CAPTURE_PLUGIN]
    masked = {"ratio": 0.4, "warmup": 0, "replacement": "mask_token"}
    full = write_config(
        root / "full.yml",
        base_model=base,
        datasets=data,
        output_dir=root / "out-full",
        plugins=plugins,
        masked_thought=masked,
        # 8 micro-batches an epoch, an increment every 2 steps: resets at steps 2 and 4
        cot_removal={"tokens_per_epoch": 4, "smoothing_lambda": None, "reset_optimizer": True},
        wandb_project="maskthought-promises",
        wandb_mode="offline",
        learning_rate=0.01,
    )
    lora = write_config(
        root / "lora.yml",
        base_model=base,
        datasets=data,
        output_dir=root / "out-lora",
        plugins=plugins,
        masked_thought=masked,
        adapter="lora",
        lora_r=4,
        lora_alpha=8,
        lora_target_linear=True,
        lora_dropout=0.0,
        lora_modules_to_save=["embed_tokens", "lm_head"],
        learning_rate=0.01,  # the <mask> rows and the LoRA weights move visibly in 4 steps
    )
    wandb_dir = root / "wandb-dir"
    wandb_dir.mkdir()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("WANDB_DIR", str(wandb_dir))
        for config in (full, lora):
            run = run_cli(["train", config, "--launcher", "python"], cwd=root)
            assert run.returncode == 0, run.stdout[-4000:]
    return {
        "root": root,
        "base": base,
        "full": (full, root / "out-full"),
        "lora": (lora, root / "out-lora"),
        "wandb_dir": wandb_dir,
    }


def _inference(trained: dict, kind: str) -> dict:
    """`axolotl inference` on the trained model with PROMPT on stdin; its first forward."""
    import subprocess
    import sys

    from axolotl_run import HELPERS_DIR, OFFLINE_ENV

    config, output = trained[kind]
    flag = "--base-model" if kind == "full" else "--lora-model-dir"
    capture = trained["root"] / f"inference-{kind}.pt"
    env = {**os.environ, **OFFLINE_ENV, "OMP_NUM_THREADS": "1", "PROMISE_CAPTURE": str(capture)}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HELPERS_DIR), env.get("PYTHONPATH")]))
    run = subprocess.run(
        [
            str(Path(sys.executable).with_name("axolotl")),
            "inference",
            str(config),
            flag,
            str(output),
            "--launcher",
            "python",
        ],
        cwd=trained["root"],
        env=env,
        input=PROMPT + "\n",
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=600,
        check=False,
    )
    assert run.returncode == 0, run.stdout[-4000:]
    assert capture.exists(), f"the model never ran\n{run.stdout[-4000:]}"
    return {"stdout": run.stdout, **torch.load(capture)}


def _logits(model, input_ids) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=input_ids).logits.float()


def test_inference_full_fine_tune_with_mask_token(trained):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _, output = trained["full"]
    tokenizer = AutoTokenizer.from_pretrained(output)
    assert len(tokenizer) == BASE_VOCAB + 1
    first = _inference(trained, "full")
    mask_id = tokenizer.convert_tokens_to_ids(MASK)
    assert first["input_ids"][0].tolist() == tokenizer(PROMPT)["input_ids"]
    assert first["input_ids"][0].tolist().count(mask_id) == 2  # `<mask>` is one token, twice
    assert first["logits"].shape[-1] == BASE_VOCAB + 1
    trained_model = AutoModelForCausalLM.from_pretrained(output, dtype=torch.float32).eval()
    # generate() computes the prefill's logits at the last position only
    expected = _logits(trained_model, first["input_ids"])[:, -1]
    torch.testing.assert_close(first["logits"][:, -1], expected, atol=1e-4, rtol=1e-4)
    base_model = AutoModelForCausalLM.from_pretrained(trained["base"], dtype=torch.float32)
    trained_mask_row = trained_model.get_input_embeddings().weight[mask_id]
    assert not torch.allclose(trained_mask_row, base_model.get_input_embeddings().weight.mean(dim=0), atol=1e-6)


def _plain_peft(trained: dict, resize: bool):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _, adapter = trained["lora"]
    tokenizer = AutoTokenizer.from_pretrained(adapter)
    model = AutoModelForCausalLM.from_pretrained(trained["base"], dtype=torch.float32)
    if resize:
        model.resize_token_embeddings(len(tokenizer))
    return PeftModel.from_pretrained(model, str(adapter)).eval()


def test_inference_lora_with_mask_token(trained):
    from transformers import AutoTokenizer

    _, adapter = trained["lora"]
    tokenizer = AutoTokenizer.from_pretrained(adapter)
    assert len(tokenizer) == BASE_VOCAB + 1
    first = _inference(trained, "lora")
    mask_id = tokenizer.convert_tokens_to_ids(MASK)
    assert first["input_ids"][0].tolist() == tokenizer(PROMPT)["input_ids"]
    assert first["input_ids"][0].tolist().count(mask_id) == 2
    # base + adapter, as plain peft loads them (after the resize), answers the same
    reference = _plain_peft(trained, resize=True)
    expected = _logits(reference, first["input_ids"])[:, -1]
    torch.testing.assert_close(first["logits"][:, -1], expected, atol=1e-4, rtol=1e-4)


def test_plain_peft_loads_the_adapter_after_resize_token_embeddings(trained):
    """The README's instruction: ``model.resize_token_embeddings(len(tokenizer))`` before
    ``PeftModel.from_pretrained``; the adapter's `<mask>` rows (trained) are then used."""
    from transformers import AutoTokenizer

    _, adapter = trained["lora"]
    tokenizer = AutoTokenizer.from_pretrained(adapter)
    model = _plain_peft(trained, resize=True)
    ids = torch.tensor([tokenizer(PROMPT)["input_ids"]])
    logits = _logits(model, ids)
    assert logits.shape == (1, ids.shape[1], BASE_VOCAB + 1)
    assert torch.isfinite(logits).all()
    generated = model.generate(input_ids=ids, max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert generated.shape[1] == ids.shape[1] + 8 or tokenizer.eos_token_id in generated[0, ids.shape[1] :]


def test_plain_peft_without_resize_is_refused(trained):
    """Without the resize the base model has 800 rows, the adapter's saved embeddings 801:
    peft stops with a size mismatch (it never silently drops the `<mask>` row)."""
    with pytest.raises(RuntimeError, match=r"size mismatch.*801.*800|size mismatch.*800.*801"):
        _plain_peft(trained, resize=False)


# ---- wandb -------------------------------------------------------------------------------
def _wandb_records(path: Path):
    """The raw records of a ``run-*.wandb`` file: wandb's LevelDB-style log (a 7-byte
    ``:W&B`` header, 32 KiB blocks, each record chunk headed by crc32 u32, length u16 and
    type u8: 1 full, 2 first, 3 middle, 4 last)."""
    import struct

    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path}: not a wandb run file"
    position, block, pending = 7, 32768, b""
    while position + 7 <= len(data):
        space = block - position % block
        if space < 7:  # a block's tail too short for a header is padding
            position += space
            continue
        _, length, kind = struct.unpack("<IHB", data[position : position + 7])
        chunk = data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind == 1:
            yield chunk
        elif kind == 2:
            pending = chunk
        elif kind == 3:
            pending += chunk
        elif kind == 4:
            yield pending + chunk


def _offline_history(wandb_dir: Path) -> list[dict]:
    """The history rows (key -> value) of the one offline run under ``wandb_dir``."""
    from wandb.proto import wandb_internal_pb2

    runs = sorted(wandb_dir.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(runs) == 1, f"offline runs under {wandb_dir}: {runs}"
    history = []
    for data in _wandb_records(runs[0]):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(data)
        if record.WhichOneof("record_type") == "history":
            history.append(
                {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            )
    return history


def test_metrics_reach_the_wandb_offline_run(trained):
    history = _offline_history(trained["wandb_dir"])
    logged = [row for row in history if "train/loss" in row]
    assert len(logged) == 4, history  # logging_steps 1, 4 steps
    for key in STEP_METRICS:
        assert all(f"train/{key}" in row for row in logged if key != "cot_removal/optimizer_reset"), key
    for row in logged:
        assert 0.2 < row["train/masked_thought/masked_fraction"] < 0.6, row  # ratio 0.4
        assert row["train/masked_thought/rate"] == pytest.approx(0.4)
    scheduled = [row["train/cot_removal/scheduled"] for row in logged]
    assert scheduled == sorted(scheduled) and scheduled[-1] > scheduled[0], scheduled
    increments = [
        row["train/global_step"]
        for index, row in enumerate(logged)
        if index and scheduled[index] > scheduled[index - 1]
    ]
    resets = [row["train/global_step"] for row in logged if row.get("train/cot_removal/optimizer_reset") == 1]
    assert resets == increments, (resets, scheduled)
