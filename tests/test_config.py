"""The plugin's config blocks, validated by axolotl itself (``load_cfg`` on a YAML file),
and the data checks that run before any model is loaded."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import yaml
from axolotl.cli.config import load_cfg

import axolotl_run
from axolotl_run import MASKTHOUGHT_PLUGIN, gsm8k_dataset, write_config, write_jsonl

ALPACA = {"path": "{data}", "ds_type": "json", "type": "alpaca"}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, shared_data: Path) -> dict:
    root = tmp_path_factory.mktemp("config")
    rows = axolotl_run.read_jsonl(shared_data / "gsm8k" / "train.jsonl", limit=20)
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
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("axolotl.maskthought.strategies")
    logger.addHandler(handler)
    try:
        axolotl_run.reset_plugins()
        preprocess(config=str(config))
    finally:
        logger.removeHandler(handler)
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
