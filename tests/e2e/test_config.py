"""The plugin's config blocks, validated by axolotl itself (``load_cfg`` on a YAML file),
and the data checks that run before any model is loaded."""

from __future__ import annotations

import json
from pathlib import Path

import axolotl_run
import pytest
import yaml
from axolotl.cli.config import load_cfg
from axolotl_run import MASKTHOUGHT_PLUGIN, gsm8k_dataset, logged_records, write_config, write_jsonl

from axolotl_maskthought.data.files import read_jsonl

ALPACA = {"path": "{data}", "ds_type": "json", "type": "alpaca"}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, shared_data: Path) -> dict:
    root = tmp_path_factory.mktemp("config")
    rows = read_jsonl(shared_data / "gsm8k" / "train.jsonl", limit=20)
    model = axolotl_run.build_base_model(
        root / "model", [row["question"] + "\n" + row["answer"] for row in rows], vocab_size=400
    )
    return {"root": root, "model": model, "rows": rows, "data": write_jsonl(root / "gsm20.jsonl", rows)}


def _load(workspace: dict, name: str, datasets: list[dict] | None = None, **extra):
    """Validate a config through axolotl (plugins registered, schemas merged)."""
    root = workspace["root"]
    config = write_config(
        root / f"{name}.yml",
        base_model=workspace["model"],
        datasets=datasets or [gsm8k_dataset(workspace["data"])],
        output_dir=root / name,
        **extra,
    )
    axolotl_run.reset_plugins()
    return load_cfg(str(config))


def test_valid_block_is_merged_with_defaults(workspace: dict) -> None:
    cfg = _load(workspace, "valid", masked_thought={"ratio": 0.2})
    block = cfg["masked_thought"]
    assert block["ratio"] == 0.2
    assert block["replacement"] == "random"
    assert block["warmup"] == pytest.approx(0.66)
    assert block["scope"] == "response"
    assert not cfg.get("tokens")  # no <mask> token unless replacement is mask_token


def test_mask_token_is_registered_with_axolotl_tokens(workspace: dict) -> None:
    cfg = _load(workspace, "masktoken", masked_thought={"replacement": "mask_token", "mask_token": "[MSK]"})
    assert "[MSK]" in cfg["tokens"]


@pytest.mark.parametrize(
    "block, field",
    [
        ({"ratio": -0.1}, "ratio"),
        ({"ratio": 1.5}, "ratio"),
        ({"replacement": "zeros"}, "replacement"),
        ({"scope": "question"}, "scope"),
        ({"warmup": 1.5}, "warmup"),
        ({"warmup": -0.5}, "warmup"),
        ({"replacement": "mask_token", "mask_token": ""}, "mask_token"),
        ({"ratio": 0.4, "rate": 0.3}, "rate"),  # unknown key in the block
    ],
)
def test_invalid_masked_thought_block_is_rejected(workspace: dict, block: dict, field: str) -> None:
    with pytest.raises(ValueError, match=rf"masked_thought\.{field}\n"):
        _load(workspace, "invalid", masked_thought=block)


def test_reasoning_scope_with_an_alpaca_dataset_names_the_dataset_and_the_strategies(workspace: dict) -> None:
    datasets = [gsm8k_dataset(workspace["data"]), {**ALPACA, "path": str(workspace["data"])}]
    with pytest.raises(ValueError) as raised:
        _load(workspace, "reasoning", datasets=datasets, masked_thought={"scope": "reasoning"})
    message = str(raised.value)
    assert "`datasets[1].type` is 'alpaca'" in message
    assert "masked_thought.scope: reasoning" in message
    for name in ("gsm8k", "icot"):
        assert f"axolotl_maskthought.strategies.{name}" in message


def test_response_scope_accepts_any_dataset_type(workspace: dict) -> None:
    cfg = _load(
        workspace, "alpaca", datasets=[{**ALPACA, "path": str(workspace["data"])}], masked_thought={"ratio": 0.3}
    )
    assert cfg["masked_thought"]["scope"] == "response"


