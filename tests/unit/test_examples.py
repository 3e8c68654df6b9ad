"""The example configs and the README's YAML go through axolotl's own validation.

Nothing is downloaded: ``base_model`` (and ``tokenizer_config`` / ``base_model_config``
when set) is pointed at a tiny local model of the same family, ``output_dir`` and
``dataset_prepared_path`` at a temporary directory; every other key stays as written.

Validation is axolotl's: ``load_cfg`` (plugin registration, the merged schema with our
blocks, ``normalize_config``) for examples without DeepSpeed. With DeepSpeed,
``load_cfg``'s last step ``prepare_optim_env`` initialises DeepSpeed's process group
with the NCCL backend (axolotl/utils/trainer.py:585-590, GPU only), so those examples
run the same steps without it: ``prepare_plugins``, ``validate_config``,
``normalize_config`` (which reads the DeepSpeed JSON), ``normalize_cfg_datasets``.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from pathlib import Path

import pytest
import yaml
from paths import REPO_ROOT

EXAMPLES_DIR = REPO_ROOT / "examples" / "yaml"
DEEPSPEED_DIR = REPO_ROOT / "examples" / "deepspeed"
EXAMPLES = sorted(list(EXAMPLES_DIR.glob("*.yml")) + list(EXAMPLES_DIR.glob("*.yaml")))
BLOCKS = ("masked_thought", "cot_removal", "cot_format")
MFT_PAPER = "2403.02178"
ICOT_PAPER = "2405.14838"

# What each paper example must keep: the papers' settings (shared/REFERENCE.md).
# `gpus` is the GPU count the comment's batch arithmetic assumes.
PAPER_SETTINGS = {
    "llama2_7b_gsm8k_mft_lora.yml": dict(
        paper=MFT_PAPER,
        base_model="meta-llama/Llama-2-7b-hf",
        adapter="lora",
        gpus=1,
        batch=64,
        masked_thought={"ratio": 0.4, "replacement": "random", "warmup": 0.66, "scope": "response"},
        num_epochs=10,
        sequence_len=512,
        lr_scheduler="cosine",
        bf16=True,
    ),
    "llama2_7b_gsm8k_mft_full_zero3.yml": dict(
        paper=MFT_PAPER,
        base_model="meta-llama/Llama-2-7b-hf",
        adapter=None,
        gpus=8,
        batch=64,
        masked_thought={"ratio": 0.4, "replacement": "random", "warmup": 0.66, "scope": "response"},
        learning_rate=1e-5,
        num_epochs=10,
        sequence_len=512,
        lr_scheduler="cosine",
        bf16=True,
        zero_stage=3,
    ),
    "mistral_7b_metamath_mft_mask.yml": dict(
        paper=MFT_PAPER,
        base_model="mistralai/Mistral-7B-v0.1",
        adapter=None,
        gpus=8,
        batch=64,
        masked_thought={"ratio": 0.2, "replacement": "mask_token", "mask_token": "<mask>"},
        learning_rate=1e-5,
        sequence_len=512,
        lr_scheduler="cosine",
        bf16=True,
        zero_stage=3,
    ),
    "gpt2_4x4_icot_si.yml": dict(
        paper=ICOT_PAPER,
        base_model="openai-community/gpt2",
        gpus=1,
        batch=32,
        digits=4,
        cot_removal={
            "tokens_per_epoch": 8,
            "smoothing_lambda": 4,
            "side": "left",
            "reset_optimizer": True,
            "remove_all_at": None,
            "start_epoch": 0,
        },
        learning_rate=5e-5,
        bf16=False,
        fp16=False,
        lr_scheduler="constant",
        weight_decay=0.01,
        max_grad_norm=1.0,
    ),
    "gpt2_9x9_icot_si.yml": dict(
        paper=ICOT_PAPER,
        base_model="openai-community/gpt2",
        gpus=1,
        batch=32,
        digits=9,
        cot_removal={
            "tokens_per_epoch": 8,
            "smoothing_lambda": 4,
            "side": "left",
            "reset_optimizer": True,
            "remove_all_at": None,
            "start_epoch": 0,
        },
        learning_rate=5e-5,
        bf16=False,
        fp16=False,
        lr_scheduler="constant",
        weight_decay=0.01,
        max_grad_norm=1.0,
    ),
    "mistral_7b_gsm8k_icot_si_zero2.yml": dict(
        paper=ICOT_PAPER,
        base_model="mistralai/Mistral-7B-v0.1",
        gpus=8,
        batch=32,
        cot_removal={
            "tokens_per_epoch": 8,
            "smoothing_lambda": 4,
            "side": "left",
            "reset_optimizer": True,
            "remove_all_at": 39,
        },
        learning_rate=1e-5,
        micro_batch_size=2,
        gradient_accumulation_steps=2,
        sequence_len=150,
        bf16=True,
        attn_implementation="sdpa",
        num_epochs=80,
        zero_stage=2,
        lr_scheduler="constant",
    ),
    "both_techniques.yml": dict(
        paper=None,
        base_model="openai-community/gpt2",
        gpus=1,
        batch=32,
        cot_removal={"tokens_per_epoch": 8, "smoothing_lambda": 4, "side": "left"},
        masked_thought={"scope": "reasoning"},
    ),
}


# ---- helpers ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    from axolotl_maskthought.toy.tiny import build_tiny

    root = tmp_path_factory.mktemp("tiny")
    texts = ["What is 12 + 30? 12 + 30 = 42 #### 42", "3 4 * 5 6||1 2 + 3 4 #### 5 6"] * 8
    return {
        "llama": build_tiny(root / "llama", texts, vocab_size=300, arch="llama", hidden=32, layers=1, heads=2),
        "gpt2": build_tiny(root / "gpt2", texts, vocab_size=300, arch="gpt2", hidden=32, layers=1, heads=2),
    }


def _local(raw: dict, tiny_models: dict[str, Path], tmp: Path) -> dict:
    """``raw`` with the hub model swapped for a tiny local one of the same family."""
    local = dict(raw)
    family = "gpt2" if "gpt2" in str(raw.get("base_model", "")).lower() else "llama"
    for key in ("base_model", "tokenizer_config", "base_model_config"):
        if key in local or key == "base_model":
            local[key] = str(tiny_models[family])
    local["output_dir"] = str(tmp / "out")
    local["dataset_prepared_path"] = str(tmp / "prepared")
    return local


@pytest.fixture
def validate(tiny_models, tmp_path, monkeypatch):
    """axolotl's validation of a config dict, run from the repository root (relative
    DeepSpeed paths resolve as for a user); the environment and the plugin registry
    are restored afterwards."""
    from axolotl.integrations.base import PluginManager

    monkeypatch.chdir(REPO_ROOT)
    saved_env = dict(os.environ)
    manager = PluginManager.get_instance()

    def run(raw: dict):
        from axolotl.cli.config import gpu_capabilities, load_cfg, prepare_plugins
        from axolotl.utils.config import normalize_cfg_datasets, normalize_config, validate_config
        from axolotl.utils.dict import DictDefault

        manager.plugins.clear()
        local = _local(raw, tiny_models, tmp_path)
        if not local.get("deepspeed"):
            path = tmp_path / "config.yml"
            path.write_text(yaml.safe_dump(local, sort_keys=False))
            return load_cfg(str(path))
        cfg = DictDefault(local)
        prepare_plugins(cfg)
        capabilities, env_capabilities = gpu_capabilities()
        cfg = validate_config(cfg, capabilities=capabilities, env_capabilities=env_capabilities)
        normalize_config(cfg)
        normalize_cfg_datasets(cfg)
        return cfg

    yield run
    manager.plugins.clear()
    os.environ.clear()
    os.environ.update(saved_env)


def _check_blocks(raw: dict, cfg) -> None:
    """Each value written in our blocks comes out of validation unchanged."""
    for block in BLOCKS:
        if block not in raw:
            assert not cfg.get(block), block
            continue
        validated = cfg[block]
        assert validated is not None, block
        for key, value in (raw[block] or {}).items():
            if value is None:
                assert validated.get(key) is None, f"{block}.{key}"
            elif isinstance(value, dict):  # a nested block (loss_gate): each written key, defaults aside
                for inner, inner_value in value.items():
                    assert validated[key][inner] == inner_value, f"{block}.{key}.{inner}"
            else:
                assert validated[key] == value, f"{block}.{key}"


def _comment_lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip().startswith("#")]


# ---- the examples ---------------------------------------------------------------------------
def test_the_paper_examples_exist():
    names = {path.name for path in EXAMPLES}
    missing = set(PAPER_SETTINGS) - names
    assert not missing, f"missing examples: {sorted(missing)}"


@pytest.mark.parametrize("path", EXAMPLES, ids=[path.name for path in EXAMPLES])
def test_example_validates_with_its_values(path, validate):
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert "axolotl_maskthought.MaskThoughtPlugin" in raw.get("plugins", [])
    assert any(block in raw for block in ("masked_thought", "cot_removal"))
    assert path.read_text(encoding="utf-8").startswith("#"), "an example opens with a comment saying what it is"

    cfg = validate(raw)
    _check_blocks(raw, cfg)
    masked = cfg.get("masked_thought")
    if masked and masked["replacement"] == "mask_token":
        assert masked["mask_token"] in (cfg.get("tokens") or [])  # added by the plugin's register()
    if raw.get("deepspeed"):
        # inline, so the YAML works from any folder; and one of the tested files, verbatim
        assert isinstance(raw["deepspeed"], dict), "`deepspeed:` is written inline (a path resolves from the cwd)"
        tested = [json.loads(path.read_text()) for path in sorted(DEEPSPEED_DIR.glob("*.json"))]
        assert raw["deepspeed"] in tested, "the inline DeepSpeed block equals one of examples/deepspeed/*.json"
        assert cfg["deepspeed"] == raw["deepspeed"]


@pytest.mark.parametrize("name", sorted(PAPER_SETTINGS))
def test_paper_example_keeps_the_papers_settings(name):
    path = EXAMPLES_DIR / name
    text = path.read_text(encoding="utf-8")
    raw = yaml.safe_load(text)
    expected = dict(PAPER_SETTINGS[name])
    header = "\n".join(_comment_lines(text.split("\nbase_model:")[0]))

    assert "Targets:" in header
    paper = expected.pop("paper")
    if paper:
        assert paper in header, f"the top comment names the paper (arXiv {paper})"
    assert raw["base_model"] == expected.pop("base_model")
    gpus, batch = expected.pop("gpus"), expected.pop("batch")
    assert raw["micro_batch_size"] * raw.get("gradient_accumulation_steps", 1) * gpus == batch
    if "adapter" in expected:
        assert raw.get("adapter") == expected.pop("adapter")
    stage = expected.pop("zero_stage", None)
    if stage is not None:
        ds = raw["deepspeed"]
        assert ds["zero_optimization"]["stage"] == stage
    else:
        assert "deepspeed" not in raw
    digits = expected.pop("digits", None)
    for block in ("masked_thought", "cot_removal"):
        if block in expected:
            for key, value in expected.pop(block).items():
                assert raw[block].get(key) == value, f"{block}.{key}"
    for key, value in expected.items():
        assert raw.get(key) == value, key

    # Every relative data path says in a comment how to make it.
    comments = "\n".join(_comment_lines(text))
    for dataset in raw["datasets"]:
        assert not Path(dataset["path"]).is_absolute()
        assert dataset["path"].startswith("data/")
        assert dataset["path"] in comments, f"no comment says how to make {dataset['path']}"
    if digits is not None:
        assert f"generate-data multiplication --digits {digits} " in comments


def test_an_invalid_block_value_is_refused(validate):
    raw = yaml.safe_load((EXAMPLES_DIR / "llama2_7b_gsm8k_mft_lora.yml").read_text())
    raw["masked_thought"]["ratio"] = 1.5
    with pytest.raises(Exception, match="ratio"):
        validate(raw)


# ---- DeepSpeed configs ------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, stage", [("zero1.json", 1), ("zero2.json", 2), ("zero3.json", 3), ("zero3_offload.json", 3)]
)
def test_deepspeed_config(name, stage):
    config = json.loads((DEEPSPEED_DIR / name).read_text())
    assert config["zero_optimization"]["stage"] == stage
    if "offload" in name:
        assert config["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
        assert config["zero_optimization"]["offload_param"]["device"] == "cpu"
    # Batch sizes, clipping and precision come from the axolotl config.
    for key in (
        "train_batch_size",
        "train_micro_batch_size_per_gpu",
        "gradient_accumulation_steps",
        "gradient_clipping",
    ):
        assert config[key] == "auto", key
    assert config["bf16"]["enabled"] == "auto"


def test_every_deepspeed_file_parses_and_names_its_stage():
    paths = sorted(DEEPSPEED_DIR.glob("*.json"))
    assert {"zero1.json", "zero2.json", "zero3.json", "zero3_offload.json"} <= {path.name for path in paths}
    for path in paths:
        stage = json.loads(path.read_text())["zero_optimization"]["stage"]
        assert path.name.startswith(f"zero{stage}"), path.name


# ---- the README -------------------------------------------------------------------------------
def _readme_blocks() -> list[str]:
    text = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"^```ya?ml[^\n]*\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL)
    return [block for block in blocks if re.search(r"^\s*(masked_thought|cot_removal):", block, re.MULTILINE)]


# A README snippet may show only part of a config: the keys it leaves out come from here.
SNIPPET_BASE = {
    "base_model": "meta-llama/Llama-2-7b-hf",
    "plugins": ["axolotl_maskthought.MaskThoughtPlugin"],
    "datasets": [{"path": "data/gsm8k_train.jsonl", "ds_type": "json", "type": "axolotl_maskthought.strategies.gsm8k"}],
    "sequence_len": 512,
    "micro_batch_size": 1,
    "num_epochs": 1,
    "learning_rate": 1e-5,
}


def test_readme_yaml_blocks_validate(validate):
    blocks = _readme_blocks()
    assert blocks, "README.md has no ```yaml block with `masked_thought:` or `cot_removal:`"
    for index, block in enumerate(blocks):
        snippet = yaml.safe_load(block)
        assert isinstance(snippet, dict), f"README yaml block {index} is not a mapping"
        if "plugins" in snippet:
            assert "axolotl_maskthought.MaskThoughtPlugin" in snippet["plugins"], f"README block {index}"
        raw = {**SNIPPET_BASE, **snippet}
        try:
            cfg = validate(raw)
        except Exception as err:  # name the block, keep the cause
            raise AssertionError(f"README yaml block {index} does not validate:\n{block}") from err
        _check_blocks(raw, cfg)


# ---- one example end to end -------------------------------------------------------------------
def test_both_techniques_example_trains(tmp_path, tiny_models):
    """both_techniques.yml trains (tiny GPT-2, few steps) on data made by the command its
    comment gives; the run applies both blocks with the example's values."""
    from mp_capture import RECORD_PLUGIN, train_in_process

    from axolotl_maskthought.cli import main as maskthought_cli
    from axolotl_maskthought.toy.tiny import build_tiny

    text = (EXAMPLES_DIR / "both_techniques.yml").read_text()
    command = next(line for line in _comment_lines(text) if "generate-data multiplication" in line)
    argv = shlex.split(command.lstrip("# "))
    assert argv[0] == "axolotl-maskthought"
    argv = argv[1:]
    argv[argv.index("--count") + 1] = "64"
    data = tmp_path / "4x4_train.txt"
    argv[argv.index("--output") + 1] = str(data)
    assert maskthought_cli(argv) == 0

    raw = yaml.safe_load(text)
    lines = data.read_text().splitlines()
    base = build_tiny(
        tmp_path / "gpt2",
        [line.replace("||", " ") for line in lines],
        vocab_size=300,
        arch="gpt2",
        hidden=32,
        layers=2,
        heads=2,
    )
    raw.update(
        base_model=str(base),
        output_dir=str(tmp_path / "out"),
        dataset_prepared_path=str(tmp_path / "prep"),
        plugins=raw["plugins"] + [RECORD_PLUGIN],
        max_steps=4,
        micro_batch_size=8,
        save_strategy="no",
        logging_steps=1,
        dataloader_num_workers=0,
    )
    raw["datasets"][0]["path"] = str(data)
    config = tmp_path / "both.yml"
    config.write_text(yaml.safe_dump(raw, sort_keys=False))
    run = train_in_process(config)

    trainer = run["trainer"]
    assert trainer.masked_thought.model_dump(exclude_none=True) == {
        **trainer.masked_thought.model_dump(exclude_none=True),
        **raw["masked_thought"],
    }
    assert trainer.cot_removal.model_dump(exclude_none=True) == {
        **trainer.cot_removal.model_dump(exclude_none=True),
        **raw["cot_removal"],
    }
    history = trainer.state.log_history
    assert trainer.state.global_step == 4
    assert max(trainer.applied_counts.values()) > 0  # 8 micro-batches per epoch, Δ 8: one token per step
    assert any(entry.get("masked_thought/masked_fraction", 0) > 0 for entry in history)
    assert any(entry.get("cot_removal/removed_tokens_mean", 0) > 0 for entry in history)


