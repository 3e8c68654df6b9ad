"""Reset an optimizer's state in place, as if it had just been constructed.

Stepwise Internalization (ICoT-SI) starts a fresh AdamW every time the number of
removed chain-of-thought tokens grows.  Inside an HF/axolotl trainer the optimizer
object cannot simply be replaced: the LR scheduler holds a reference to it, and
accelerate / DeepSpeed wrap it.  :func:`reset_optimizer_state` therefore keeps the
object and its ``param_groups`` (lr, betas, weight decay, ...) and drops only what
the optimizer has learned (moments, accumulators, step counts), so that the next
``step()`` computes exactly what a freshly built optimizer of the same class and
hyperparameters would compute from the current parameters.

Two ways of dropping the state are used, chosen per optimizer:

* **clear** - remove the per-parameter state entries and let the optimizer
  re-create them lazily at its next ``step()``.  This is right by construction for
  every optimizer that initialises its state lazily (all of ``torch.optim`` in the
  supported torch versions, transformers' Adafactor, schedule-free, torchao), and it
  is the only right choice when the fresh state is not zeros (schedule-free's ``z``
  is a copy of the parameters, Adagrad's ``sum`` starts at
  ``initial_accumulator_value``, bitsandbytes' quantisation maps, ...).  It is the
  default for optimizers that nothing else references.
* **in place** - keep every state tensor object and overwrite it with its fresh
  value (zeros for moments, ``initial_accumulator_value`` for Adagrad's ``sum``),
  and set step counters to 0 without changing their type.  DeepSpeed keeps
  references to the state tensors outside the optimizer (ZeRO links them to the
  fp16/bf16 parameters for ``safe_get_full_optimizer_state``, CPU offload pins
  them, ZeRO-3 offloads and reloads them), and bitsandbytes registers paged
  buffers with its page manager, so for these the tensors are reset in place.  A
  state entry containing a key whose fresh value is not known is cleared instead.

Some optimizers write configuration into their per-parameter state when they are
built (axolotl's Muon marks each parameter ``use_muon``; torch's Adagrad creates
``sum`` and ``step``).  A fresh optimizer holds those entries, so a reset must put
them back: :func:`record_fresh_state`, called right after the optimizer is built
(``MaskThoughtTrainer.create_optimizer``), remembers what it held then, and the reset
restores exactly that (constant tensors are remembered as their value, not copied).
Per-parameter state kept in ``param_groups`` (GrokAdamW's ``group["state"]``) is
dropped like ``optimizer.state``.  What an optimizer keeps in its own attributes
cannot be seen here: such optimizers (AdaLomo) are refused by the config check.

Bookkeeping kept in ``param_groups`` is reset too: ``group["step"]`` (DeepSpeed's
and apex's FusedAdam, optimi, Dion), the schedule-free averaging (``k``,
``weight_sum``, ``lr_max``, ``scheduled_lr``) and optimi's one-time ``setup``; with a
record each goes back to its value at construction.  ``lr`` and every other
hyperparameter are left alone, and so are modes (schedule-free's ``train_mode``)
and the LR scheduler.

Which ``optimizer:`` values of axolotl this was checked for, through axolotl's own
trainer builder, is listed in ``adapters/axolotl/optimizer_support.py``.

DeepSpeed notes (checked against deepspeed 0.19.8 on its CPU accelerator):

* ``DeepSpeedCPUAdam`` also keeps the step and ``beta**step`` in its C++ object;
  it recomputes them whenever the Python-side ``state["step"]`` it is handed is
  not the previous one plus one, so resetting ``state["step"]`` to 0 is enough.
* ZeRO-3 with the optimizer state on NVMe (``offload_optimizer.device=nvme``)
  is refused (``NotImplementedError``): that state lives on disk between steps.
* Without ZeRO, DeepSpeed's fp16/bf16 wrappers (``FP16_Optimizer``,
  ``FP16_UnfusedOptimizer``) take one zero-gradient step while they are built,
  so a brand-new engine there starts at Adam step 1.  The reset gives step 0,
  which is what a freshly constructed optimizer does.
* Loss scalers (fp16) and gradient clipping state are not optimizer state and
  are left alone.

Nothing heavy is imported at module import time; deepspeed is never imported.
"""

from __future__ import annotations

import copy
import logging
import weakref
from dataclasses import dataclass
from typing import Any