def test_mask_token_with_lora_needs_modules_to_save(workspace: dict) -> None:
    lora = dict(adapter="lora", lora_r=4, lora_alpha=8, lora_target_linear=True)
    with pytest.raises(ValueError, match="`lora_modules_to_save"):
        _load(workspace, "lora", masked_thought={"replacement": "mask_token"}, **lora)
    cfg = _load(
        workspace,
        "lora_ok",
        masked_thought={"replacement": "mask_token"},
        lora_modules_to_save=["embed_tokens", "lm_head"],
        **lora,
    )
    assert cfg["lora_modules_to_save"] == ["embed_tokens", "lm_head"]
    # random and pad replacements need no new token, so no saved embeddings
    _load(workspace, "lora_random", masked_thought={"replacement": "pad"}, **lora)


@pytest.mark.parametrize(
    "block, field",
    [({"prompt_template": "Q: no placeholder"}, "prompt_template"), ({"answer_fild": "a"}, "answer_fild")],
)
def test_invalid_cot_format_block_is_rejected(workspace: dict, block: dict, field: str) -> None:
    with pytest.raises(ValueError, match=rf"cot_format[.\s\S]*{field}"):
        _load(workspace, "format", cot_format=block)


# ---- bad data rows: found while loading the data, before any model ----------------
def _bad_rows_file(workspace: dict) -> Path:
    rows = [dict(row) for row in workspace["rows"][:10]]
    rows[3] = {"question": rows[3]["question"], "answer": "The answer is 5."}  # line 4: no ####
    rows[7] = {"question": "   ", "answer": "2 + 3 = 5\n#### 5"}  # line 8: empty question
    return write_jsonl(workspace["root"] / "bad.jsonl", rows)


def _bad_icot_file(workspace: dict) -> Path:
    lines = ["5 6 * 7 4||5 3 + 0 5 9 ( 5 8 9 ) #### 5 8 9 1"] * 4
    lines[2] = "5 6 * 7 4 #### 5 8 9 1"  # line 3: no `||`
    path = workspace["root"] / "bad.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize(
    "kind, make_file, row, reason",
    [
        ("gsm8k", _bad_rows_file, 4, "####"),
        ("icot", _bad_icot_file, 3, "||"),
    ],
)
def test_bad_rows_fail_with_file_and_row_before_the_model_loads(workspace: dict, kind, make_file, row, reason) -> None:
    path = make_file(workspace)
    root = workspace["root"]
    dataset = {"path": str(path), "type": f"axolotl_maskthought.strategies.{kind}"}
    if kind == "gsm8k":
        dataset["ds_type"] = "json"
    config = write_config(
        root / f"bad-{kind}.yml", workspace["model"], [dataset], root / f"bad-{kind}", masked_thought={"ratio": 0.4}
    )
    with pytest.raises(ValueError) as raised:
        axolotl_run.run_in_process(config)
    message = str(raised.value)
    assert f"{path}: row {row}:" in message and reason in message, message
    assert "skip_invalid_rows" in message
    assert "pre_model_load" not in axolotl_run.EVENTS


def test_skip_invalid_rows_drops_and_counts_them(workspace: dict) -> None:
    from axolotl.cli.preprocess import do_cli as preprocess
    from datasets import load_from_disk

    path = _bad_rows_file(workspace)
    root = workspace["root"]
    config = write_config(
        root / "skip.yml",
        workspace["model"],
        [gsm8k_dataset(path)],
        root / "skip",
        sequence_len=4096,
        masked_thought={"ratio": 0.4},
        cot_format={"skip_invalid_rows": True},
    )
    with logged_records("axolotl.maskthought.strategies") as records:
        axolotl_run.reset_plugins()
        preprocess(config=str(config))
    messages = [record.getMessage() for record in records]
    assert any(f"{path}: skipping 2 invalid rows" in message for message in messages), messages
    prepared = [p.parent for p in Path(yaml.safe_load(config.read_text())["dataset_prepared_path"]).rglob("*.arrow")]
    assert len(prepared) == 1
    assert len(load_from_disk(str(prepared[0]))) == 8


