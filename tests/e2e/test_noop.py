"""No-op guarantee: with neither `masked_thought:` nor `cot_removal:` (and a built-in
dataset type), listing the plugin changes nothing — bit for bit.

axolotl 0.21 registers installed plugins on every run (entry points), so this is the
path every unrelated run of a user who installed the package takes. Two real
in-process axolotl runs on the same seed, one with and one without the plugin, must
feed the model the same batches, log the same losses and end with equal weights;
every hook must answer "nothing to do".
"""

from __future__ import annotations

import copy

import pytest
import torch
import yaml
from mp_capture import MASKTHOUGHT_PLUGIN, RECORD_PLUGIN, run_config, train_in_process

from axolotl_maskthought.data.files import write_jsonl
from axolotl_maskthought.toy.tiny import build_tiny

LOGGED = ("loss", "grad_norm", "learning_rate", "epoch")


def _alpaca_rows(count: int) -> list[dict]:
    rows = []
    for index in range(count):
        a, b = 3 + index, 7 + 2 * index
        rows.append(
            {
                "instruction": f"Add {a} and {b}.",
                "input": "" if index % 2 else f"The numbers are {a} and {b}.",
                "output": f"{a} plus {b} is {a + b}.",
            }
        )
    return rows


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("noop")
    rows = _alpaca_rows(48)
    data = tmp / "alpaca.jsonl"
    write_jsonl(data, rows)
    base = build_tiny(
        tmp / "model", [" ".join(row.values()) for row in rows], vocab_size=300, hidden=32, layers=2, heads=2
    )
    results = {}
    for name, plugins in (("with", [MASKTHOUGHT_PLUGIN, RECORD_PLUGIN]), ("without", [RECORD_PLUGIN])):
        config = run_config(
            base,
            tmp / f"out-{name}",
            [{"path": str(data), "ds_type": "json", "type": "alpaca"}],
            plugins=plugins,
            max_steps=6,
            micro_batch_size=4,
            learning_rate=0.003,
            seed=11,
        )
        path = tmp / f"{name}.yml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        results[name] = train_in_process(path)
    results["base_model"] = base
    return results


def _train_forwards(run):
    return [forward for forward in run["forwards"] if forward["training"]]


def _logged(run):
    history = run["trainer"].state.log_history
    return [{key: entry[key] for key in LOGGED if key in entry} for entry in history if "loss" in entry]


def test_same_batches_losses_and_weights(runs):
    with_plugin, without = runs["with"], runs["without"]
    assert len(_train_forwards(with_plugin)) == len(_train_forwards(without)) == 6
    for ours, theirs in zip(_train_forwards(with_plugin), _train_forwards(without)):
        for key in ("input_ids", "labels", "attention_mask", "position_ids"):
            assert (ours[key] is None) == (theirs[key] is None), key
            if ours[key] is not None:
                assert torch.equal(ours[key], theirs[key]), key

    assert _logged(with_plugin) == _logged(without)
    assert len(_logged(with_plugin)) == 6
    assert not any(
        key.startswith(("masked_thought/", "cot_removal/"))
        for entry in with_plugin["trainer"].state.log_history
        for key in entry
    )

    ours = dict(with_plugin["trainer"].model.named_parameters())
    theirs = dict(without["trainer"].model.named_parameters())
    assert ours.keys() == theirs.keys()
    for name, parameter in ours.items():
        assert torch.equal(parameter, theirs[name]), name

    # Training moved the weights: the comparison is not between two untouched models.
    from safetensors.torch import load_file

    initial = load_file(str(runs["base_model"] / "model.safetensors"))
    assert set(initial) == set(ours)
    assert any(not torch.equal(initial[name], parameter) for name, parameter in ours.items())


def test_trainer_and_collator_are_axolotls(runs):
    from axolotl.core.trainers.base import AxolotlTrainer

    from axolotl_maskthought.adapters.axolotl.trainer import MaskThoughtTrainer
    from axolotl_maskthought.engine.collator import CoTSpanCollator

    with_plugin, without = runs["with"]["trainer"], runs["without"]["trainer"]
    for trainer in (with_plugin, without):
        assert type(trainer) is AxolotlTrainer
        assert not isinstance(trainer, MaskThoughtTrainer)
        assert not isinstance(trainer.data_collator, CoTSpanCollator)
    assert type(with_plugin.data_collator) is type(without.data_collator)
    assert [type(c) for c in with_plugin.callback_handler.callbacks] == [
        type(c) for c in without.callback_handler.callbacks
    ]


def test_every_hook_answers_nothing_to_do(runs):
    from axolotl_maskthought import MaskThoughtPlugin

    run = runs["with"]
    cfg, trainer, model = run["cfg"], run["trainer"], run["trainer"].model
    plugin = MaskThoughtPlugin()
    before = copy.deepcopy(dict(cfg))

    raw = {"base_model": cfg["base_model"], "datasets": [{"path": "x.jsonl", "type": "alpaca"}]}
    raw_copy = copy.deepcopy(raw)
    plugin.register(raw)
    assert raw == raw_copy
    assert plugin.load_datasets(cfg, preprocess=False) is None
    assert plugin.get_trainer_cls(cfg) is None
    assert plugin.get_collator_cls_and_kwargs(cfg) is None
    assert plugin.get_collator_cls_and_kwargs(cfg, is_eval=True) is None
    assert plugin.get_training_args(cfg) is None
    assert plugin.get_training_args_mixin() is None
    assert plugin.create_optimizer(cfg, trainer) is None
    assert plugin.add_callbacks_pre_trainer(cfg, model) == []
    assert plugin.add_callbacks_post_trainer(cfg, trainer) == []
    weights = {name: p.detach().clone() for name, p in model.named_parameters()}
    assert plugin.pre_model_load(cfg) is None
    for hook in (plugin.post_model_build, plugin.pre_lora_load, plugin.post_lora_load, plugin.post_model_load):
        assert hook(cfg, model) is None
    assert plugin.post_trainer_create(cfg, trainer) is None
    assert all(torch.equal(weights[name], p) for name, p in model.named_parameters())
    assert dict(cfg) == before