LOG = logging.getLogger(__name__)

# Per-parameter state keys whose fresh value is a tensor of zeros, for every
# optimizer that uses them: Adam/AdamW/AMSGrad (torch, DeepSpeed FusedAdam and
# CPUAdam, bitsandbytes 32-bit uses other names), Adamax, RMSprop, Adadelta, Lion.
_ZERO_INIT_KEYS = frozenset(
    {
        "exp_avg",
        "exp_avg_sq",
        "max_exp_avg_sq",
        "exp_inf",
        "square_avg",
        "grad_avg",
        "acc_delta",
    }
)

# bitsandbytes' Optimizer1State/Optimizer2State: moment buffers (float32 or uint8
# codes), block-wise absmax and the max-norm vector all start as zeros; the
# quantisation maps ``qmap*`` are constants shared between parameters.
_BNB_ZERO_INIT_KEYS = frozenset(
    {
        "state1",
        "state2",
        "absmax1",
        "absmax2",
        "unorm_vec",
        "max1",
        "max2",
        "new_max1",
        "new_max2",
        "gnorm_vec",
    }
)
_BNB_CONSTANT_KEYS = frozenset({"qmap1", "qmap2"})

# Schedule-free optimizers keep their iteration count and the averaging weights in
# param_groups.  ``train_mode`` is a mode, not learned state, and is kept.
_SCHEDULEFREE_GROUP_KEYS = ("k", "weight_sum", "lr_max", "scheduled_lr")
# Bookkeeping an optimizer keeps in its param groups and changes as it steps: step
# counters, schedule-free's averaging, optimi's one-time ``setup`` (with the ``triton``
# choice it makes then).  With a record of the fresh state each goes back to its value
# at construction (or is removed if it was created later); hyperparameters (``lr``,
# betas, ...) and modes (``train_mode``) are never touched.
_GROUP_BOOKKEEPING_KEYS = ("step", "setup", "triton") + _SCHEDULEFREE_GROUP_KEYS


def _module_of(obj: Any) -> str:
    return type(obj).__module__ or ""


def _is_deepspeed(obj: Any) -> bool:
    module = _module_of(obj)
    return module == "deepspeed" or module.startswith("deepspeed.")


def _is_bitsandbytes(obj: Any) -> bool:
    module = _module_of(obj)
    return module == "bitsandbytes" or module.startswith("bitsandbytes.")


def _is_schedulefree(opt: Any) -> bool:
    module = _module_of(opt)
    if module == "schedulefree" or module.startswith("schedulefree."):
        return True
    groups = getattr(opt, "param_groups", None) or []
    return bool(groups) and all("k" in g and "weight_sum" in g and "lr_max" in g for g in groups)


def _has_optimizer_state(obj: Any) -> bool:
    return hasattr(obj, "param_groups") and hasattr(obj, "state")


def unwrap_optimizer(optimizer: Any) -> list[Any]:
    """The chain ``[optimizer, optimizer.optimizer, ...]`` down to the innermost optimizer.

    Follows ``.optimizer`` attributes, which is how accelerate's
    ``AcceleratedOptimizer``/``DeepSpeedOptimizerWrapper``, DeepSpeed's ZeRO stage
    1/2/3 optimizers, its BF16/FP16 wrappers and a DeepSpeed engine expose what
    they wrap.  The last element is the optimizer that owns the state.
    """
    chain = [optimizer]
    seen = {id(optimizer)}
    current = optimizer
    while True:
        inner = getattr(current, "optimizer", None)
        if inner is None or id(inner) in seen or not _has_optimizer_state(inner):
            break
        chain.append(inner)
        seen.add(id(inner))
        current = inner
    if not _has_optimizer_state(chain[-1]):
        raise TypeError(
            f"cannot reset {type(optimizer).__name__}: no optimizer with "
            "`param_groups` and `state` found by following `.optimizer`"
        )
    return chain


def _zero_counter(value: Any) -> Any:
    """0 of the same kind as a step counter (int, float or tensor, zeroed in place)."""
    if hasattr(value, "zero_") and callable(value.zero_):
        value.zero_()
        return value
    if isinstance(value, float):
        return 0.0
    return 0


