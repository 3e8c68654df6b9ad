"""What the package relies on in axolotl and transformers, checked on the installed versions.

CI runs the suite on both supported stacks: the tested-with table's row (README.md or
CONTRIBUTING.md) of the stack in use must be what is installed; pyproject.toml's axolotl
requirement is a lower bound only, the lowest tested release, and the start-up check's
tested set (adapters/axolotl/versions.py) is the table's axolotl column. The import, hook and method checks
fail early, with the name of what moved, when the package is installed next to another axolotl.
"""

from __future__ import annotations

import importlib
import inspect
import re
from importlib import metadata

import pytest
import yaml
from packaging.version import Version
from paths import REPO_ROOT

# Every axolotl import of the package (grep `from axolotl` in axolotl_maskthought/).
AXOLOTL_IMPORTS = [
    ("axolotl.integrations.base", "BasePlugin"),
    ("axolotl.loaders", "load_tokenizer"),
    ("axolotl.core.trainers.base", "AxolotlTrainer"),
    ("axolotl.utils.collators.batching", "BatchSamplerDataCollatorForSeq2Seq"),
    ("axolotl.utils.collators.batching", "V2BatchSamplerDataCollatorForSeq2Seq"),
    ("axolotl.utils.chat_templates", "get_chat_template_from_config"),
    ("axolotl.cli.args", "TrainerCliArgs"),
    ("axolotl.cli.config", "load_cfg"),
    ("axolotl.common.datasets", "load_datasets"),
    ("axolotl.train", "train"),
]


TESTED_WITH_HEADER = "| stack | Python | axolotl |"


def _axolotl_range():
    import tomllib

    from packaging.specifiers import SpecifierSet

    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    (requirement,) = [item for item in project["dependencies"] if re.match(r"axolotl\b", item)]
    return SpecifierSet(requirement.removeprefix("axolotl"))


def _tested_with() -> list[dict[str, str]]:
    """The tested-with table (README.md or CONTRIBUTING.md): one dict per stack, column name -> version."""
    found = []
    for name in ("README.md", "CONTRIBUTING.md"):
        path = REPO_ROOT / name
        text = path.read_text(encoding="utf-8") if path.exists() else ""
        found += [(text, line) for line in text.splitlines() if line.startswith(TESTED_WITH_HEADER)]
    assert len(found) == 1, f"one tested-with table in README.md or CONTRIBUTING.md, header `{TESTED_WITH_HEADER} ...`"
    text, header_line = found[0]
    rows = text.splitlines()
    start = rows.index(header_line)
    header = [cell.strip() for cell in header_line.strip("|").split("|")]
    table = []
    for row in rows[start + 2 :]:
        if not row.startswith("|"):
            break
        table.append(dict(zip(header, (cell.strip() for cell in row.strip("|").split("|")))))
    return table


def test_installed_axolotl_is_in_the_supported_range():
    from importlib.metadata import version

    assert version("axolotl") in _axolotl_range(), f"axolotl {version('axolotl')} outside {_axolotl_range()}"


def test_axolotl_requirement_is_a_lower_bound_at_the_lowest_tested_release():
    """Installing never replaces a user's axolotl (issue 18): pyproject asks only for
    `axolotl>=<lowest tested>`, and the start-up check tests exactly the table's releases."""
    from axolotl_maskthought.adapters.axolotl.versions import MINIMUM_AXOLOTL, TESTED_AXOLOTL

    tested = sorted((row["axolotl"] for row in _tested_with()), key=Version)
    assert sorted(TESTED_AXOLOTL, key=Version) == tested, (
        f"adapters/axolotl/versions.py TESTED_AXOLOTL {TESTED_AXOLOTL} vs the tested-with table's {tested}"
    )
    spec = _axolotl_range()
    assert [(s.operator, s.version) for s in spec] == [(">=", tested[0])], (
        f"pyproject's axolotl requirement `axolotl{spec}`: a lower bound only, `>={tested[0]}` (the lowest tested)"
    )
    assert MINIMUM_AXOLOTL == tested[0]


def test_readme_tested_with_row_is_this_environment():
    import platform
    from importlib.metadata import version

    rows = {row["axolotl"]: row for row in _tested_with()}
    assert version("axolotl") in rows, f"axolotl {version('axolotl')} has no row in the README's tested-with table"
    row = rows[version("axolotl")]
    assert row["Python"] == ".".join(platform.python_version_tuple()[:2]), f"Python {platform.python_version()}"
    for package, expected in row.items():
        if package in ("stack", "Python"):
            continue
        assert version(package) == expected, (
            f"{package} {version(package)} installed; the README's tested-with row says {expected}"
        )


@pytest.mark.parametrize("module, name", AXOLOTL_IMPORTS)
def test_axolotl_import(module, name):
    assert hasattr(importlib.import_module(module), name), f"{module}.{name}"


