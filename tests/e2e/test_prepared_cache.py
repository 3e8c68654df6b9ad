"""A stale prepared dataset is never reused, whichever way axolotl prepares or loads data.

axolotl saves tokenized data to ``dataset_prepared_path/<hash>`` and loads it back
when the hash matches, also when the key is unset (then under ``last_run_prepared``).
Its hash sees none of this plugin's settings, so the plugin keys the path by them
(``.../maskthought-<fingerprint>``) when the config is loaded.

The issue's case: two configs that differ only in ``cot_format.prompt_template``
(alpaca, then plain), 16 GSM8K rows, no ``dataset_prepared_path``: the second run
trained on the Alpaca-formatted rows. Checked in process (``do_cli``, as ``axolotl
train`` does it) and through the real CLI (``axolotl preprocess`` then ``axolotl
train``), each in its own working directory so ``last_run_prepared`` starts empty.
"""

from __future__ import annotations

import re
from pathlib import Path

import axolotl_run
import pytest
import yaml
from axolotl_run import gsm8k_dataset, load_capture, run_cli, run_in_process, save_prepared_in_process, write_config

from axolotl_maskthought.config import PROMPT_TEMPLATES
from axolotl_maskthought.data.files import read_jsonl

ROWS = 16
KEYED = re.compile(r"maskthought-[0-9a-f]{12}")
ALPACA_START = "<s>Below is an instruction"
PLAIN_START = "<s>Question: "


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, shared_data: Path) -> dict:
    root = tmp_path_factory.mktemp("prepared")
    rows = read_jsonl(shared_data / "gsm8k" / "train.jsonl", limit=ROWS)
    texts = [row["question"] + "\n" + row["answer"] for row in rows] + list(PROMPT_TEMPLATES.values())
    return {
        "root": root,
        "model": axolotl_run.build_base_model(root / "model", texts, vocab_size=600),
        "data": axolotl_run.write_jsonl(root / "gsm8k16.jsonl", rows),
    }


def _config(workspace: dict, directory: Path, name: str, template: str, **extra) -> Path:
    """A 1-step full fine-tune; ``dataset_prepared_path`` unset unless given."""
    extra.setdefault("dataset_prepared_path", None)
    return write_config(
        directory / f"{name}.yml",
        base_model=workspace["model"],
        datasets=[gsm8k_dataset(workspace["data"])],
        output_dir=directory / name,
        cot_format={"prompt_template": template},
        max_steps=1,
        **extra,
    )


def _first_text(run, tokenizer) -> str:
    forward = run.train_forwards[0]
    row, start, end = axolotl_run.segments(forward)[0]
    return tokenizer.decode(forward["input_ids"][row, start:end])


def _keyed_folders(prepared: Path) -> list[str]:
    names = sorted(path.name for path in prepared.iterdir() if path.is_dir())
    assert all(KEYED.fullmatch(name) for name in names), names
    return names


@pytest.fixture
def in_workdir(tmp_path, monkeypatch):
    """A fresh working directory (axolotl's ``last_run_prepared`` is relative to it) and
    datasets' save_to_disk in this process (see test_e2e_cot_removal.faster_runs)."""
    from axolotl.utils.data import sft

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sft, "save_preprocessed_dataset", save_prepared_in_process)
    return tmp_path


def test_changed_template_without_prepared_path_in_process(workspace, in_workdir) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(workspace["model"])
    alpaca = run_in_process(_config(workspace, in_workdir, "alpaca", "alpaca"))
    assert _first_text(alpaca, tokenizer).startswith(ALPACA_START)
    plain = run_in_process(_config(workspace, in_workdir, "plain", "plain"))
    assert _first_text(plain, tokenizer).startswith(PLAIN_START), "the plain run trained on stale alpaca rows"
    assert len(_keyed_folders(in_workdir / "last_run_prepared")) == 2


@pytest.mark.parametrize("prepared", [None, "my_prepared"])
def test_load_cfg_keys_the_prepared_path(workspace, tmp_path, monkeypatch, prepared) -> None:
    """Every axolotl command loads its config with ``load_cfg``: the path it gets is
    keyed by the template, with or without the key, and reloading a config that holds
    a keyed path re-keys it instead of nesting."""
    from axolotl.cli.config import load_cfg

    monkeypatch.chdir(tmp_path)
    paths = {}
    for template in ("alpaca", "plain", PROMPT_TEMPLATES["plain"]):
        axolotl_run.reset_plugins()
        cfg = load_cfg(str(_config(workspace, tmp_path, "cfg", template, dataset_prepared_path=prepared)))
        paths[template] = Path(cfg.dataset_prepared_path)
    assert paths["alpaca"] != paths["plain"]
    assert paths["plain"] == paths[PROMPT_TEMPLATES["plain"]]  # same rows, same folder
    for path in paths.values():
        assert path.parent == Path(prepared or "last_run_prepared") and KEYED.fullmatch(path.name)

    reloaded = _config(workspace, tmp_path, "again", "alpaca", dataset_prepared_path=str(paths["plain"]))
    axolotl_run.reset_plugins()
    assert Path(load_cfg(str(reloaded)).dataset_prepared_path) == paths["alpaca"]


