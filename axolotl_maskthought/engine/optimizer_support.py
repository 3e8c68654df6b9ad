"""Which optimizers the CoT-removal optimizer reset is known to reset correctly.

Every ``optimizer:`` value that axolotl offers (transformers' ``OptimizerNames`` and
axolotl's ``CustomSupportedOptimizers``) is in exactly one table below.
``tests/test_optimizer_reset.py`` builds each value through axolotl's own trainer
builder and checks, for every one in :data:`RESET_VERIFIED`, that after
:func:`~axolotl_maskthought.engine.optimizer_reset.reset_optimizer_state` the optimizer
holds exactly what a freshly built one holds and that its next step equals the
fresh optimizer's step; it fails when axolotl offers a value that no table lists.

* :data:`RESET_VERIFIED` - checked on CPU (axolotl 0.19 and 0.21).
* :data:`RESET_REFUSED` - the reset cannot be made right: refused by the config check.
* :data:`RESET_UNVERIFIED` - cannot be built or stepped on a CPU machine (or by axolotl
  at all); the config check warns, the reason says why.

DeepSpeed builds its own optimizer when its config has an ``optimizer`` section;
:data:`DEEPSPEED_VERIFIED` lists the ``type`` values checked with real engines.
"""

from __future__ import annotations

RESET_VERIFIED = frozenset(
    {
        # torch.optim and transformers
        "adamw_torch",
        "adamw_torch_fused",
        "adafactor",
        "sgd",
        "adagrad",
        "rmsprop",
        # torchao
        "adamw_torch_4bit",
        "adamw_torch_8bit",
        "ao_adamw_fp8",
        # bitsandbytes
        "adamw_bnb_8bit",
        "adamw_8bit",
        "ademamix",
        "ademamix_8bit",
        "lion_8bit",
        "lion_32bit",
        "paged_adamw_32bit",
        "paged_adamw_8bit",
        "paged_ademamix_32bit",
        "paged_ademamix_8bit",
        "paged_lion_32bit",
        "paged_lion_8bit",
        "rmsprop_bnb",
        "rmsprop_bnb_8bit",
        "rmsprop_bnb_32bit",
        # schedule-free
        "schedule_free_adamw",
        "schedule_free_radam",
        "schedule_free_sgd",
        # GaLore / APOLLO (one optimizer per parameter in the *_layerwise variants)
        "galore_adamw",
        "galore_adafactor",
        "galore_adamw_layerwise",
        "apollo_adamw",
        "apollo_adamw_layerwise",
        # others offered through transformers
        "lomo",
        "grokadamw",
        # axolotl's own and contributed optimizers
        "optimi_adamw",
        "adopt_adamw",
        "adamc",
        "came_pytorch",
        "muon",
        "muon_8bit",
        "dion",
        "sinkgd",
        "scao",
    }
)

RESET_REFUSED = {
    "adalomo": "AdaLomo keeps its second moments and step count in attributes of its own, "
    "outside `optimizer.state`, where a reset cannot reach them",
}

RESET_UNVERIFIED = {
    "adamw_torch_xla": "it needs torch_xla (TPU)",
    "adamw_torch_npu_fused": "it needs torch_npu (Ascend NPU)",
    "adamw_anyprecision": "it needs torchdistx, which is not on PyPI",
    "galore_adamw_8bit": "its 8-bit GaLore step needs CUDA",
    "galore_adamw_8bit_layerwise": "its 8-bit GaLore step needs CUDA",
    "galore_adafactor_layerwise": "transformers cannot build it with a learning rate "
    "(`Cannot combine manual lr and relative_step=True`)",
    "q_galore_adamw8bit": "its step needs CUDA",
    "stable_adamw": "optimi's StableAdamW does not step on CPU (triton finds no driver)",
    "flash_adamw": "flashoptim needs a CUDA device",
    "flash_adam": "flashoptim needs a CUDA device",
    "flash_sgd": "flashoptim needs a CUDA device",
    "flash_sgdw": "flashoptim needs a CUDA device",
    "flash_lion": "flashoptim needs a CUDA device",
    "polora": "the polora package is not on PyPI",
    "ao_adamw_4bit": "axolotl itself cannot build it (`Unhandled optimizer`)",
    "ao_adamw_8bit": "axolotl itself cannot build it (`Unhandled optimizer`)",
}

# DeepSpeed `optimizer.type` values (lower case) checked with real engines: FusedAdam,
# and DeepSpeedCPUAdam when the optimizer state is offloaded to the CPU.
DEEPSPEED_VERIFIED = frozenset({"adam", "adamw"})


def reset_support(optimizer: str) -> tuple[str, str | None]:
    """``("verified" | "refused" | "unverified" | "unknown", reason)`` for an ``optimizer:`` value."""
    if optimizer in RESET_VERIFIED:
        return "verified", None
    if optimizer in RESET_REFUSED:
        return "refused", RESET_REFUSED[optimizer]
    if optimizer in RESET_UNVERIFIED:
        return "unverified", RESET_UNVERIFIED[optimizer]
    return "unknown", None