def test_plugin_listed_without_blocks_changes_nothing(workspace: dict) -> None:
    """axolotl 0.21 registers installed plugins on every run: without our blocks or
    datasets, the plugin must leave the config alone."""
    root = workspace["root"]
    data = write_jsonl(
        root / "alpaca.jsonl",
        [{"instruction": row["question"], "input": "", "output": row["answer"]} for row in workspace["rows"]],
    )
    config = root / "plain.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "base_model": str(workspace["model"]),
                "plugins": [MASKTHOUGHT_PLUGIN],
                "datasets": [{"path": str(data), "ds_type": "json", "type": "alpaca"}],
                "micro_batch_size": 1,
                "num_epochs": 1,
                "learning_rate": 1e-3,
                "bf16": False,
                "fp16": False,
                "output_dir": str(root / "plain"),
            }
        )
    )
    axolotl_run.reset_plugins()
    cfg = load_cfg(str(config))
    assert cfg.get("masked_thought") is None and cfg.get("cot_removal") is None
    assert not cfg.get("tokens")


# ---- a setting the user wrote is never ignored silently ---------------------------
@pytest.fixture
def config_warnings():
    """Messages our config check logs while a config is validated."""
    with logged_records("axolotl.maskthought.config") as records:
        yield records


def _icot_dataset(workspace: dict) -> dict:
    path = workspace["root"] / "icot.txt"
    if not path.exists():
        path.write_text("5 6 * 7 4||5 3 + 0 5 9 ( 5 8 9 ) #### 5 8 9 1\n" * 4, encoding="utf-8")
    return {"path": str(path), "type": "axolotl_maskthought.strategies.icot"}


def _chat_dataset(workspace: dict, **keys) -> dict:
    return {
        "path": str(workspace["data"]),
        "ds_type": "json",
        "type": "axolotl_maskthought.strategies.chat_template",
        **keys,
    }


def test_muon_reset_is_accepted_and_adalomo_refused(workspace: dict) -> None:
    """The reset keeps what an optimizer writes while it is built (test_optimizer_reset);
    AdaLomo keeps its moments outside `optimizer.state`, so it is refused before the model
    loads, naming both keys, unless resets are off."""
    removal = {"tokens_per_epoch": 8}
    assert _load(workspace, "muon", optimizer="muon", cot_removal=removal)["optimizer"] == "muon"
    with pytest.raises(ValueError) as raised:
        _load(workspace, "adalomo", optimizer="adalomo", cot_removal=removal)
    assert "`optimizer: adalomo`" in str(raised.value) and "`cot_removal.reset_optimizer" in str(raised.value)
    cfg = _load(workspace, "adalomo_off", optimizer="adalomo", cot_removal={**removal, "reset_optimizer": False})
    assert cfg["cot_removal"]["reset_optimizer"] is False
    # without a reset, the optimizer does not matter to us
    _load(workspace, "adalomo_mft", optimizer="adalomo", masked_thought={"ratio": 0.2})


def test_unverified_optimizer_is_warned_about(workspace: dict, config_warnings) -> None:
    _load(workspace, "flash", optimizer="flash_adamw", cot_removal={"tokens_per_epoch": 8})
    messages = [r.getMessage() for r in config_warnings]
    assert any(
        "`optimizer: flash_adamw`" in m and "`cot_removal.reset_optimizer" in m and "CUDA" in m for m in messages
    ), messages
    config_warnings.clear()
    _load(workspace, "verified", optimizer="adamw_torch", cot_removal={"tokens_per_epoch": 8})
    assert not [r for r in config_warnings if "optimizer" in r.getMessage()]


def _write_deepspeed(workspace: dict, name: str, config: dict) -> str:
    path = workspace["root"] / f"{name}.json"
    path.write_text(json.dumps({"train_micro_batch_size_per_gpu": "auto", **config}), encoding="utf-8")
    return str(path)


def _validate_deepspeed(workspace: dict, name: str, **extra):
    """``load_cfg`` without its last step, which starts DeepSpeed's NCCL process group
    (as in test_examples): plugins registered, then axolotl's validation."""
    from axolotl.cli.config import gpu_capabilities, prepare_plugins
    from axolotl.utils.config import validate_config
    from axolotl.utils.dict import DictDefault

    root = workspace["root"]
    cfg = DictDefault(
        axolotl_run.base_config(workspace["model"], [gsm8k_dataset(workspace["data"])], root / name, **extra)
    )
    axolotl_run.reset_plugins()
    prepare_plugins(cfg)
    capabilities, env_capabilities = gpu_capabilities()
    return validate_config(cfg, capabilities=capabilities, env_capabilities=env_capabilities)