@dataclass(frozen=True)
class _Constant:
    """A state tensor whose elements all equal ``value``: rebuilt, not copied."""

    value: Any
    size: tuple
    stride: tuple
    dtype: Any
    device: Any

    def build(self):
        import torch

        return torch.empty_strided(self.size, self.stride, dtype=self.dtype, device=self.device).fill_(self.value)


@dataclass(frozen=True)
class _FreshState:
    """What one optimizer held right after it was built."""

    entries: dict  # parameter -> {key: _Constant | tensor copy | deep copy}
    group_keys: tuple  # the keys of each param group
    group_values: tuple  # each group's bookkeeping values (_GROUP_BOOKKEEPING_KEYS)


# optimizer -> _FreshState, filled by record_fresh_state; dropped with the optimizer.
_FRESH: weakref.WeakKeyDictionary[Any, _FreshState] = weakref.WeakKeyDictionary()


class _NotRemembered(Exception):
    pass


def _remember(value: Any) -> Any:
    import torch

    if not isinstance(value, torch.Tensor):
        try:
            return copy.deepcopy(value)
        except Exception as exc:  # noqa: BLE001 - objects that cannot be copied
            raise _NotRemembered(type(value).__name__) from exc
    value = value.detach()
    if type(value) is not torch.Tensor:  # tensor subclasses (quantized state, DTensor)
        try:
            return copy.deepcopy(value)
        except Exception as exc:  # noqa: BLE001
            raise _NotRemembered(type(value).__name__) from exc
    if value.numel() > 1:
        try:
            first = value.reshape(-1)[0]
            if bool((value == first).all()):
                return _Constant(first.item(), tuple(value.shape), value.stride(), value.dtype, value.device)
        except (RuntimeError, TypeError):  # dtypes without == (float8, ...)
            pass
    return value.clone()


def _remember_entry(entry: dict) -> dict:
    remembered = {}
    for key, value in entry.items():
        try:
            remembered[key] = _remember(value)
        except _NotRemembered as exc:
            LOG.warning("record_fresh_state: cannot copy state %r (%s); a reset will drop it", key, exc)
    return remembered


def _fresh_value(remembered: Any) -> Any:
    import torch

    if isinstance(remembered, _Constant):
        return remembered.build()
    if isinstance(remembered, torch.Tensor) and type(remembered) is torch.Tensor:
        return remembered.clone()
    return copy.deepcopy(remembered)


def _reset_value_in_place(value: Any, remembered: Any) -> bool:
    """Overwrite tensor ``value`` with its remembered fresh value; False if it cannot be."""
    import torch

    if not isinstance(value, torch.Tensor) or type(value) is not torch.Tensor:
        return False
    with torch.no_grad():
        if isinstance(remembered, _Constant) and tuple(value.shape) == remembered.size:
            value.fill_(remembered.value)
            return True
        if isinstance(remembered, torch.Tensor) and remembered.shape == value.shape:
            value.copy_(remembered)
            return True
    return False


def _reset_targets(chain: list[Any]) -> list[Any]:
    """Every optimizer object whose state a reset of ``chain`` must drop."""
    inner = chain[-1]
    targets = [inner]
    # ZeRO-3 with a partial optimizer offload steps the sub-groups kept on the
    # accelerator with a second optimizer.
    for wrapper in chain:
        backup = getattr(wrapper, "backup_optimizer", None)
        if backup is not None and _has_optimizer_state(backup):
            targets.append(backup)
    # transformers' layer-wise optimizers (GaLore/APOLLO *_layerwise): the real
    # optimizers run in gradient hooks, one per parameter.
    optimizer_dict = getattr(inner, "optimizer_dict", None)
    if isinstance(optimizer_dict, dict):
        targets.extend(o for o in optimizer_dict.values() if _has_optimizer_state(o))
    unique = []
    for opt in targets:
        if all(opt is not seen for seen in unique):
            unique.append(opt)
    return unique