def _sizes(name: str):
    from axolotl_maskthought.toy import experiment

    return {"WIN_2X2_SIZES": experiment.WIN_2X2_SIZES, "LONG_SIZES": experiment.LONG_SIZES}[name]


@pytest.mark.parametrize(
    "name, sizes, counts",
    [
        ("cpu_multiplication_2x2_icot_si.yml", "WIN_2X2_SIZES", [6400, 200, 500]),
        ("cpu_multiplication_icot_si.yml", "LONG_SIZES", [20000, 200, 500]),
    ],
)
def test_cpu_example_data_commands_give_the_runners_held_out_split(tmp_path, monkeypatch, name, sizes, counts):
    """The CPU recipes' data commands, run as written (the python line aside): distinct training
    problems, test and validation files of the stated sizes sharing no question with training or each
    other, and the training and test files identical to the ones bench/si_2x2.py and the quickstart
    (default: 2x2; ``--long``: 3x3) train and score on."""
    from axolotl_maskthought.cli import main as maskthought_cli
    from axolotl_maskthought.toy.experiment import write_problems

    text = (EXAMPLES_DIR / name).read_text()
    commands = [line.lstrip("# ") for line in _comment_lines(text) if "generate-data multiplication" in line]
    assert len(commands) == 3
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    for command in commands:
        argv = shlex.split(command)
        assert argv[0] == "axolotl-maskthought"
        assert maskthought_cli(argv[1:]) == 0
    raw = yaml.safe_load(text)
    files = {
        "train": raw["datasets"][0]["path"],
        "valid": raw["test_datasets"][0]["path"],
        "test": next(a for c in commands for a in shlex.split(c) if a.endswith("test.txt")),
    }
    questions = {
        name: [line.split("||", 1)[0] for line in Path(path).read_text().splitlines()] for name, path in files.items()
    }
    assert [len(set(q)) for q in questions.values()] == [len(q) for q in questions.values()] == counts
    assert not set(questions["train"]) & (set(questions["valid"]) | set(questions["test"]))
    assert not set(questions["valid"]) & set(questions["test"])
    (tmp_path / "runner").mkdir()
    write_problems(tmp_path / "runner", _sizes(sizes))
    assert Path(files["train"]).read_text() == (tmp_path / "runner" / "train_cot.txt").read_text()
    assert Path(files["test"]).read_text() == (tmp_path / "runner" / "test.txt").read_text()


