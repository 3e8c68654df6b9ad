"""reset_optimizer_state: the next step after a reset equals a fresh optimizer's first step.

Every check has the same shape: an optimizer takes a few steps, is reset, and takes
one more step with a given gradient; a freshly constructed optimizer of the same
class and hyperparameters, over parameters equal to the ones at the reset, takes
the same step.  The parameters must come out identical.  The negative control
(no reset) must differ, so the checks can fail.

The DeepSpeed checks build real ``deepspeed.initialize`` engines on the CPU
accelerator with a single-rank gloo process group.  They run in a subprocess (this
file, run as a script) so that no process group or DeepSpeed global state leaks
into the other tests.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
import warnings

import pytest
import torch

from axolotl_maskthought.data.files import read_jsonl
from axolotl_maskthought.engine.optimizer_reset import record_fresh_state, reset_optimizer_state, unwrap_optimizer

# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------


def _make_model() -> torch.nn.Module:
    torch.manual_seed(0)
    # The 64x64 weight has 4096 elements, the smallest size bitsandbytes keeps in
    # 8 bits (smaller tensors get 32-bit state).
    return torch.nn.Sequential(torch.nn.Linear(8, 64), torch.nn.Tanh(), torch.nn.Linear(64, 64))


def _param_groups(model: torch.nn.Module) -> list[dict]:
    """Two groups with different hyperparameters, like HF's decay / no-decay split."""
    weights = [p for n, p in model.named_parameters() if n.endswith("weight")]
    biases = [p for n, p in model.named_parameters() if n.endswith("bias")]
    return [
        {"params": weights, "weight_decay": 0.1},
        {"params": biases, "weight_decay": 0.0},
    ]


def _set_grads(model: torch.nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=gen, dtype=p.dtype)


