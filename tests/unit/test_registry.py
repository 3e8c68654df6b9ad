"""One dataset-type registry: training's checks, the accuracy callback, `eval --config` and
`schedule` give one answer for every spelling of a `type:` of this package.

The `:suffix` form (`axolotl_maskthought.strategies.icot:x`) is the case that disagreed:
training's check and the callback stripped the suffix (icot), `eval --config` kept it
(no format) and `schedule` tried to import a module named `icot:x`.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from axolotl_maskthought.adapters.axolotl import validation
from axolotl_maskthought.adapters.axolotl.dataset_lengths import training_cot_lengths
from axolotl_maskthought.adapters.axolotl.plugin import is_active
from axolotl_maskthought.data import registry
from axolotl_maskthought.data.files import write_lines
from axolotl_maskthought.data.generators import generate_multiplication
from axolotl_maskthought.eval.callback import dataset_format
from axolotl_maskthought.eval.settings import settings_from_config
from axolotl_maskthought.toy.tiny import build_tokenizer

ICOT = "axolotl_maskthought.strategies.icot"
GSM8K = "axolotl_maskthought.strategies.gsm8k"
CHAT = "axolotl_maskthought.strategies.chat_template"


@pytest.fixture(scope="module")
def icot_workspace(tmp_path_factory) -> tuple[Path, Path]:
    """A 2x2 multiplication file in the ICoT format and a tiny tokenizer trained on it."""
    root = tmp_path_factory.mktemp("registry")
    lines = generate_multiplication(2, 2, 12, seed=0)
    write_lines(root / "train.txt", lines)
    build_tokenizer(lines, vocab_size=300, add_bos=False).save_pretrained(root / "tokenizer")
    return root / "train.txt", root / "tokenizer"


def _answers(ds_type: str, data: Path, tokenizer: Path, tmp_path: Path) -> dict:
    """What each part of the package says about a dataset of type ``ds_type``."""
    config = {
        "base_model": str(tokenizer),
        "sequence_len": 128,
        "datasets": [{"path": str(data), "type": ds_type}],
    }
    config_path = tmp_path / "config.yml"
    config_path.write_text(yaml.safe_dump(config))
    lengths = training_cot_lengths(config)
    return {
        "training": validation.strategy_name(ds_type),
        "records_cot_span": validation.datasets_without_cot_span(config["datasets"]) == [],
        "plugin_active": is_active(config),
        "callback": dataset_format(config),
        "eval_config": settings_from_config(config_path)["format"],
        "schedule": lengths.lengths,
    }


def test_suffix_form_gets_the_same_answer_everywhere(icot_workspace, tmp_path):
    data, tokenizer = icot_workspace
    plain = _answers(ICOT, data, tokenizer, tmp_path)
    suffixed = _answers(f"{ICOT}:x", data, tokenizer, tmp_path)
    assert plain["training"] == plain["callback"] == plain["eval_config"] == "icot"
    assert plain["records_cot_span"] and plain["plugin_active"]
    assert plain["schedule"] and len(plain["schedule"]) == 12 and all(length > 0 for length in plain["schedule"])
    assert suffixed == plain


def test_training_refuses_the_suffix_axolotl_cannot_load():
    """axolotl's loader imports `...strategies.icot:x` as a module name and finds none
    (test_registry_matches_axolotls_loader): the check names the key before anything loads."""
    data = {"cot_removal": {}, "datasets": [{"path": "train.txt", "type": f"{ICOT}:x"}]}
    with pytest.raises(
        ValueError, match=r"`datasets\[0\]\.type` is 'axolotl_maskthought\.strategies\.icot:x'.*write `"
    ):
        validation.check_config(data)


@pytest.mark.parametrize(
    "ds_type, name, fmt",
    [
        (ICOT, "icot", "icot"),
        (f"{ICOT}:x", "icot", "icot"),
        (GSM8K, "gsm8k", "gsm8k"),
        (f"{GSM8K}:alpaca", "gsm8k", "gsm8k"),
        (CHAT, "chat_template", "chat"),
        (f"{CHAT}:x", "chat_template", "chat"),
    ],
)
def test_registry_entries(ds_type, name, fmt):
    entry = registry.dataset_type(ds_type)
    assert entry is not None and entry.name == name and entry.format == fmt
    assert entry.module == ds_type.split(":")[0]
    assert entry.evaluates == (fmt is not None)
    # the in-training accuracy callback rebuilds prompts from tokenized icot/gsm8k rows only
    assert entry.accuracy_callback == (fmt in ("gsm8k", "icot"))
    assert registry.has_suffix(ds_type) == (":" in ds_type)


@pytest.mark.parametrize(
    "ds_type",
    [
        None,
        "",
        "alpaca",
        "chat_template",
        "axolotl_maskthought.strategies.base",
        "axolotl_maskthought.strategies",
        "axolotl_maskthought.strategies.icotx",
        f"{ICOT}.load",
        {"field_instruction": "q"},
    ],
)
def test_registry_says_none_for_other_types(ds_type):
    assert registry.dataset_type(ds_type) is None
    assert validation.strategy_name(ds_type) is None


def test_registry_matches_axolotls_loader(icot_workspace):
    """The module path loads our strategy through axolotl's own loader; the `:suffix` and
    `.load` spellings do not (axolotl 0.19 and 0.21), which is why training refuses them."""
    from axolotl.prompt_strategies import load
    from axolotl.utils.dict import DictDefault
    from transformers import AutoTokenizer

    _, tokenizer_dir = icot_workspace
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    cfg = DictDefault({"sequence_len": 128})
    for entry in registry.DATASET_TYPES:
        if entry.name == "chat_template":
            continue  # needs a chat template; loaded by tests/e2e/test_chat_template.py
        strategy = load(entry.module, tokenizer, cfg, DictDefault({"type": entry.module}))
        assert type(strategy).__module__ == entry.module
        for spelling in (f"{entry.module}:x", f"{entry.module}.load"):
            assert load(spelling, tokenizer, cfg, DictDefault({"type": spelling})) is None


def test_eval_formats_and_suffixes():
    assert registry.EVAL_FORMATS == ("gsm8k", "icot", "chat")
    assert registry.format_for_suffix(".jsonl") == registry.format_for_suffix(".json") == "gsm8k"
    assert registry.format_for_suffix(".TXT") == "icot"
    assert registry.format_for_suffix(".csv") is None
    # the cot_format readers the training check warns with
    assert validation.COT_FORMAT_READERS["eval_accuracy_samples"] == ("gsm8k", "icot")
    assert validation.COT_FORMAT_READERS["skip_invalid_rows"] == ("gsm8k", "icot", "chat_template")


def test_chat_config_evaluates_with_its_template_but_not_in_training(tmp_path):
    """`eval --config` on a chat config takes the format, chat template and fields from it;
    the in-training accuracy callback is refused by name before anything loads (issue 15,
    kind 4: chat rows are scored by `eval` after training)."""
    dataset = {"path": "train.jsonl", "type": CHAT, "chat_template": "qwen3"}
    config = {
        "base_model": "some/model",
        "chat_template": "chatml",
        "chat_template_kwargs": {"enable_thinking": True},
        "eot_tokens": ["<|im_end|>"],
        "datasets": [{"path": "other.txt", "type": "alpaca"}, dataset],
        "cot_format": {"messages_field": "conversations"},
    }
    path = tmp_path / "chat.yml"
    path.write_text(yaml.safe_dump(config))
    settings = settings_from_config(path)
    assert settings["format"] == "chat" and settings["cot_format"].messages_field == "conversations"
    chat = settings["chat"]
    assert chat.dataset == {"chat_template": "qwen3"} and chat.describe() == "qwen3"
    assert chat.config["eot_tokens"] == ["<|im_end|>"] and chat.config["chat_template_kwargs"]
    assert dataset_format(config) is None  # the callback does not take chat rows
    with pytest.raises(ValueError, match=r"`cot_format.eval_accuracy_samples` works with the `icot` and `gsm8k`.*eval"):
        validation.check_config({**config, "val_set_size": 0.1, "cot_format": {"eval_accuracy_samples": 4}})
    # a jinja template alone means `chat_template: jinja`, as axolotl's validation sets it
    path.write_text(
        yaml.safe_dump(
            {
                **config,
                "chat_template": None,
                "chat_template_jinja": "{{ x }}",
                "datasets": [{"path": "train.jsonl", "type": CHAT}],
            }
        )
    )
    jinja = settings_from_config(path)["chat"]
    assert jinja.config["chat_template"] == "jinja" and jinja.describe() == "jinja"


@pytest.mark.parametrize(
    "evaluation, culprit",
    [
        ({"val_set_size": 0.2}, r"`datasets\[1\]`"),  # the split mixes the chat rows in
        ({"test_datasets": [{"path": "test.jsonl", "type": CHAT}]}, r"`test_datasets\[0\]`"),
    ],
)
def test_accuracy_callback_refuses_chat_evaluation_rows_by_name(evaluation, culprit):
    """A gsm8k dataset beside a chat one used to pass the check, and the callback then met
    chat rows after the model had loaded."""
    config = {
        "datasets": [{"path": "train.jsonl", "type": GSM8K}, {"path": "chat.jsonl", "type": CHAT}],
        "cot_format": {"eval_accuracy_samples": 4},
        **evaluation,
    }
    with pytest.raises(ValueError, match=rf"`cot_format.eval_accuracy_samples` generates on icot and gsm8k.*{culprit}"):
        validation.check_config(config)
    # gsm8k evaluation rows beside chat training rows are fine
    validation.check_config({**config, "test_datasets": [{"path": "test.jsonl", "type": GSM8K}]})