def test_quickstart_long_trains_the_3x3_example(tmp_path):
    """``quickstart --long`` is the 3x3 recipe: its SI arm's config has the YAML's removal block and
    run length, and its model the width, depth and heads of the YAML's model-building line."""
    from axolotl_maskthought.toy.experiment import LONG, config_for

    text = (EXAMPLES_DIR / "cpu_multiplication_icot_si.yml").read_text()
    raw = yaml.safe_load(text)
    config = config_for(LONG.treatment, LONG.sizes, tmp_path, tmp_path / "model", 0)
    assert config["cot_removal"] == raw["cot_removal"]
    keys = ("max_steps", "learning_rate", "lr_scheduler", "warmup_steps", "micro_batch_size", "weight_decay")
    keys += ("sequence_len", "pad_to_sequence_len", "eval_steps", "cot_format", "seed")
    assert {key: config[key] for key in keys} == {key: raw[key] for key in keys}
    build = next(line for line in _comment_lines(text) if "build_tiny" in line)
    for field, value in (("hidden", LONG.sizes.hidden), ("layers", LONG.sizes.layers), ("heads", LONG.sizes.heads)):
        assert f"{field}={value}," in build, (field, build)
    assert "vocab_size=300" in build and "max_positions=128" in build
    baseline = config_for(LONG.baseline, LONG.sizes, tmp_path, tmp_path / "model", 0)
    assert "cot_removal" not in baseline and baseline["max_steps"] == raw["max_steps"]


def test_a_pace_is_fixed_or_gated_never_both():
    from axolotl_maskthought.toy.experiment import Pace

    gate = {"min_steps": 3, "max_steps": 9, "recovery": 0.5}
    assert Pace(start_step=5, steps_per_token=7).block() == {"start_step": 5, "steps_per_token": 7}
    assert Pace(start_step=5, loss_gate=gate).block() == {"start_step": 5, "loss_gate": gate}
    for wrong in ({}, {"steps_per_token": 7, "loss_gate": gate}):
        with pytest.raises(ValueError, match="one of the two"):
            Pace(start_step=5, **wrong)
