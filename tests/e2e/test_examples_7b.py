"""Every example config, as a user runs it: its data commands, then axolotl's full config path.

For each ``examples/yaml/*.yml``:

1. The data commands its header gives are run in a fresh "user folder" (``generate-data``
   through our CLI; ``python -c`` / ``python - <<'PY'`` snippets executed with the hub
   calls answered from the offline GSM8K copy, 24 rows; counts capped at 24). So every
   ``datasets:`` path must be written by a command the header shows.
2. The YAML is copied to another folder with only ``base_model`` (and any tokenizer key)
   pointed at a tiny local model of the same family (a Qwen3-style chat template where the
   config asks for the tokenizer's own); every other key stays as written.
3. A subprocess, started in the user folder, runs axolotl's ``load_cfg`` on it: plugin
   registration, schema, ``prepare_optim_env`` with the DeepSpeed environment (a gloo
   group stands in for the NCCL one axolotl asks for; ``DS_ACCELERATOR=cpu``),
   ``normalize_config``; then ``load_datasets`` tokenizes the files through the configured
   ``type:``. Configs with DeepSpeed get a process each (axolotl initialises the
   distributed state once per process); the others share one.

Then the header's promises are checked against the file: the GPU count and the global
batch it is sized for, sdpa, what flash-attention needs, the "not run on a GPU" status,
and inline DeepSpeed settings equal to ``examples/deepspeed/zeroN.json``.

Written for axolotl 0.19 and 0.21 (same ``load_cfg`` / ``load_datasets`` entry points).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

HERE = Path(__file__).resolve()
REPO_ROOT = next(parent for parent in HERE.parents if (parent / "examples" / "yaml").is_dir())
EXAMPLES_DIR = REPO_ROOT / "examples" / "yaml"
DEEPSPEED_DIR = REPO_ROOT / "examples" / "deepspeed"
EXAMPLES = sorted(EXAMPLES_DIR.glob("*.yml"))
SHARED_DATA = Path(os.environ.get("MASKTHOUGHT_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))
ROWS = 24  # rows a data command writes here, whatever count it names
WORKER_TIMEOUT_S = 600

# What each GPU example is sized for: (GPUs, global batch). The header must say both, and
# micro_batch_size x gradient_accumulation_steps x GPUs must equal the batch.
SIZED_FOR = {
    "llama2_7b_gsm8k_mft_lora.yml": (1, 64),
    "llama2_7b_gsm8k_mft_full_zero3.yml": (8, 64),
    "mistral_7b_metamath_mft_mask.yml": (8, 64),
    "mistral_7b_gsm8k_icot_si_zero2.yml": (8, 32),
    "qwen_think_reasoning_mft.yml": (1, 16),
    "gpt2_4x4_icot_si.yml": (1, 32),
    "gpt2_9x9_icot_si.yml": (1, 32),
    "both_techniques.yml": (1, 32),
}
PAPER_TARGETS = {  # the paper's number each header names
    "llama2_7b_gsm8k_mft_lora.yml": ["41.6", "47.1"],
    "llama2_7b_gsm8k_mft_full_zero3.yml": ["41.6", "47.1"],
    "mistral_7b_metamath_mft_mask.yml": ["66.5", "69.0"],
    "mistral_7b_gsm8k_icot_si_zero2.yml": ["0.51"],
    "gpt2_4x4_icot_si.yml": ["1.00"],
    "gpt2_9x9_icot_si.yml": ["0.99"],
}
FLASH_CAPABLE = {"llama", "mistral", "qwen"}  # headers of these families say what flash-attention needs

QWEN_STYLE_TEMPLATE = r"""
{%- set ns = namespace(last_user=-1) %}
{%- for message in messages %}{% if message.role == 'user' %}{% set ns.last_user = loop.index0 %}{% endif %}{% endfor %}
{%- for message in messages %}
{%- if message.role == 'assistant' %}
{%- set reasoning = message.reasoning_content if message.reasoning_content is string else '' %}
{%- if loop.index0 > ns.last_user %}
{{- '<|im_start|>assistant\n<think>\n' + reasoning.strip('\n') + '\n</think>\n\n' + message.content.lstrip('\n') + '<|im_end|>\n' }}
{%- else %}
{{- '<|im_start|>assistant\n' + message.content + '<|im_end|>\n' }}
{%- endif %}
{%- else %}
{{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>\n' }}
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{% endif %}
"""


# ---- the header ---------------------------------------------------------------------------------
def _header(text: str) -> str:
    """The comment lines before the first key, without their ``#``."""
    lines = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        lines.append(line[1:])
    return "\n".join(lines)


def _data_commands(header: str) -> list[tuple[str, str]]:
    """("cli", argv-line) / ("python", code) for each runnable data command, in order."""
    commands, lines, index = [], header.splitlines(), 0
    while index < len(lines):
        line = lines[index].strip()
        index += 1
        if line.startswith("axolotl-maskthought generate-data "):
            commands.append(("cli", line))
        elif line.startswith("python -c "):
            commands.append(("python", shlex.split(line)[2]))
        elif line == "python - <<'PY'":
            body = []
            while lines[index].strip() != "PY":
                body.append(lines[index])
                index += 1
            index += 1
            indent = min(len(text) - len(text.lstrip()) for text in body if text.strip())
            commands.append(("python", "\n".join(text[indent:] for text in body)))
    return commands


# ---- the hub, answered offline --------------------------------------------------------------
def _gsm8k_rows(split: str) -> list[dict]:
    path = SHARED_DATA / "gsm8k" / f"{split}.jsonl"
    if not path.is_file():
        pytest.fail(f"offline GSM8K not found at {path}; set MASKTHOUGHT_SHARED_DATA", pytrace=False)
    with path.open(encoding="utf-8") as handle:
        return [json.loads(next(handle)) for _ in range(ROWS)]


def _fake_load_dataset(path, name=None, split=None, **kwargs):
    from datasets import Dataset

    assert (path, name) == ("openai/gsm8k", "main"), f"a data command loads {path!r} {name!r}: teach this test its rows"
    assert split in ("train", "test"), split
    return Dataset.from_list(_gsm8k_rows(split))


def _fake_hf_hub_download(repo_id, filename, repo_type=None, local_dir=None, **kwargs):
    assert (repo_id, filename, repo_type) == ("meta-math/MetaMathQA", "MetaMathQA-395K.json", "dataset"), (
        f"a data command downloads {repo_id}/{filename}: teach this test its rows"
    )
    rows = []
    for row in _gsm8k_rows("train"):  # MetaMathQA's fields; its GSM8K-derived rows end in '#### N'
        answer = row["answer"].split("####")[-1].strip()
        rows.append(
            {
                "query": row["question"],
                "response": f"{row['answer']}\nThe answer is: {answer}",
                "type": "GSM_Rephrased",
                "original_question": row["question"],
            }
        )
    target = Path(local_dir or ".") / filename
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(rows), encoding="utf-8")
    return str(target)


def _run_data_commands(header: str, user_dir: Path, monkeypatch) -> None:
    import datasets
    import huggingface_hub

    from axolotl_maskthought.cli import main as maskthought_cli

    monkeypatch.setattr(datasets, "load_dataset", _fake_load_dataset)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", _fake_hf_hub_download)
    monkeypatch.chdir(user_dir)
    (user_dir / "data").mkdir(exist_ok=True)
    for kind, command in _data_commands(header):
        if kind == "cli":
            argv = shlex.split(command)[1:]
            if "--count" in argv:
                position = argv.index("--count") + 1
                argv[position] = str(min(int(argv[position]), ROWS))
            assert maskthought_cli(argv) == 0, command
        else:
            exec(compile(command, "<example data command>", "exec"), {"__name__": "__example__"})


# ---- tiny stand-ins for the hub models ---------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    from axolotl_maskthought.data.generators import generate_multiplication
    from axolotl_maskthought.toy.tiny import build_model, build_tiny, build_tokenizer

    root = tmp_path_factory.mktemp("tiny-models")
    texts = [row["question"] + "\n" + row["answer"] for row in _gsm8k_rows("train") + _gsm8k_rows("test")]
    texts += [
        line.replace("||", " ") for digits in (3, 4, 9) for line in generate_multiplication(digits, digits, 8, seed=0)
    ]
    texts *= 4
    models = {
        "llama": build_tiny(root / "llama", texts, vocab_size=1000, arch="llama", hidden=32, layers=1, heads=2),
        "gpt2": build_tiny(root / "gpt2", texts, vocab_size=1000, arch="gpt2", hidden=32, layers=1, heads=2),
    }
    tokenizer = build_tokenizer(texts + ["user assistant system"] * 8, vocab_size=1000)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tokenizer.add_tokens(["<think>", "</think>"])
    tokenizer.chat_template = QWEN_STYLE_TEMPLATE
    models["chat"] = root / "chat"
    build_model(tokenizer, hidden=32, layers=1, heads=2).save_pretrained(models["chat"])
    tokenizer.save_pretrained(models["chat"])
    return models


def _family(raw: dict) -> str:
    if raw.get("chat_template") == "tokenizer_default":
        return "chat"
    return "gpt2" if "gpt2" in str(raw.get("base_model", "")).lower() else "llama"


# ---- the subprocess ---------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def loaded(tmp_path_factory, tiny_models) -> dict[str, dict]:
    """Run every example's data commands, then axolotl on it; name -> what the worker recorded."""
    pytest.importorskip("deepspeed")
    root = tmp_path_factory.mktemp("examples-7b")
    shared, own = [], []
    with pytest.MonkeyPatch.context() as monkeypatch:
        for path in EXAMPLES:
            text = path.read_text(encoding="utf-8")
            raw = yaml.safe_load(text)
            user_dir = root / path.stem / "user"  # where the user runs `axolotl train`
            user_dir.mkdir(parents=True)
            _run_data_commands(_header(text), user_dir, monkeypatch)
            local = dict(raw)
            if not (user_dir / str(raw["base_model"])).is_dir():  # a hub id: a tiny local model instead
                for key in ("base_model", "tokenizer_config", "base_model_config"):
                    if key in raw or key == "base_model":
                        local[key] = str(tiny_models[_family(raw)])
            local["dataset_num_proc"] = 1  # no worker pool on 2 cores
            config = root / path.stem / "configs" / path.name  # not the folder it runs in
            config.parent.mkdir()
            config.write_text(yaml.safe_dump(local, sort_keys=False), encoding="utf-8")
            job = {
                "name": path.name,
                "config": str(config),
                "cwd": str(user_dir),
                "record": str(root / path.stem / "record.json"),
            }
            (own if raw.get("deepspeed") else shared).append([job])
    groups = own + ([sum(shared, [])] if shared else [])

    processes = []
    for index, jobs in enumerate(groups):
        jobs_file = root / f"jobs-{index}.json"
        jobs_file.write_text(json.dumps(jobs))
        env = dict(os.environ)
        env.update(
            HF_HUB_OFFLINE="1",
            HF_DATASETS_OFFLINE="1",
            TRANSFORMERS_OFFLINE="1",
            AXOLOTL_DO_NOT_TRACK="1",
            WANDB_MODE="disabled",
            TOKENIZERS_PARALLELISM="false",
            DS_ACCELERATOR="cpu",
            CUDA_VISIBLE_DEVICES="",
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(_free_port()),
            RANK="0",
            LOCAL_RANK="0",
            WORLD_SIZE="1",
            LOCAL_WORLD_SIZE="1",
            OMP_NUM_THREADS="1",
            PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")])),
        )
        env.pop("AXOLOTL_IS_PREPROCESS", None)
        log = root / f"worker-{index}.log"
        with log.open("w") as handle:
            process = subprocess.Popen(
                [sys.executable, str(HERE), str(jobs_file)], env=env, stdout=handle, stderr=subprocess.STDOUT, cwd=root
            )
        processes.append((process, log, jobs))
    deadline = time.monotonic() + WORKER_TIMEOUT_S
    records = {}
    for process, log, jobs in processes:
        try:
            process.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        for job in jobs:
            record_path = Path(job["record"])
            record = json.loads(record_path.read_text()) if record_path.is_file() else {}
            record.setdefault("error", None if record else f"no record (exit {process.returncode})")
            record["log_tail"] = log.read_text(errors="replace")[-4000:]
            records[job["name"]] = record
    return records


# ---- the tests ----------------------------------------------------------------------------------
@pytest.mark.parametrize("path", EXAMPLES, ids=[path.name for path in EXAMPLES])
def test_example_loads_through_axolotl(path, loaded):
    record = loaded[path.name]
    assert not record["error"], f"{path.name}: {record['error']}\n{record.get('traceback', '')}\n{record['log_tail']}"
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    cfg = record["cfg"]
    for block in ("masked_thought", "cot_removal", "cot_format"):  # written values come out unchanged
        for key, value in (raw.get(block) or {}).items():
            if isinstance(value, dict):  # a nested block (loss_gate): each written key, defaults aside
                for inner, inner_value in value.items():
                    assert cfg[block][key][inner] == inner_value, f"{block}.{key}.{inner}"
            else:
                assert cfg[block].get(key) == value, f"{block}.{key}"
    masked = cfg.get("masked_thought")
    if masked and masked["replacement"] == "mask_token":
        assert masked["mask_token"] in (cfg.get("tokens") or []), "the plugin adds <mask> to axolotl's `tokens:`"
    assert cfg["attn_implementation"] == raw["attn_implementation"] == "sdpa"
    assert cfg["micro_batch_size"] == raw["micro_batch_size"]
    assert cfg["gradient_accumulation_steps"] == raw.get("gradient_accumulation_steps", 1)
    # The data its commands made went through the configured `type:`.
    assert record["train_rows"] > 0, (
        f"no training rows left of {record['file_rows']} (sequence_len {raw['sequence_len']})"
    )


@pytest.mark.parametrize(
    "path", [path for path in EXAMPLES if yaml.safe_load(path.read_text()).get("deepspeed")], ids=lambda path: path.name
)
def test_deepspeed_environment_is_prepared(path, loaded):
    """Inline DeepSpeed settings reach accelerate and transformers from any folder."""
    record = loaded[path.name]
    assert not record["error"], f"{path.name}: {record['error']}\n{record['log_tail']}"
    inline = yaml.safe_load(path.read_text(encoding="utf-8"))["deepspeed"]
    assert isinstance(inline, dict), "`deepspeed:` is written inline, so the file works from any folder"
    stage = inline["zero_optimization"]["stage"]
    reference = DEEPSPEED_DIR / f"zero{stage}.json"
    assert inline == json.loads(reference.read_text()), f"the inline block differs from {reference.name}"
    env = record["env"]
    assert env["ACCELERATE_USE_DEEPSPEED"] == "true"
    assert env["ACCELERATE_DEEPSPEED_ZERO_STAGE"] == str(stage)
    assert env.get("ACCELERATE_DEEPSPEED_ZERO3_INIT") == ("true" if stage == 3 else None)
    assert env["ACCELERATE_GRADIENT_ACCUMULATION_STEPS"] == str(record["cfg"]["gradient_accumulation_steps"])
    assert record["deepspeed_file"] == inline, "accelerate reads a file with the inline settings"
    assert record["cfg"]["deepspeed"] == inline
    assert record["process_group"] is True
    # What accelerate builds from that environment when axolotl creates its Accelerator.
    assert record["distributed_type"] == "DEEPSPEED"
    assert record["plugin_zero_stage"] == stage
    assert record["plugin_is_zero3"] == (stage == 3)


@pytest.mark.parametrize("name", sorted(SIZED_FOR))
def test_header_says_what_it_is_sized_for(name):
    text = (EXAMPLES_DIR / name).read_text(encoding="utf-8")
    header, raw = _header(text), yaml.safe_load(text)
    flat = " ".join(header.split())
    gpus, batch = SIZED_FOR[name]
    assert raw["micro_batch_size"] * raw.get("gradient_accumulation_steps", 1) * gpus == batch
    assert re.search(rf"Sized for: {gpus} GPUs? with \d+ GB", flat), f"`Sized for: {gpus} GPU(s) with N GB ...`"
    assert (
        f"micro_batch_size {raw['micro_batch_size']} x gradient_accumulation_steps "
        f"{raw.get('gradient_accumulation_steps', 1)} x {gpus} GPU"
    ) in flat
    assert re.search(rf"Global batch[^.]*\b{batch}\b", flat), f"the header names the global batch {batch}"
    assert "not run on a GPU" in flat or "no full run has been made" in flat, "the header says it is unrun"
    assert "Targets:" in flat
    for number in PAPER_TARGETS.get(name, []):
        assert number in flat, f"the paper's {number}"
    assert "sdpa" in flat
    if any(family in name for family in FLASH_CAPABLE):
        assert "flash_attention_2" in flat and "flash-attn" in flat, "what flash-attention needs"
    for key in ("flash_attention", "sdp_attention", "xformers_attention", "eager_attention"):
        assert key not in raw, f"deprecated `{key}:`; use attn_implementation"


@pytest.mark.parametrize("path", EXAMPLES, ids=[path.name for path in EXAMPLES])
def test_header_names_only_what_exists(path):
    """Every data path is named beside its commands; the module and file paths it names exist."""
    text = path.read_text(encoding="utf-8")
    header, raw = _header(text), yaml.safe_load(text)
    assert _data_commands(header), "the header gives the commands that make the data"
    for dataset in raw["datasets"]:  # (that they do make it, `loaded` shows)
        assert not Path(dataset["path"]).is_absolute() and dataset["path"] in header, (
            f"the header does not say how to make {dataset['path']}"
        )
    import importlib

    for module in re.findall(r"\b(axolotl_maskthought(?:\.[a-z_0-9]+)+)", text):
        try:
            importlib.import_module(module)
        except ModuleNotFoundError:
            parent, _, attribute = module.rpartition(".")
            assert hasattr(importlib.import_module(parent), attribute), f"{module} does not exist"
    for repo_path in re.findall(r"\b((?:examples|tests|bench|axolotl_maskthought)/[\w/.-]+\.(?:py|json|yml|md))", text):
        assert (REPO_ROOT / repo_path).exists(), f"the header names {repo_path}, which does not exist"


# ---- the worker (run as a script by the `loaded` fixture) ----------------------------------------
def _prepare_worker(deepspeed: bool) -> None:
    import importlib

    from axolotl.utils.data import sft, shared

    def save_in_process(cfg, dataset, dataset_hash, split):  # no spawn pool re-importing torch
        target = shared.get_prepared_dataset_path(cfg, dataset_hash)
        target.mkdir(parents=True, exist_ok=True)
        dataset.save_to_disk(str(target))

    sft.save_preprocessed_dataset = save_in_process
    if deepspeed:
        import torch

        # axolotl asks DeepSpeed for an NCCL group; with one already there DeepSpeed wraps it.
        importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None
        torch.distributed.init_process_group("gloo", rank=0, world_size=1)


def _count_rows(cfg) -> int:
    total = 0
    for dataset in cfg["datasets"]:
        path = Path(dataset["path"])
        text = path.read_text(encoding="utf-8")
        total += len(json.loads(text)) if text.lstrip().startswith("[") else len(text.splitlines())
    return total


def _worker(jobs_file: str) -> int:
    import traceback

    jobs = json.loads(Path(jobs_file).read_text())
    saved_env = dict(os.environ)
    prepared = False
    for job in jobs:
        record: dict = {"error": None}
        try:
            os.environ.clear()
            os.environ.update(saved_env)
            os.chdir(job["cwd"])
            raw = yaml.safe_load(Path(job["config"]).read_text())
            if not prepared:
                _prepare_worker(bool(raw.get("deepspeed")))
                prepared = True
            from axolotl.cli.config import load_cfg
            from axolotl.common.datasets import load_datasets
            from axolotl.integrations.base import PluginManager

            PluginManager.get_instance().plugins.clear()
            cfg = load_cfg(job["config"])
            import torch

            keys = (
                "masked_thought",
                "cot_removal",
                "cot_format",
                "attn_implementation",
                "micro_batch_size",
                "gradient_accumulation_steps",
                "batch_size",
                "deepspeed",
                "tokens",
                "sequence_len",
            )
            record["cfg"] = json.loads(json.dumps({key: cfg.get(key) for key in keys}, default=str))
            record["env"] = {key: value for key, value in os.environ.items() if key.startswith("ACCELERATE_")}
            ds_file = os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE")
            record["deepspeed_file"] = json.loads(Path(ds_file).read_text()) if ds_file else None
            record["process_group"] = torch.distributed.is_initialized()
            if raw.get("deepspeed"):
                from accelerate.state import PartialState
                from accelerate.utils import DeepSpeedPlugin

                record["distributed_type"] = PartialState().distributed_type.name
                plugin = DeepSpeedPlugin()  # reads ACCELERATE_DEEPSPEED_CONFIG_FILE, as axolotl's Accelerator does
                record["plugin_zero_stage"] = plugin.zero_stage
                record["plugin_is_zero3"] = bool(plugin.hf_ds_config.is_zero3())
            record["file_rows"] = _count_rows(cfg)
            meta = load_datasets(cfg=cfg)
            record["train_rows"] = len(meta.train_dataset)
        except BaseException as err:  # recorded for the test to show
            record["error"] = f"{type(err).__name__}: {err}"
            record["traceback"] = traceback.format_exc()
        Path(job["record"]).write_text(json.dumps(record, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(_worker(sys.argv[1]))
