"""`trainer_cls:` beside our blocks: the user's trainer is composed with the engine, never dropped.

axolotl asks plugins for the trainer class before it reads `trainer_cls:`, so a
plugin that returns its own class silently discards the user's. The plugin mixes
the engine into the user's class instead; a class that cannot be imported or is no
AxolotlTrainer is refused, naming `trainer_cls`, before any model loads.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import axolotl_run
import pytest
from axolotl_run import gsm8k_dataset, run_in_process, write_config, write_jsonl

from axolotl_maskthought.data.files import read_jsonl

USER_TRAINER = textwrap.dedent(
    """
    from axolotl.core.trainers.base import AxolotlTrainer

    CALLS = []

    class CountingTrainer(AxolotlTrainer):
        def compute_loss(self, model, inputs, *args, **kwargs):
            CALLS.append(bool(model.training))
            return super().compute_loss(model, inputs, *args, **kwargs)

    class NotATrainer:
        pass
    """
)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, shared_data: Path) -> dict:
    root = tmp_path_factory.mktemp("trainer_cls")
    rows = read_jsonl(shared_data / "gsm8k" / "train.jsonl", limit=40)
    model = axolotl_run.build_base_model(root / "model", [r["question"] + "\n" + r["answer"] for r in rows])
    (root / "user_trainers.py").write_text(USER_TRAINER)
    return {"root": root, "model": model, "data": write_jsonl(root / "gsm8k.jsonl", rows)}


def _config(workspace, name: str, trainer_cls: str) -> Path:
    root = workspace["root"]
    return write_config(
        root / f"{name}.yml",
        base_model=workspace["model"],
        datasets=[gsm8k_dataset(workspace["data"])],
        output_dir=root / name,
        dataset_prepared_path=str(root / "prepared"),
        trainer_cls=trainer_cls,
        masked_thought={"ratio": 0.5, "warmup": 0.0},
        max_steps=3,
    )


def test_user_trainer_cls_is_composed_with_ours(workspace, monkeypatch):
    from axolotl_maskthought.engine import MaskThoughtMixin

    monkeypatch.syspath_prepend(str(workspace["root"]))
    import user_trainers

    user_trainers.CALLS.clear()
    run = run_in_process(_config(workspace, "composed", "user_trainers.CountingTrainer"))
    assert isinstance(run.trainer, user_trainers.CountingTrainer) and isinstance(run.trainer, MaskThoughtMixin)
    assert user_trainers.CALLS.count(True) == 3  # the user's compute_loss ran every step
    assert run.logged("masked_thought/masked_fraction") and min(run.logged("masked_thought/masked_fraction")) > 0.3


@pytest.mark.parametrize(
    "trainer_cls, message",
    [
        ("user_trainers.NotATrainer", "must subclass axolotl's AxolotlTrainer"),
        ("no_such_module.Trainer", "could not be imported"),
    ],
)
def test_bad_trainer_cls_is_refused_before_the_model_loads(workspace, monkeypatch, trainer_cls, message):
    monkeypatch.syspath_prepend(str(workspace["root"]))
    with pytest.raises(ValueError, match=rf"`trainer_cls` .*{message}"):
        run_in_process(_config(workspace, "refused", trainer_cls))
    assert "pre_model_load" not in axolotl_run.EVENTS