def test_changed_template_without_prepared_path_cli(workspace, tmp_path) -> None:
    """`axolotl preprocess` then `axolotl train` with no key: train loads what preprocess
    wrote; a config with another template trains on its own rows."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(workspace["model"])
    alpaca = _config(workspace, tmp_path, "alpaca", "alpaca")
    preprocess = run_cli(["preprocess", alpaca], cwd=tmp_path)
    assert preprocess.returncode == 0, preprocess.stdout[-3000:]
    prepared = tmp_path / "last_run_prepared"
    (keyed,) = _keyed_folders(prepared)

    train = run_cli(["train", alpaca, "--launcher", "python"], cwd=tmp_path, capture_file=tmp_path / "alpaca.pt")
    assert train.returncode == 0, train.stdout[-3000:]
    assert f"Loading prepared dataset from disk at {Path('last_run_prepared') / keyed}" in train.stdout
    assert _first_text(load_capture(tmp_path / "alpaca.pt"), tokenizer).startswith(ALPACA_START)

    plain = _config(workspace, tmp_path, "plain", "plain")
    train = run_cli(["train", plain, "--launcher", "python"], cwd=tmp_path, capture_file=tmp_path / "plain.pt")
    assert train.returncode == 0, train.stdout[-3000:]
    assert _first_text(load_capture(tmp_path / "plain.pt"), tokenizer).startswith(PLAIN_START)
    assert len(_keyed_folders(prepared)) == 2
    assert yaml.safe_load(plain.read_text()).get("dataset_prepared_path") is None  # the user's file is untouched


# ---- what the key sees ---------------------------------------------------------------------
def test_fingerprint_sees_what_changes_the_rows() -> None:
    from axolotl_maskthought.adapters.axolotl.plugin import tokenization_fingerprint

    datasets = [{"path": "rows.jsonl", "type": "axolotl_maskthought.strategies.gsm8k"}]

    def key(**cfg) -> str:
        return tokenization_fingerprint({"datasets": datasets, **cfg})

    default = key()
    same = [
        key(cot_format={"prompt_template": "alpaca"}),  # the default, written out
        key(cot_format={"prompt_template": PROMPT_TEMPLATES["alpaca"]}),  # the template's text
        key(cot_format={"eval_accuracy_samples": 8}),  # picks rows to generate on, changes none
        key(masked_thought={"replacement": "random"}),  # adds no token
    ]
    assert same == [default] * len(same)
    other = [
        key(cot_format={"prompt_template": "plain"}),
        key(cot_format={"question_field": "q"}),
        key(cot_format={"skip_invalid_rows": True}),
        key(cot_format={"think_tags": ["<t>", "</t>"]}),
        key(masked_thought={"replacement": "mask_token"}),
        key(masked_thought={"replacement": "mask_token", "mask_token": "<m>"}),
    ]
    assert len({default, *other}) == len(other) + 1


def test_code_fingerprint_follows_the_tokenization_code(tmp_path) -> None:
    """Prepared data (and datasets' map cache, through the strategy's attributes) are
    keyed by the source of data/formats.py and strategies/: editing them changes the key,
    editing another module does not."""
    import shutil
    import subprocess
    import sys

    import axolotl_maskthought

    copy = tmp_path / "axolotl_maskthought"
    shutil.copytree(Path(axolotl_maskthought.__file__).parent, copy, ignore=shutil.ignore_patterns("__pycache__"))
    probe = "from axolotl_maskthought.strategies.base import tokenization_code_fingerprint as f; print(f())"

    def fingerprint() -> str:
        done = subprocess.run(
            [sys.executable, "-c", probe],
            cwd=tmp_path,
            env={"PYTHONPATH": str(tmp_path)},
            capture_output=True,
            text=True,
            check=True,
        )
        return done.stdout.strip()

    original = fingerprint()
    with open(copy / "toy" / "experiment.py", "a", encoding="utf-8") as handle:
        handle.write("\n# not tokenization\n")
    assert fingerprint() == original
    for name in ("data/formats.py", "strategies/icot.py"):
        with open(copy / name, "a", encoding="utf-8") as handle:
            handle.write("\n# a layout change\n")
        changed = fingerprint()
        assert changed != original, name
        original = changed