def test_deepspeed_nvme_offload_with_reset_is_refused(workspace: dict) -> None:
    zero = {"zero_optimization": {"stage": 3, "offload_optimizer": {"device": "nvme", "nvme_path": "/tmp"}}}
    deepspeed = _write_deepspeed(workspace, "nvme", zero)
    with pytest.raises(ValueError, match=r"`cot_removal.reset_optimizer` cannot reset .* NVMe .*`deepspeed`"):
        _validate_deepspeed(workspace, "nvme", deepspeed=deepspeed, cot_removal={"tokens_per_epoch": 8})
    _validate_deepspeed(
        workspace, "nvme_off", deepspeed=deepspeed, cot_removal={"tokens_per_epoch": 8, "reset_optimizer": False}
    )


def test_deepspeed_optimizer_section_overrides_optimizer_key(workspace: dict, config_warnings) -> None:
    deepspeed = _write_deepspeed(
        workspace, "lamb", {"zero_optimization": {"stage": 2}, "optimizer": {"type": "Lamb", "params": {"lr": "auto"}}}
    )
    _validate_deepspeed(
        workspace, "lamb", deepspeed=deepspeed, optimizer="adalomo", cot_removal={"tokens_per_epoch": 8}
    )
    messages = [r.getMessage() for r in config_warnings]
    # `optimizer: adalomo` is not refused: DeepSpeed builds Lamb instead, and both are said
    assert any("`optimizer: adalomo` has no effect" in m and "deepspeed" in m for m in messages), messages
    assert any("'Lamb'" in m and "`cot_removal.reset_optimizer`" in m for m in messages), messages


@pytest.mark.parametrize("key", ["reward_model", "process_reward_model"])
def test_trainer_choosing_keys_are_refused(workspace: dict, key: str) -> None:
    """axolotl asks plugins for the trainer first: our trainer would silently replace the
    reward-model trainer."""
    with pytest.raises(ValueError, match=rf"`{key}: true`.*`masked_thought`"):
        _load(workspace, key, masked_thought={"ratio": 0.2}, **{key: True})
    with pytest.raises(ValueError, match=rf"`{key}: true`.*dataset strategies"):
        _load(workspace, f"{key}_data", **{key: True})


def test_rl_is_refused_with_our_blocks(workspace: dict) -> None:
    with pytest.raises(ValueError, match=r"`masked_thought` works with supervised fine-tuning only; remove `rl`"):
        _load(workspace, "rl", masked_thought={"ratio": 0.2}, rl="dpo")


def test_another_plugin_supplying_the_trainer_is_refused(workspace: dict) -> None:
    """axolotl builds the first plugin's trainer class only; with the diffusion plugin listed
    first our blocks would do nothing, listed second the diffusion training would not run."""
    diffusion = "axolotl.integrations.diffusion.DiffusionPlugin"
    for plugins in ([diffusion, MASKTHOUGHT_PLUGIN], [MASKTHOUGHT_PLUGIN, diffusion]):
        with pytest.raises(ValueError, match=r"`plugins`: .*Diffusion.*own trainer"):
            _load(workspace, "diffusion", masked_thought={"ratio": 0.2}, plugins=plugins)


@pytest.mark.parametrize(
    "kind, keys, named, hint",
    [
        ("chat", {"field_messages": "conversations"}, "datasets[0].field_messages", "cot_format.messages_field"),
        ("chat", {"roles_to_train": ["assistant"]}, "datasets[0].roles_to_train", "remove it"),
        ("chat", {"field_thinking": "reasoning"}, "datasets[0].field_thinking", "cot_format.reasoning_field"),
        ("gsm8k", {"chat_template": "chatml"}, "datasets[0].chat_template", "chat_template strategy only"),
        ("gsm8k", {"field": "problem"}, "datasets[0].field", "cot_format.question_field"),
        ("gsm8k", {"train_on_eos": "all"}, "datasets[0].train_on_eos", "remove it"),
    ],
)
def test_axolotl_strategy_options_on_our_datasets_are_refused(workspace: dict, kind, keys, named, hint) -> None:
    dataset = _chat_dataset(workspace, **keys) if kind == "chat" else {**gsm8k_dataset(workspace["data"]), **keys}
    with pytest.raises(ValueError) as raised:
        _load(workspace, "dskeys", datasets=[dataset])
    message = str(raised.value)
    assert f"`{named}`" in message and hint in message, message