def test_plugin_hooks_match_axolotls_signatures():
    from axolotl.integrations.base import BasePlugin, PluginManager

    from axolotl_maskthought import MaskThoughtPlugin

    ours = {name for name, value in vars(MaskThoughtPlugin).items() if callable(value) and not name.startswith("_")}
    assert ours, "the plugin defines no hooks?"
    # Hooks of newer axolotls only, with the version that added them; the plugin covers older
    # ones otherwise (post_lora_merge: 0.19 gets `merge_method: legacy`, see plugin.register).
    newer_hooks = {"post_lora_merge": "0.21.0"}
    installed = Version(metadata.version("axolotl"))
    for name in sorted(ours):
        if name in newer_hooks and installed < Version(newer_hooks[name]):
            assert not hasattr(BasePlugin, name), f"`{name}` exists in axolotl {installed}: update newer_hooks"
            continue
        assert hasattr(BasePlugin, name), f"`{name}` is not a BasePlugin hook in this axolotl"
        assert hasattr(PluginManager, name), f"axolotl's PluginManager never dispatches `{name}`"
        expected = list(inspect.signature(getattr(BasePlugin, name)).parameters)
        actual = list(inspect.signature(getattr(MaskThoughtPlugin, name)).parameters)
        assert actual == expected, f"{name}{tuple(actual)} vs BasePlugin{tuple(expected)}"


def test_trainer_methods_we_override_or_call_exist():
    from axolotl.core.trainers.base import AxolotlTrainer

    from axolotl_maskthought.adapters.axolotl.trainer import MaskThoughtTrainer

    expected = {
        "get_batch_samples": ["self", "epoch_iterator", "num_batches", "device"],
        "_get_num_items_in_batch": ["self", "batch_samples", "device"],
        "compute_loss": ["self", "model", "inputs", "return_outputs", "num_items_in_batch"],
        "get_train_dataloader": ["self"],
        "_set_signature_columns_if_needed": ["self"],
        "store_metrics": ["self", "metrics", "train_eval"],
    }
    for name, parameters in expected.items():  # what we pass comes first; later ones have defaults
        actual = list(inspect.signature(getattr(AxolotlTrainer, name)).parameters)
        assert actual[: len(parameters)] == parameters, f"{name}{tuple(actual)}"
    assert "_save_checkpoint" in vars(AxolotlTrainer) or hasattr(AxolotlTrainer, "_save_checkpoint")
    # The HF loop must still fetch micro-batches through get_batch_samples.
    from transformers import Trainer

    loop = "".join(
        inspect.getsource(getattr(Trainer, name))
        for name in ("_inner_training_loop", "_run_epoch")
        if hasattr(Trainer, name)
    )
    assert "self.get_batch_samples(" in loop
    assert MaskThoughtTrainer.get_batch_samples is not Trainer.get_batch_samples


def test_packing_with_flash_varlen_metadata_in_batches(tmp_path):
    """axolotl 0.21 packs with flash-attention by adding `cu_seq_lens_*` / `max_length_*`
    to every batch in the collator, computed before our CoT removal shortens the rows.
    Simulated here on 0.19 (sdpa): removal must not choke on them, and the model must
    not receive metadata of the pre-removal layout."""
    from mp_capture import MASKTHOUGHT_PLUGIN, RECORD_PLUGIN, arithmetic_workspace, run_config, train_in_process
    from transformers.modeling_flash_attention_utils import prepare_fa_kwargs_from_position_ids

    data, base = arithmetic_workspace(tmp_path, 32, seed=9, terms=3, vocab_size=300, hidden=32, layers=1, heads=2)
    config = run_config(
        base,
        tmp_path / "out",
        [{"path": str(data), "ds_type": "json", "type": "axolotl_maskthought.strategies.gsm8k"}],
        plugins=[MASKTHOUGHT_PLUGIN, "mp_capture.EmitFlashVarlenKwargs", RECORD_PLUGIN],
        sample_packing=True,
        attn_implementation="sdpa",
        micro_batch_size=1,
        max_steps=3,
        cot_format={"prompt_template": "plain"},
        cot_removal={"tokens_per_epoch": 40, "smoothing_lambda": None},
        masked_thought={"ratio": 0.3, "warmup": 0},
    )
    path = tmp_path / "varlen.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    run = train_in_process(path)
    assert max(run["trainer"].applied_counts.values()) > 0
    forwards = [forward for forward in run["forwards"] if forward["training"]]
    assert len(forwards) == 3
    for forward in forwards:
        if forward["cu_seq_lens_q"] is None:
            continue  # dropped: transformers derives them from the position ids
        (cu_q, _), _ = prepare_fa_kwargs_from_position_ids(forward["position_ids"])
        assert forward["cu_seq_lens_q"].tolist() == cu_q.tolist(), "stale flash-attention metadata"