def _snapshot(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def _max_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max((x.double() - y.double()).abs().max().item() for x, y in zip(a, b))


def _hyperparameters(opt) -> list[dict]:
    counters = {"step", "k", "weight_sum", "lr_max", "scheduled_lr"}
    return [{k: v for k, v in g.items() if k != "params" and k not in counters} for g in opt.param_groups]


def _optional(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _adafactor(**kw):
    def make(groups):
        from transformers.optimization import Adafactor

        return Adafactor(groups, **kw)

    return make


def _schedulefree(name: str):
    def make(groups):
        import schedulefree

        opt = getattr(schedulefree, name)(groups, lr=1e-2, warmup_steps=2)
        opt.train()
        return opt

    return make


def _bnb(name: str, **kw):
    def make(groups):
        import bitsandbytes as bnb

        return getattr(bnb.optim, name)(groups, lr=1e-2, **kw)

    return make


_needs_schedulefree = pytest.mark.skipif(not _optional("schedulefree"), reason="schedulefree is not installed")
_needs_bnb = pytest.mark.skipif(not _optional("bitsandbytes"), reason="bitsandbytes is not installed")

# name -> factory(param_groups) -> optimizer.  Names follow axolotl's `optimizer:`.
OPTIMIZERS = {
    "adamw_torch": lambda g: torch.optim.AdamW(g, lr=1e-2),
    "adamw_torch_amsgrad": lambda g: torch.optim.AdamW(g, lr=1e-2, amsgrad=True),
    "adamw_torch_fused": lambda g: torch.optim.AdamW(g, lr=1e-2, fused=True),
    "adamw_torch_foreach": lambda g: torch.optim.AdamW(g, lr=1e-2, foreach=True),
    "adam": lambda g: torch.optim.Adam(g, lr=1e-2),
    "sgd_momentum": lambda g: torch.optim.SGD(g, lr=1e-2, momentum=0.9, dampening=0.5),
    "sgd_nesterov": lambda g: torch.optim.SGD(g, lr=1e-2, momentum=0.9, nesterov=True),
    "adagrad": lambda g: torch.optim.Adagrad(g, lr=1e-2, initial_accumulator_value=0.3),
    "rmsprop": lambda g: torch.optim.RMSprop(g, lr=1e-2, momentum=0.5, centered=True),
    "adafactor": _adafactor(lr=None),  # transformers defaults: relative step size
    "adafactor_fixed_lr": _adafactor(lr=1e-2, relative_step=False, scale_parameter=False, warmup_init=False),
    "schedule_free_adamw": _schedulefree("AdamWScheduleFree"),
    "schedule_free_sgd": _schedulefree("SGDScheduleFree"),
    "adamw_bnb_8bit": _bnb("AdamW8bit"),
    "paged_adamw_8bit": _bnb("PagedAdamW8bit"),
    "lion_8bit": _bnb("Lion8bit"),
    "paged_adamw_32bit": _bnb("PagedAdamW32bit"),
}
_MARKS = {
    "schedule_free_adamw": _needs_schedulefree,
    "schedule_free_sgd": _needs_schedulefree,
    "adamw_bnb_8bit": _needs_bnb,
    "paged_adamw_8bit": _needs_bnb,
    "lion_8bit": _needs_bnb,
    "paged_adamw_32bit": _needs_bnb,
}
OPTIMIZER_PARAMS = [pytest.param(name, marks=_MARKS.get(name, ()), id=name) for name in OPTIMIZERS]


def _run(name: str, reset, wrap=lambda o: o, warm_steps: int = 3):
    """(params after the reset+step, params of the fresh optimizer's step, optimizer)."""
    make = OPTIMIZERS[name]
    model = _make_model()
    opt = wrap(make(_param_groups(model)))
    for seed in range(1, warm_steps + 1):
        _set_grads(model, seed)
        opt.step()
    at_reset = _snapshot(model)
    hyper_before = _hyperparameters(opt)
    n_reset = reset(opt)
    assert _hyperparameters(opt) == hyper_before
    _set_grads(model, 99)
    opt.step()
    after_reset = _snapshot(model)

    fresh_model = _make_model()
    with torch.no_grad():
        for p, v in zip(fresh_model.parameters(), at_reset):
            p.copy_(v)
    fresh = make(_param_groups(fresh_model))
    _set_grads(fresh_model, 99)
    fresh.step()
    return after_reset, _snapshot(fresh_model), opt, n_reset


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


# --------------------------------------------------------------------------------------
# torch / transformers / schedule-free / bitsandbytes optimizers
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("in_place", [None, True, False], ids=["auto", "in_place", "clear"])
@pytest.mark.parametrize("name", OPTIMIZER_PARAMS)
def test_reset_equals_fresh_optimizer(name, in_place):
    after, fresh, opt, n_reset = _run(name, lambda o: reset_optimizer_state(o, in_place=in_place))
    assert n_reset == len(list(_make_model().parameters()))
    for a, b in zip(after, fresh):
        assert torch.equal(a, b), f"{name}: max |diff| = {_max_diff(after, fresh)}"


@pytest.mark.parametrize("name", OPTIMIZER_PARAMS)
def test_without_reset_differs(name):
    after, fresh, _, _ = _run(name, lambda o: 0)
    assert _max_diff(after, fresh) > 0, f"{name}: the negative control did not differ"


def test_in_place_keeps_tensor_objects():
    model = _make_model()
    opt = torch.optim.AdamW(_param_groups(model), lr=1e-2)
    _set_grads(model, 1)
    opt.step()
    before = {id(p): (s["exp_avg"], s["exp_avg_sq"], s["step"]) for p, s in opt.state.items()}
    reset_optimizer_state(opt, in_place=True)
    for p, s in opt.state.items():
        exp_avg, exp_avg_sq, step = before[id(p)]
        assert s["exp_avg"] is exp_avg and s["exp_avg_sq"] is exp_avg_sq and s["step"] is step
        assert not exp_avg.any() and not exp_avg_sq.any() and step.item() == 0


def test_clear_is_default_for_plain_torch():
    model = _make_model()
    opt = torch.optim.AdamW(_param_groups(model), lr=1e-2)
    _set_grads(model, 1)
    opt.step()
    assert reset_optimizer_state(opt) == 4
    assert len(opt.state) == 0
    assert reset_optimizer_state(opt) == 0  # nothing left to reset


def test_lr_and_scheduler_untouched():
    model = _make_model()
    opt = torch.optim.AdamW(_param_groups(model), lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
    for seed in range(1, 4):
        _set_grads(model, seed)
        opt.step()
        sched.step()
    lrs = [g["lr"] for g in opt.param_groups]
    sched_state = sched.state_dict()
    reset_optimizer_state(opt)
    assert [g["lr"] for g in opt.param_groups] == lrs
    assert sched.state_dict() == sched_state
    assert sched.optimizer is opt


def test_schedulefree_group_counters_reset():
    pytest.importorskip("schedulefree")
    model = _make_model()
    opt = _schedulefree("AdamWScheduleFree")(_param_groups(model))
    for seed in range(1, 4):
        _set_grads(model, seed)
        opt.step()
    assert opt.param_groups[0]["k"] == 3
    reset_optimizer_state(opt)
    for g in opt.param_groups:
        assert (g["k"], g["weight_sum"], g["lr_max"]) == (0, 0.0, -1.0)
        assert g["train_mode"] is True


def test_group_step_counter_reset():
    """Fused Adam variants (DeepSpeed, apex) keep `step` in param_groups."""
    model = _make_model()
    opt = torch.optim.AdamW(_param_groups(model), lr=1e-2)
    for g in opt.param_groups:
        g["step"] = 7
    reset_optimizer_state(opt)
    assert all(g["step"] == 0 for g in opt.param_groups)


@pytest.fixture
def cpu_accelerator():
    """An Accelerator(cpu=True); accelerate's singleton state is put back afterwards."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState, PartialState

    saved = [(cls, dict(cls._shared_state)) for cls in (PartialState, AcceleratorState, GradientState)]
    for cls, _ in saved:
        cls._shared_state.clear()
    try:
        yield Accelerator(cpu=True)
    finally:
        for cls, state in saved:
            cls._shared_state.clear()
            cls._shared_state.update(state)


def test_through_accelerate_wrapper(cpu_accelerator):
    from accelerate.optimizer import AcceleratedOptimizer

    def wrap(opt):
        wrapped = cpu_accelerator.prepare_optimizer(opt)
        assert isinstance(wrapped, AcceleratedOptimizer)
        assert unwrap_optimizer(wrapped)[-1] is opt
        return wrapped

    after, fresh, opt, n_reset = _run("adamw_torch", reset_optimizer_state, wrap=wrap)
    assert isinstance(opt, AcceleratedOptimizer) and n_reset == 4
    assert all(torch.equal(a, b) for a, b in zip(after, fresh))
    after, fresh, _, _ = _run("adamw_torch", lambda o: 0, wrap=wrap)
    assert _max_diff(after, fresh) > 0


def test_layerwise_dummy_optimizer():
    """transformers' GaLore/APOLLO *_layerwise: one real optimizer per parameter."""
    from transformers.trainer_pt_utils import LayerWiseDummyOptimizer

    def run(reset):
        model = _make_model()
        per_param = {p: torch.optim.AdamW([p], lr=1e-2) for p in model.parameters()}
        dummy = LayerWiseDummyOptimizer(optimizer_dict=per_param, lr=1e-2)
        for seed in range(1, 4):
            _set_grads(model, seed)
            for o in per_param.values():
                o.step()
        at_reset = _snapshot(model)
        if reset:
            assert reset_optimizer_state(dummy) == 4
        _set_grads(model, 99)
        for o in per_param.values():
            o.step()
        fresh_model = _make_model()
        with torch.no_grad():
            for p, v in zip(fresh_model.parameters(), at_reset):
                p.copy_(v)
        _set_grads(fresh_model, 99)
        for p in fresh_model.parameters():
            torch.optim.AdamW([p], lr=1e-2).step()
        return _max_diff(_snapshot(model), _snapshot(fresh_model))

    assert run(reset=True) == 0
    assert run(reset=False) > 0


def test_rejects_non_optimizer():
    with pytest.raises(TypeError):
        reset_optimizer_state(object())


def test_nvme_swapping_refused():
    class FakeZero3:
        swap_optimizer = True

        def __init__(self, inner):
            self.optimizer = inner

    model = _make_model()
    with pytest.raises(NotImplementedError, match="NVMe"):
        reset_optimizer_state(FakeZero3(torch.optim.AdamW(model.parameters())))


def test_construction_state_is_restored():
    """Entries an optimizer writes while it is built come back after a reset (Muon's
    ``use_muon`` flags; a constant tensor is remembered as its value)."""

    class Flagged(torch.optim.SGD):
        def __init__(self, params, **kw):
            super().__init__(params, **kw)
            for i, p in enumerate(self.param_groups[0]["params"]):
                self.state[p]["flag"] = i % 2 == 0
                self.state[p]["ones"] = torch.ones(3)

        def step(self):
            for p in self.param_groups[0]["params"]:
                assert "flag" in self.state[p]
            return super().step()

    model = _make_model()
    opt = Flagged(model.parameters(), lr=1e-2, momentum=0.9)
    assert record_fresh_state(opt) == 4
    assert record_fresh_state(opt) == 0  # recorded once: later calls cannot capture learned state
    for seed in (1, 2):
        _set_grads(model, seed)
        opt.step()
    for in_place in (False, True):
        opt.state[opt.param_groups[0]["params"][0]]["ones"].mul_(5)
        reset_optimizer_state(opt, in_place=in_place)
        for i, p in enumerate(opt.param_groups[0]["params"]):
            assert opt.state[p].keys() == {"flag", "ones"}
            assert opt.state[p]["flag"] is (i % 2 == 0)
            assert torch.equal(opt.state[p]["ones"], torch.ones(3))
        _set_grads(model, 3)
        opt.step()  # fails with a KeyError-like assertion if the flags were dropped


def test_per_parameter_state_in_param_groups_is_dropped():
    """GrokAdamW keeps its per-parameter state in ``group["state"]``."""
    model = _make_model()
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    record_fresh_state(opt)
    opt.param_groups[0]["state"] = {p: {"ema": torch.ones(1)} for p in model.parameters()}
    reset_optimizer_state(opt)
    assert "state" not in opt.param_groups[0]


# --------------------------------------------------------------------------------------
# every `optimizer:` value axolotl offers, built by axolotl's own trainer builder
# --------------------------------------------------------------------------------------


def axolotl_optimizer_names() -> list[str]:
    """transformers' ``OptimizerNames`` and axolotl's ``CustomSupportedOptimizers``: the
    values axolotl's ``optimizer:`` accepts, on the installed stack."""
    from axolotl.utils.schemas.enums import CustomSupportedOptimizers
    from transformers.training_args import OptimizerNames

    return sorted({o.value for o in OptimizerNames} | {o.value for o in CustomSupportedOptimizers})


_LOW_RANK = {"optim_target_modules": ["self_attn", "mlp"], "optim_args": {"rank": 4, "update_proj_gap": 2}}
# Keys some optimizers need besides `optimizer:` (axolotl or transformers fail without them).
OPTIMIZER_SETTINGS = {
    "dion": {"dion_lr": 0.01, "dion_momentum": 0.9},
    "q_galore_adamw8bit": {"optim_target_modules": ["self_attn", "mlp"], "qgalore_rank": 4},
    **{
        name: _LOW_RANK
        for name in (
            "galore_adamw",
            "galore_adamw_8bit",
            "galore_adafactor",
            "galore_adamw_layerwise",
            "galore_adamw_8bit_layerwise",
            "galore_adafactor_layerwise",
            "apollo_adamw",
            "apollo_adamw_layerwise",
        )
    },
}
# Optimizers with no state to reset at this model's settings (plain SGD, LOMO).
STATELESS = {"sgd", "lomo"}
# The package a verified optimizer comes from, where it is not a dependency of axolotl.
OPTIMIZER_PACKAGES = {
    "galore": "galore_torch",
    "apollo": "apollo_torch",
    "lomo": "lomo_optim",
    "grokadamw": "grokadamw",
    "optimi_adamw": "optimi",
    "came_pytorch": "came_pytorch",
    "scao": "scao",
}


def _missing_package(name: str) -> str | None:
    for prefix, module in OPTIMIZER_PACKAGES.items():
        if name.startswith(prefix) and not _optional(module):
            return module
    return None


@pytest.fixture(scope="module")
def optimizer_workspace(tmp_path_factory, shared_data):
    import axolotl_run
    from datasets import Dataset
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("optimizers")
    rows = read_jsonl(shared_data / "gsm8k" / "train.jsonl", limit=8)
    model_dir = axolotl_run.build_base_model(
        root / "model", [r["question"] + r["answer"] for r in rows], vocab_size=300
    )
    return {
        "root": root,
        "model_dir": model_dir,
        "base": AutoModelForCausalLM.from_pretrained(str(model_dir)),
        "data": axolotl_run.write_jsonl(root / "gsm8k.jsonl", rows),
        "train": Dataset.from_dict(
            {"input_ids": [[1, 5, 9, 13]] * 4, "labels": [[1, 5, 9, 13]] * 4, "attention_mask": [[1, 1, 1, 1]] * 4}
        ),
    }


def _config(ws, name: str, **extra):
    import axolotl_run

    return axolotl_run.write_config(
        ws["root"] / f"{name}.yml",
        ws["model_dir"],
        [axolotl_run.gsm8k_dataset(ws["data"])],
        ws["root"] / name,
        optimizer=name,
        cot_removal={"tokens_per_epoch": 8},
        **{**OPTIMIZER_SETTINGS.get(name, {}), **extra},
    )


def build_through_axolotl(ws, name: str):
    """(model, optimizer) as ``axolotl train`` builds them for ``optimizer: name``: the config
    validated by axolotl, the trainer from axolotl's builder (ours, as the plugin picks it),
    the optimizer from its ``create_optimizer``."""
    import copy

    import axolotl_run
    from axolotl.cli.config import load_cfg
    from axolotl.loaders import load_tokenizer
    from axolotl.utils.trainer import setup_trainer

    from axolotl_maskthought.adapters.axolotl.trainer import MaskThoughtTrainer

    axolotl_run.reset_plugins()
    cfg = load_cfg(str(_config(ws, name)))
    model = copy.deepcopy(ws["base"])
    trainer = setup_trainer(cfg, ws["train"], None, model, load_tokenizer(cfg), None, 10)
    assert isinstance(trainer, MaskThoughtTrainer)
    optimizer = trainer.create_optimizer()
    if callable(getattr(optimizer, "train", None)):
        optimizer.train()  # what the HF Trainer does before each training step (schedule-free)
    return model, optimizer


def _train_step(model, optimizer, seed: int) -> None:
    """One step on a seeded batch, through backward (layer-wise optimizers step in gradient
    hooks, LOMO inside its fused backward). The global RNG is seeded too (Dion draws its
    initial projections from it)."""
    torch.manual_seed(seed)
    batch = torch.randint(4, 290, (2, 12), generator=torch.Generator().manual_seed(seed))
    loss = model(input_ids=batch, labels=batch).loss
    if hasattr(optimizer, "fused_backward"):
        optimizer.fused_backward(loss, 1e-3)
        return
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()


def _copy(value):
    """A copy to compare later; quantized state tensors (torchao) by their values."""
    import copy

    if isinstance(value, torch.Tensor):
        if type(value) is not torch.Tensor and hasattr(value, "dequantize"):
            return ("quantized", type(value).__name__, value.dequantize().clone())
        return value.detach().clone()
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if type(value) in (list, tuple):
        return type(value)(_copy(v) for v in value)
    try:
        return copy.deepcopy(value)
    except Exception:  # noqa: BLE001 - compared by type only
        return value


def _optimizer_state(model, optimizer) -> dict:
    """Everything the optimizer holds but its parameters: per-parameter state by parameter
    name, of every optimizer in it (layer-wise ones included), and its param groups."""
    names = {id(p): n for n, p in model.named_parameters()}
    inner = unwrap_optimizer(optimizer)[-1]
    owners = [inner] + list(getattr(inner, "optimizer_dict", {}).values())
    state = {}
    for index, owner in enumerate(owners):
        for param, entry in owner.state.items():
            if entry:  # an empty entry is what a defaultdict lookup leaves: no state
                state[(index, names.get(id(param), "?"))] = _copy(dict(entry))
        state[(index, "param_groups")] = [
            _copy({k: v for k, v in group.items() if k != "params"}) for group in owner.param_groups
        ]
    return state


def _assert_same(got, want, where: str = "state") -> None:
    if isinstance(want, torch.Tensor):
        assert isinstance(got, torch.Tensor), where
        assert got.dtype == want.dtype and got.shape == want.shape and torch.equal(got, want), where
    elif isinstance(want, dict):
        assert isinstance(got, dict) and got.keys() == want.keys(), (
            f"{where}: {sorted(map(str, got))} != {sorted(map(str, want))}"
        )
        for key in want:
            _assert_same(got[key], want[key], f"{where}[{key!r}]")
    elif isinstance(want, (list, tuple)):
        assert type(got) is type(want) and len(got) == len(want), where
        for index, (a, b) in enumerate(zip(got, want)):
            _assert_same(a, b, f"{where}[{index}]")
    elif callable(want) or type(want).__module__ not in ("builtins",):
        assert type(got) is type(want), where  # functions, projector objects, ...
    else:
        assert got == want, f"{where}: {got!r} != {want!r}"


def _differs(a, b) -> bool:
    try:
        _assert_same(a, b)
    except AssertionError:
        return True
    return False


@pytest.mark.parametrize("name", axolotl_optimizer_names())
def test_every_axolotl_optimizer_resets_to_a_fresh_one(optimizer_workspace, name):
    """For each `optimizer:` value axolotl offers: after a reset the optimizer axolotl built
    holds exactly what a freshly built one holds, and its next step equals the fresh one's.
    Values that cannot run here must really not run (else they belong in RESET_VERIFIED);
    refused ones are refused by the config check (see test_config)."""
    from axolotl_maskthought.engine.optimizer_support import reset_support

    ws = optimizer_workspace
    support, reason = reset_support(name)
    assert support != "unknown", (
        f"axolotl offers `optimizer: {name}`, which adapters/axolotl/optimizer_support.py does not "
        "list: run this test with its package installed and add it to one table"
    )
    if support == "refused":
        import axolotl_run
        from axolotl.cli.config import load_cfg

        axolotl_run.reset_plugins()
        with pytest.raises(ValueError, match=rf"`optimizer: {name}`.*`cot_removal.reset_optimizer"):
            load_cfg(str(_config(ws, name)))
        return
    missing = _missing_package(name) if support == "verified" else None
    if missing:
        pytest.skip(f"`optimizer: {name}` needs {missing}, which is not installed")
    try:
        model, optimizer = build_through_axolotl(ws, name)
        for seed in (1, 2, 3):
            _train_step(model, optimizer, seed)
    except Exception:  # noqa: BLE001
        if support == "unverified":
            return  # as optimizer_support says: it does not build or step on this machine
        raise
    assert support == "verified", (
        f"`optimizer: {name}` builds and steps here, but optimizer_support lists it as unverified "
        f"({reason}): check its reset with this test and move it to RESET_VERIFIED"
    )
    fresh_model, fresh = build_through_axolotl(ws, name)
    fresh_state = _optimizer_state(fresh_model, fresh)
    before = _optimizer_state(model, optimizer)
    assert _differs(before, fresh_state) == (name not in STATELESS), name

    reset_optimizer_state(optimizer)
    inner = unwrap_optimizer(optimizer)[-1]
    in_place = type(inner).__module__.startswith("bitsandbytes")  # zeroed in place, not emptied
    if not in_place:
        _assert_same(_optimizer_state(model, optimizer), fresh_state, f"{name} after reset")
    with torch.no_grad():
        for p, q in zip(fresh_model.parameters(), model.parameters()):
            p.copy_(q)
    _train_step(model, optimizer, 99)
    _train_step(fresh_model, fresh, 99)
    assert _max_diff(_snapshot(model), _snapshot(fresh_model)) == 0, name
    if in_place:
        reset_optimizer_state(optimizer, in_place=False)
        fresh_model2, fresh2 = build_through_axolotl(ws, name)
        _assert_same(_optimizer_state(model, optimizer), _optimizer_state(fresh_model2, fresh2), f"{name} after reset")


def test_axolotl_train_with_muon_passes_the_reset(tmp_path):
    """A user's case: `optimizer: muon` with `cot_removal`. Muon marks each parameter
    `use_muon` while it is built; the first reset dropped the marks and the next step
    failed with ``KeyError: 'use_muon'``. Now training goes on past two resets, and the
    marks are what Muon's factory wrote: True for the 2-D weights, False for the
    embeddings and the LM head."""
    import axolotl_run

    from axolotl_maskthought.data.files import write_lines
    from axolotl_maskthought.data.generators import generate_multiplication

    lines = list(dict.fromkeys(generate_multiplication(3, 3, 20, seed=5)))[:16]
    data = tmp_path / "mult.txt"
    write_lines(data, lines)
    base = axolotl_run.build_base_model(tmp_path / "model", lines, vocab_size=256, hidden=32, layers=1, heads=2)
    config = axolotl_run.write_config(
        tmp_path / "muon.yml",
        base,
        [{"path": str(data), "type": "axolotl_maskthought.strategies.icot"}],
        tmp_path / "out",
        optimizer="muon",
        max_steps=5,
        # 4 micro-batches an epoch, a token every 2: the count grows at steps 2 and 4
        cot_removal={"tokens_per_epoch": 2, "smoothing_lambda": None},
    )
    run = axolotl_run.run_in_process(config)
    assert run.trainer.state.global_step == 5
    resets = [entry["step"] - 1 for entry in run.log_history if entry.get("cot_removal/optimizer_reset")]
    assert resets == [2, 4]
    optimizer = unwrap_optimizer(run.trainer.optimizer)[-1]
    assert type(optimizer).__name__ == "Muon"
    names = {id(p): n for n, p in run.trainer.model.named_parameters()}
    marks = {names[id(p)]: optimizer.state[p].get("use_muon") for g in optimizer.param_groups for p in g["params"]}
    assert marks and None not in marks.values(), marks
    assert {n for n, m in marks.items() if not m} == {"model.embed_tokens.weight", "lm_head.weight"}


# --------------------------------------------------------------------------------------
# DeepSpeed: real engines on the CPU accelerator, in a subprocess
# --------------------------------------------------------------------------------------

# (stage, optimizer, offload_optimizer, precision, through accelerate's wrapper)
#   optimizer "client": a torch AdamW passed to deepspeed.initialize
#   optimizer "config": {"optimizer": {"type": "AdamW"}} -> DeepSpeed's FusedAdam, or
#                       DeepSpeedCPUAdam when the optimizer state is offloaded
DS_CASES = {
    f"zero{stage}-{opt}{'-offload' if off else ''}": (stage, opt, off, "fp32", False)
    for stage in (1, 2, 3)
    for opt, off in (("client", False), ("config", False), ("config", True))
}
DS_CASES.update(
    {
        "zero0-config": (0, "config", False, "fp32", False),
        "zero0-client-bf16": (0, "client", False, "bf16", False),
        "zero2-client-bf16": (2, "client", False, "bf16", False),
        "zero0-client-fp16": (0, "client", False, "fp16", False),
        "zero2-client-fp16": (2, "client", False, "fp16", False),
        "zero3-client-bf16": (3, "client", False, "bf16", False),
        "zero2-config-offload-bf16": (2, "config", True, "bf16", False),
        "zero3-config-offload-bf16": (3, "config", True, "bf16", False),
        "zero2-client-accelerate-wrapper": (2, "client", False, "fp32", True),
        "zero3-config-offload-accelerate-wrapper": (3, "config", True, "fp32", True),
    }
)
DS_WARM_STEPS = 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def deepspeed_results() -> dict:
    env = dict(os.environ)
    env.update(
        DS_ACCELERATOR="cpu",
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(_free_port()),
        RANK="0",
        WORLD_SIZE="1",
        LOCAL_RANK="0",
        LOCAL_SIZE="1",
        CUDA_VISIBLE_DEVICES="",
        OMP_NUM_THREADS="1",
    )
    # The first run on a machine JIT-compiles DeepSpeed's CPU FusedAdam and
    # DeepSpeedCPUAdam ops with the system C++ compiler (a minute or more each on
    # 2 cores); later runs load them from the torch_extensions cache
    # (~/.cache/torch_extensions or $TORCH_EXTENSIONS_DIR).
    proc = subprocess.run(
        [sys.executable, __file__, "--deepspeed-worker"],
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    results = {}
    for line in proc.stdout.splitlines():
        if line.startswith("@@RESULT "):
            item = json.loads(line[len("@@RESULT ") :])
            results[item["case"]] = item
    if "__import__" in results and results["__import__"]["status"] == "error":
        pytest.skip(f"deepspeed is not importable: {results['__import__']['error']}")
    results["__worker__"] = {
        "returncode": proc.returncode,
        "stderr_tail": proc.stderr[-6000:],
        "stdout_tail": proc.stdout[-3000:],
    }
    return results


@pytest.mark.parametrize("case", list(DS_CASES))
def test_deepspeed_engine_reset_equals_fresh_engine(deepspeed_results, case):
    result = deepspeed_results.get(case)
    worker = deepspeed_results["__worker__"]
    assert result is not None, (
        f"the DeepSpeed worker produced no result for {case} (exit code "
        f"{worker['returncode']})\nstdout tail:\n{worker['stdout_tail']}\n"
        f"stderr tail:\n{worker['stderr_tail']}"
    )
    if result["status"] == "setup_error":
        pytest.xfail(f"{case} does not run on CPU here: {result['error']}")
    assert result["status"] == "ok", result.get("error")
    assert result["n_reset"] > 0, result
    # Same rank, same batch, same code path: the comparison is expected to be exact;
    # the tolerance only admits reordered reductions.
    assert result["max_abs_diff"] <= 1e-6, result
    assert result["control_max_abs_diff"] > 1e-4, result
    # DeepSpeed's hp-param links still point at the (now zeroed) state tensors.
    assert result["linked_moments_zero_after_reset"] in (True, None), result
    stage, opt_kind, offload = DS_CASES[case][:3]
    expected_inner = {
        ("client", False): "AdamW",
        ("config", False): "FusedAdam",
        ("config", True): "DeepSpeedCPUAdam",
    }[(opt_kind, offload)]
    assert result["inner"] == expected_inner, result


# ---- worker (runs in the subprocess) ---------------------------------------------------


def _ds_worker() -> None:  # pragma: no cover - runs in a subprocess
    def emit(case, **kw):
        print("@@RESULT " + json.dumps({"case": case, **kw}), flush=True)

    try:
        import importlib

        import deepspeed

        # (not `import deepspeed.comm.torch as ...`: deepspeed.comm has an
        # attribute `torch` that is the torch package)
        ds_comm_torch = importlib.import_module("deepspeed.comm.torch")
    except Exception as exc:  # noqa: BLE001
        emit("__import__", status="error", error=f"{type(exc).__name__}: {exc}")
        return
    emit("__import__", status="ok", version=deepspeed.__version__)

    # One rank: the shared-memory allreduce kernel is never used, and skipping its
    # JIT build saves about a minute on a machine whose extension cache is cold.
    ds_comm_torch.build_shm_op = lambda: None
    # DeepSpeedCPUAdam asks py-cpuinfo for the CPU vendor in every constructor,
    # which takes a second or more each time; the answer does not change.
    try:
        import functools

        import cpuinfo

        cpuinfo.get_cpu_info = functools.cache(cpuinfo.get_cpu_info)
    except ImportError:
        pass
    deepspeed.init_distributed(dist_backend="gloo")

    import traceback

    from deepspeed.accelerator import get_accelerator

    assert get_accelerator().device_name() == "cpu"

    def batch(seed):
        gen = torch.Generator().manual_seed(seed)
        return torch.randn(4, 8, generator=gen), torch.randn(4, 64, generator=gen)

    def build(case, init_state):
        stage, opt_kind, offload, precision, _ = DS_CASES[case]
        model = _make_model()
        model.load_state_dict(init_state)
        cfg = {
            "train_micro_batch_size_per_gpu": 4,
            "gradient_accumulation_steps": 1,
            "steps_per_print": 10**9,
            "zero_optimization": {"stage": stage},
        }
        if precision == "bf16":
            cfg["bf16"] = {"enabled": True}
        elif precision == "fp16":
            # a static loss scale: no overflow-skipped steps to line up
            cfg["fp16"] = {"enabled": True, "loss_scale": 128}
        kwargs = {}
        if opt_kind == "client":
            kwargs["optimizer"] = torch.optim.AdamW(_param_groups(model), lr=1e-2, weight_decay=0.1)
        else:
            cfg["optimizer"] = {"type": "AdamW", "params": {"lr": 1e-2, "weight_decay": 0.1}}
        if offload:
            cfg["zero_optimization"]["offload_optimizer"] = {"device": "cpu"}
        engine, _, _, _ = deepspeed.initialize(
            model=model,
            model_parameters=None if opt_kind == "client" else model.parameters(),
            config=cfg,
            **kwargs,
        )
        return engine

    def train_step(engine, seed):
        x, y = batch(seed)
        dtype = next(engine.module.parameters()).dtype
        out = engine(x.to(dtype))
        loss = torch.nn.functional.mse_loss(out.float(), y)
        engine.backward(loss)
        engine.step()

    from deepspeed.utils import (
        safe_get_full_fp32_param,
        safe_get_full_optimizer_state,
        safe_set_full_fp32_param,
    )

    def unfused_masters(engine):
        """FP16_UnfusedOptimizer (bf16 without ZeRO) keeps fp32 copies in fp32_groups."""
        opt = engine.optimizer
        if not (hasattr(opt, "fp16_groups") and hasattr(opt, "fp32_groups")):
            return {}
        return {
            id(p16): p32
            for g16, g32 in zip(opt.fp16_groups, opt.fp32_groups)
            for p16, p32 in zip(g16, g32)
            if isinstance(g32, list)
        }

    def master_params(engine):
        """The fp32 master weights (the module's own parameters when there are none)."""
        unfused = unfused_masters(engine)
        out = {}
        for n, p in engine.module.named_parameters():
            hp = safe_get_full_fp32_param(p)
            if hp is None:
                hp = unfused.get(id(p), p)
            out[n] = hp.detach().float().clone()
        return out

    def set_master_params(engine, values):
        # A bf16 engine derives its fp32 master weights from the rounded bf16
        # module; put back the exact fp32 values the reset engine had.
        unfused = unfused_masters(engine)
        with torch.no_grad():
            for n, p in engine.module.named_parameters():
                if id(p) in unfused:
                    unfused[id(p)].copy_(values[n])
                else:
                    safe_set_full_fp32_param(p, values[n])

    def linked_moments(engine):
        """DeepSpeed's own view of the Adam moments, through its hp-param links.

        Parameters whose link is missing are left out: ZeRO-1/2 links the state
        once, after the first step of param group 0, so with several param
        groups the later groups have no link (that is DeepSpeed's, before and
        after a reset alike).
        """
        out = []
        for p in engine.module.parameters():
            for key in ("exp_avg", "exp_avg_sq"):
                try:
                    value = safe_get_full_optimizer_state(p, key)
                except ValueError:
                    continue
                if value is not None:
                    out.append(value.detach().clone())
        return out

    def diff(a, b):
        return max((a[k] - b[k]).abs().max().item() for k in a)

    init_state = {k: v.clone() for k, v in _make_model().state_dict().items()}
    for case, (stage, opt_kind, offload, precision, via_wrapper) in DS_CASES.items():
        phase = "setup"
        t0 = time.perf_counter()
        try:
            engine = build(case, init_state)
            for seed in range(1, DS_WARM_STEPS + 1):
                train_step(engine, seed)
            at_reset = master_params(engine)
            chain = [type(o).__name__ for o in unwrap_optimizer(engine.optimizer)]

            # negative control: the same history, no reset
            control = build(case, init_state)
            for seed in range(1, DS_WARM_STEPS + 1):
                train_step(control, seed)
            phase = "reset"
            target = engine.optimizer
            if via_wrapper:
                from accelerate import Accelerator
                from accelerate.utils.deepspeed import DeepSpeedOptimizerWrapper

                Accelerator(cpu=True)  # the wrapper needs an initialised AcceleratorState

                target = DeepSpeedOptimizerWrapper(engine.optimizer)
                chain = [type(target).__name__] + chain
            linked_before = linked_moments(engine)
            n_reset = reset_optimizer_state(target)
            linked_after = linked_moments(engine)
            if linked_before:
                assert any(v.any() for v in linked_before)
                linked_zero = len(linked_after) == len(linked_before) and not any(v.any() for v in linked_after)
            else:
                linked_zero = None
            train_step(engine, 99)
            train_step(control, 99)

            phase = "fresh"
            fresh = build(case, at_reset)
            set_master_params(fresh, at_reset)
            # DeepSpeed's non-ZeRO fp16/bf16 wrappers (FP16_Optimizer,
            # FP16_UnfusedOptimizer) take one zero-gradient optimizer step while
            # they are constructed, so a new engine starts at Adam step 1.  The
            # reference here is a fresh optimizer (step 0), so undo that count by
            # hand; the moments of a zero-gradient Adam step are exactly zero.
            prestepped = False
            inner = unwrap_optimizer(fresh.optimizer)[-1]
            for st in inner.state.values():
                if st:
                    prestepped = True
                    assert not st["exp_avg"].any() and not st["exp_avg_sq"].any()
                    if torch.is_tensor(st["step"]):
                        st["step"].zero_()
                    else:
                        st["step"] = 0
            train_step(fresh, 99)
            got, want, ctl = master_params(engine), master_params(fresh), master_params(control)
            emit(
                case,
                status="ok",
                n_reset=n_reset,
                chain=chain,
                inner=chain[-1],
                linked_moments_zero_after_reset=linked_zero,
                fresh_engine_prestepped=prestepped,
                seconds=round(time.perf_counter() - t0, 2),
                max_abs_diff=diff(got, want),
                exact=all(torch.equal(got[k], want[k]) for k in got),
                control_max_abs_diff=diff(ctl, want),
            )
            del engine, control, fresh
        except Exception as exc:  # noqa: BLE001
            emit(
                case,
                status="setup_error" if phase == "setup" else "error",
                phase=phase,
                error=f"{type(exc).__name__}: {exc}",
                traceback=traceback.format_exc()[-4000:],
            )


if __name__ == "__main__" and "--deepspeed-worker" in sys.argv:
    _ds_worker()