def test_chat_template_key_is_read_by_our_chat_strategy(workspace: dict) -> None:
    cfg = _load(
        workspace, "chatkey", datasets=[_chat_dataset(workspace, chat_template="chatml")], masked_thought={"ratio": 0.2}
    )
    assert cfg["datasets"][0]["chat_template"] == "chatml"


def test_cot_format_keys_no_strategy_reads_are_warned_about(workspace: dict, config_warnings) -> None:
    _load(
        workspace,
        "unread",
        masked_thought={"ratio": 0.2},
        cot_format={"think_tags": ["<t>", "</t>"], "prompt_template": "plain"},
    )
    messages = [r.getMessage() for r in config_warnings]
    assert any("`cot_format.think_tags` has no effect" in m and "chat_template" in m for m in messages), messages
    assert not any("prompt_template" in m for m in messages), messages  # the gsm8k strategy reads it
    config_warnings.clear()
    _load(workspace, "unread_icot", datasets=[_icot_dataset(workspace)], cot_format={"prompt_template": "plain"})
    assert any("`cot_format.prompt_template` has no effect" in r.getMessage() for r in config_warnings)


def test_eval_accuracy_needs_evaluation_data_before_the_model_loads(workspace: dict) -> None:
    with pytest.raises(ValueError, match=r"`cot_format.eval_accuracy_samples` needs evaluation data"):
        _load(workspace, "acc", masked_thought={"ratio": 0.2}, cot_format={"eval_accuracy_samples": 4})
    with pytest.raises(ValueError, match=r"`cot_format.eval_accuracy_samples` works with the `icot` and `gsm8k`"):
        _load(
            workspace,
            "acc_chat",
            datasets=[_chat_dataset(workspace)],
            val_set_size=0.25,
            cot_format={"eval_accuracy_samples": 4},
        )
    _load(workspace, "acc_ok", val_set_size=0.25, cot_format={"eval_accuracy_samples": 4})


def test_mask_token_without_mask_token_replacement_is_refused(workspace: dict, config_warnings) -> None:
    with pytest.raises(ValueError, match=r"`masked_thought.mask_token` is used only with `replacement: mask_token`"):
        _load(workspace, "masktok", masked_thought={"mask_token": "[M]"})
    with pytest.raises(ValueError, match=r"`replacement` is 'pad'"):
        _load(workspace, "masktok_pad", masked_thought={"mask_token": "[M]", "replacement": "pad"})
    # the default written out (the README's block lists every key): said, not refused
    _load(workspace, "masktok_default", masked_thought={"mask_token": "<mask>", "replacement": "random"})
    assert any("`masked_thought.mask_token` is used only with" in r.getMessage() for r in config_warnings)


def test_removal_starting_after_the_last_epoch_is_refused(workspace: dict) -> None:
    removal = {"tokens_per_epoch": 8, "start_epoch": 2}
    with pytest.raises(ValueError, match=r"`cot_removal.start_epoch: 2` with `num_epochs: 2`"):
        _load(workspace, "late", cot_removal=removal, num_epochs=2, max_steps=None)
    _load(workspace, "late_ok", cot_removal=removal, num_epochs=3, max_steps=None)


def test_span_needing_blocks_refuse_pretraining_data(workspace: dict) -> None:
    pretraining = [{"path": str(workspace["data"]), "ds_type": "json", "type": "pretrain"}]
    with pytest.raises(ValueError, match=r"`cot_removal` needs the CoT span, which `pretraining_dataset` rows"):
        _load(workspace, "pretrain", cot_removal={"tokens_per_epoch": 8}, pretraining_dataset=pretraining)


def test_torch_compile_is_warned_about_by_name(workspace: dict, config_warnings) -> None:
    """Nothing here compiles a model: `torch_compile` with a block is kept as written and warned about."""
    cfg = _load(workspace, "compile", torch_compile=True, cot_removal={"tokens_per_epoch": 8})
    assert cfg["torch_compile"] is True
    messages = [r.getMessage() for r in config_warnings]
    assert any("`torch_compile: True`" in m and "`cot_removal`" in m and "recompilations" in m for m in messages), (
        messages
    )
    config_warnings.clear()
    _load(workspace, "no_compile", cot_removal={"tokens_per_epoch": 8})
    assert not any("torch_compile" in r.getMessage() for r in config_warnings)
