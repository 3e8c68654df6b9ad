"""Tiny local models and tokenizers, built on the spot (tests, quickstart, benchmarks).

Nothing is downloaded: a byte-level BPE tokenizer is trained on the given texts
with ``tokenizers`` and a small Llama or GPT-2 is initialised from a config.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

SPECIAL_TOKENS = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}


def build_tokenizer(texts: Iterable[str], vocab_size: int = 512, add_bos: bool = True):
    """A byte-level BPE ``PreTrainedTokenizerFast`` trained on ``texts`` (lossless decoding)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token=SPECIAL_TOKENS["unk_token"]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(list(texts), trainer=trainer)
    if add_bos:
        bos = SPECIAL_TOKENS["bos_token"]
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tokenizer.token_to_id(bos))]
        )
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tokenizer, **SPECIAL_TOKENS)
    wrapped.padding_side = "right"
    return wrapped


def build_model(
    tokenizer,
    arch: str = "llama",
    hidden: int = 64,
    layers: int = 2,
    heads: int = 4,
    max_positions: int = 1024,
    seed: int = 0,
):
    """A randomly initialised causal LM sized for ``tokenizer``."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    ids = dict(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    if arch == "llama":
        config = LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=hidden,
            intermediate_size=hidden * 2,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=heads,
            max_position_embeddings=max_positions,
            tie_word_embeddings=False,
            **ids,
        )
        return LlamaForCausalLM(config)
    if arch == "gpt2":
        config = GPT2Config(
            vocab_size=len(tokenizer), n_embd=hidden, n_layer=layers, n_head=heads, n_positions=max_positions, **ids
        )
        return GPT2LMHeadModel(config)
    raise ValueError(f"unknown arch {arch!r}; expected llama or gpt2")


def build_tiny(
    directory: str | Path, texts: Iterable[str], vocab_size: int = 512, arch: str = "llama", **model_kwargs
) -> Path:
    """Save a tiny model and its tokenizer to ``directory`` (an axolotl ``base_model``)."""
    directory = Path(directory)
    tokenizer = build_tokenizer(texts, vocab_size=vocab_size, add_bos=(arch == "llama"))
    model = build_model(tokenizer, arch=arch, **model_kwargs)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "AXOLOTL_DO_NOT_TRACK": "1",
    "WANDB_MODE": "disabled",
    "TOKENIZERS_PARALLELISM": "false",
}
"""Environment for an axolotl run that never reaches a hub or a tracker."""


def cpu_config(base_model, datasets: list[dict], output_dir, **overrides) -> dict:
    """A small axolotl config that trains on a CPU (fp32, no worker processes).

    ``dataset_prepared_path`` sits beside ``output_dir`` so runs never write axolotl's
    default ``last_run_prepared`` into the working directory. ``overrides`` win; a
    ``None`` value removes the key. LoRA configs get axolotl's CUDA-only LoRA kernels
    switched off.
    """
    output_dir = Path(output_dir)
    config = {
        "base_model": str(base_model),
        "plugins": ["axolotl_maskthought.MaskThoughtPlugin"],
        "datasets": datasets,
        "dataset_prepared_path": str(output_dir.parent / f"prepared-{output_dir.name}"),
        "sequence_len": 512,
        "micro_batch_size": 4,
        "gradient_accumulation_steps": 1,
        "num_epochs": 1,
        "learning_rate": 0.001,
        "optimizer": "adamw_torch",
        "lr_scheduler": "constant",
        "bf16": False,
        "fp16": False,
        "tf32": False,
        "seed": 7,
        "output_dir": str(output_dir),
        "val_set_size": 0,
        "save_strategy": "no",
        "logging_steps": 1,
        "dataloader_num_workers": 0,
        "dataset_num_proc": 1,
    }
    if overrides.get("adapter") in ("lora", "qlora"):
        config.update(lora_mlp_kernel=False, lora_qkv_kernel=False, lora_o_kernel=False)
    config.update(overrides)
    return {key: value for key, value in config.items() if value is not None}