def record_fresh_state(optimizer: Any) -> int:
    """Remember what ``optimizer`` holds now, as the state a reset goes back to.

    Call it right after the optimizer is built, before its first ``step()`` and
    before a checkpoint's state is loaded into it. Per-parameter entries present
    now (Muon's ``use_muon`` flags, Adagrad's ``sum`` and ``step``) are what
    :func:`reset_optimizer_state` restores; without a record the fresh state is
    taken to be empty. Tensors whose elements are all equal are remembered as
    their value; others are copied (extra memory: their size). Recording an
    optimizer a second time does nothing, so a later call cannot capture
    learned state.

    ``optimizer`` may be anything :func:`reset_optimizer_state` accepts. Returns
    the number of non-empty per-parameter entries remembered (0 when already
    recorded). Raises ``TypeError`` like :func:`unwrap_optimizer`.
    """
    recorded = 0
    for opt in _reset_targets(unwrap_optimizer(optimizer)):
        try:
            if opt in _FRESH:
                continue
        except TypeError:  # not weak-referenceable
            continue
        entries = {param: _remember_entry(entry) for param, entry in opt.state.items() if entry}
        group_keys = tuple(frozenset(group) for group in opt.param_groups)
        group_values = tuple(
            _remember_entry({k: group[k] for k in _GROUP_BOOKKEEPING_KEYS if k in group}) for group in opt.param_groups
        )
        _FRESH[opt] = _FreshState(entries, group_keys, group_values)
        recorded += len(entries)
    return recorded


def _fresh_state_of(opt: Any) -> _FreshState | None:
    try:
        return _FRESH.get(opt)
    except TypeError:
        return None


def _is_per_parameter_dict(value: Any) -> bool:
    import torch

    return isinstance(value, dict) and any(isinstance(key, torch.Tensor) for key in value)


def _reset_group_counters(opt: Any, fresh: _FreshState | None = None) -> None:
    for index, group in enumerate(opt.param_groups):
        known = fresh is not None and index < len(fresh.group_keys)
        built_with = fresh.group_keys[index] if known else None
        for key in [k for k, v in group.items() if k != "params" and _is_per_parameter_dict(v)]:
            # Per-parameter state kept in the group (GrokAdamW's group["state"]).
            if built_with is not None and key not in built_with:
                del group[key]
            else:
                group[key].clear()
        if known:
            values = fresh.group_values[index]
            for key in _GROUP_BOOKKEEPING_KEYS:
                if key in values:
                    if not _reset_value_in_place(group.get(key), values[key]):
                        group[key] = _fresh_value(values[key])
                elif key in group and key not in built_with:
                    del group[key]  # created by a step, as it will be again
        else:
            _reset_unrecorded_group(opt, group)


def _reset_unrecorded_group(opt: Any, group: dict) -> None:
    """Bookkeeping of a group whose fresh state was not recorded (DeepSpeed's own optimizers)."""
    if "step" in group:
        group["step"] = _zero_counter(group["step"])
    if not _is_schedulefree(opt):
        return
    defaults = getattr(opt, "defaults", None) or {}
    for key in _SCHEDULEFREE_GROUP_KEYS:
        if key not in group:
            continue
        if key == "k":
            group[key] = 0
        elif key in defaults:
            group[key] = defaults[key]
        else:
            # e.g. ScheduleFreeWrapper creates these on its first step.
            del group[key]


def _group_of_param(opt: Any) -> dict[int, dict]:
    return {id(p): g for g in opt.param_groups for p in g.get("params", [])}


def _reset_entry_in_place(opt: Any, state: dict, group: dict | None, fresh_entry: dict | None = None) -> bool:
    """Overwrite one parameter's state with its fresh value; False if some key is unknown."""
    import torch

    bnb = _is_bitsandbytes(opt)
    sgd = isinstance(opt, torch.optim.SGD)
    adagrad = isinstance(opt, torch.optim.Adagrad)
    fresh_entry = fresh_entry or {}

    plan = []
    for key, value in state.items():
        if key in fresh_entry:
            plan.append((key, "fresh"))
        elif key == "step":
            plan.append((key, "counter"))
        elif bnb and key in _BNB_CONSTANT_KEYS:
            continue
        elif not isinstance(value, torch.Tensor):
            return False
        elif key in _ZERO_INIT_KEYS or (bnb and key in _BNB_ZERO_INIT_KEYS):
            plan.append((key, "zero"))
        elif key == "momentum_buffer" and not sgd:
            # RMSprop and Muon variants start it at zeros; torch SGD starts it as a
            # copy of the first gradient, so an SGD entry is cleared instead.
            plan.append((key, "zero"))
        elif key == "sum" and adagrad:
            plan.append((key, "adagrad"))
        else:
            return False

    with torch.no_grad():
        for key, how in plan:
            value = state[key]
            if how == "fresh":
                if not _reset_value_in_place(value, fresh_entry[key]):
                    state[key] = _fresh_value(fresh_entry[key])
            elif how == "counter":
                state[key] = _zero_counter(value)
            elif how == "zero":
                value.zero_()
            else:  # Adagrad's accumulator starts at initial_accumulator_value
                # torch's Adagrad takes it from `defaults` (not the group) when it
                # initialises state lazily; do the same.
                defaults = getattr(opt, "defaults", None) or {}
                init = defaults.get(
                    "initial_accumulator_value",
                    (group or {}).get("initial_accumulator_value", 0.0),
                )
                if value.is_complex():
                    init = complex(init, init)
                value.fill_(init)
    return True


def _reset_one(opt: Any, in_place: bool) -> int:
    """Reset one (innermost) optimizer; returns the number of non-empty state entries."""
    fresh = _fresh_state_of(opt)
    _reset_group_counters(opt, fresh)
    state = opt.state
    keys = [k for k, v in list(state.items()) if v]
    fresh_entries = fresh.entries if fresh is not None else {}
    if not in_place:
        state.clear()
    else:
        groups = _group_of_param(opt)
        cleared = [
            key
            for key in keys
            if not _reset_entry_in_place(opt, state[key], groups.get(id(key)), fresh_entries.get(key))
        ]
        for key in cleared:
            del state[key]
        if cleared:
            LOG.warning(
                "reset_optimizer_state: %d state entr%s of %s had keys without a known "
                "fresh value and were cleared instead of reset in place",
                len(cleared),
                "y" if len(cleared) == 1 else "ies",
                type(opt).__name__,
            )
    if fresh_entries:
        # Put back what the optimizer held when it was built, for the parameters it
        # still optimizes (ZeRO swaps parameters for flat partitions).
        live = {id(p) for group in opt.param_groups for p in group.get("params", [])}
        for param, entry in fresh_entries.items():
            if id(param) in live:
                current = state[param]
                for key, remembered in entry.items():
                    if key not in current:
                        current[key] = _fresh_value(remembered)
    return len(keys)


def _check_supported(chain: list[Any]) -> None:
    for wrapper in chain:
        if getattr(wrapper, "swap_optimizer", False) or (getattr(wrapper, "optimizer_swapper", None) is not None):
            raise NotImplementedError(
                "reset_optimizer_state does not support DeepSpeed ZeRO-3 with the "
                "optimizer state offloaded to NVMe (offload_optimizer.device=nvme): "
                "the state tensors are swapped out to disk between steps"
            )


def reset_optimizer_state(optimizer: Any, in_place: bool | None = None) -> int:
    """Reset ``optimizer`` so that its next step equals a fresh optimizer's first step.

    ``optimizer`` may be a torch optimizer, an accelerate ``AcceleratedOptimizer``,
    a DeepSpeed ZeRO stage 1/2/3 (or BF16/FP16) optimizer, a DeepSpeed engine, or
    transformers' ``LayerWiseDummyOptimizer`` (its per-parameter optimizers are
    reset).  Hyperparameters in ``param_groups`` - including ``lr`` - are kept; the
    LR scheduler is not touched.

    Afterwards every optimizer holds what it held when it was built: the
    per-parameter entries remembered by :func:`record_fresh_state` (nothing for an
    optimizer that was not recorded), and no per-parameter state in
    ``param_groups``.

    ``in_place`` forces a strategy: ``None`` (default) resets in place when the
    optimizer is wrapped by DeepSpeed or is a bitsandbytes optimizer and clears the
    state otherwise; ``True``/``False`` force in-place reset / clearing.

    Returns the number of per-parameter state entries that were reset (entries that
    were still empty, e.g. before the first step, are not counted). Raises
    ``TypeError`` when no optimizer state is found and ``NotImplementedError`` for
    ZeRO-3 with the optimizer state on NVMe.
    """
    chain = unwrap_optimizer(optimizer)
    _check_supported(chain)
    under_deepspeed = any(_is_deepspeed(o) for o in chain)

    total = 0
    for opt in _reset_targets(chain):
        if in_place is None:
            mode = under_deepspeed or _is_deepspeed(opt) or _is_bitsandbytes(opt)
        else:
            mode = bool(in_place)
        total += _reset_one(opt, in_place=mode)
    return total


__all__ = ["record_fresh_state", "reset_optimizer_state", "unwrap_optimizer"]
