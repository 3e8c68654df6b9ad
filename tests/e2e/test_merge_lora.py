"""`axolotl merge-lora` after Masked Thought with an added `<mask>` token.

The issue's case: tiny Llama, LoRA, ``masked_thought: {replacement: mask_token}``,
``lora_modules_to_save: [embed_tokens, lm_head]``, 4 steps, then
``axolotl merge-lora cfg.yml --lora-model-dir out``. The adapter folder's tokenizer had
801 tokens with `<mask>` at 800; the merged model had 801 embedding rows but
``out/merged``'s tokenizer had 800 tokens and mapped `<mask>` to the unknown id.

What every artifact must agree on: the tokenizer training used, the embedding rows and
``config.vocab_size``, in the adapter folder, its checkpoints and ``merged/``; and the
merged model must generate what base + adapter generates (prompts with `<mask>` too).
"""

from __future__ import annotations

from pathlib import Path

import axolotl_run
import pytest
import torch
from axolotl_run import gsm8k_dataset, run_cli, run_in_process, write_config

from axolotl_maskthought.config import PROMPT_TEMPLATES
from axolotl_maskthought.data.files import read_jsonl

MASK = "<mask>"
ROWS = 32
BASE_VOCAB = 800


@pytest.fixture(scope="module")
def merged(tmp_path_factory, shared_data: Path) -> dict:
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("merge")
    rows = read_jsonl(shared_data / "gsm8k" / "train.jsonl", limit=ROWS)
    texts = [row["question"] + "\n" + row["answer"] for row in rows] + list(PROMPT_TEMPLATES.values())
    base = axolotl_run.build_base_model(root / "model", texts, vocab_size=BASE_VOCAB)
    assert len(AutoTokenizer.from_pretrained(base)) == BASE_VOCAB
    output = root / "out"
    config = write_config(
        root / "cfg.yml",
        base_model=base,
        datasets=[gsm8k_dataset(axolotl_run.write_jsonl(root / "gsm8k.jsonl", rows))],
        output_dir=output,
        masked_thought={"ratio": 0.4, "warmup": 0, "replacement": "mask_token"},
        adapter="lora",
        lora_r=4,
        lora_alpha=8,
        lora_target_linear=True,
        lora_dropout=0.0,
        lora_modules_to_save=["embed_tokens", "lm_head"],
        max_steps=4,
        learning_rate=0.01,  # the <mask> rows and the LoRA weights move visibly in 4 steps
        save_strategy="steps",
        save_steps=2,
    )
    run_in_process(config)
    merge = run_cli(["merge-lora", config, "--lora-model-dir", output], cwd=root)
    assert merge.returncode == 0, merge.stdout[-3000:]
    return {"base": base, "adapter": output, "merged": output / "merged", "log": merge.stdout}


def _embedding_rows(directory: Path) -> dict[str, int]:
    """Rows of every embedding / head tensor saved in ``directory`` (adapter or full model)."""
    from safetensors import safe_open

    rows = {}
    for path in directory.glob("*.safetensors"):
        with safe_open(str(path), framework="pt") as handle:
            for key in handle.keys():
                if "embed_tokens" in key or "lm_head" in key:
                    if "lora_" not in key:
                        rows[key] = handle.get_slice(key).get_shape()[0]
    return rows


def test_every_artifact_has_training_tokenizer_and_rows(merged) -> None:
    from transformers import AutoConfig, AutoTokenizer

    trained = AutoTokenizer.from_pretrained(merged["adapter"])
    assert len(trained) == BASE_VOCAB + 1 and trained.convert_tokens_to_ids(MASK) == BASE_VOCAB
    folders = [merged["adapter"], *sorted(merged["adapter"].glob("checkpoint-*")), merged["merged"]]
    assert len(folders) == 4  # adapter, checkpoint-2, checkpoint-4, merged
    for folder in folders:
        tokenizer = AutoTokenizer.from_pretrained(folder)
        assert tokenizer.get_vocab() == trained.get_vocab(), folder
        assert tokenizer.convert_tokens_to_ids(MASK) != tokenizer.unk_token_id, folder
        rows = _embedding_rows(folder)
        assert rows and set(rows.values()) == {len(trained)}, (folder, rows)
    assert AutoConfig.from_pretrained(merged["merged"]).vocab_size == len(trained)


def test_merged_model_generates_as_base_plus_adapter(merged) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(merged["merged"])
    merged_model = AutoModelForCausalLM.from_pretrained(merged["merged"], dtype=torch.float32).eval()
    assert merged_model.get_input_embeddings().num_embeddings == len(tokenizer)

    base = AutoModelForCausalLM.from_pretrained(merged["base"], dtype=torch.float32)
    base.resize_token_embeddings(len(AutoTokenizer.from_pretrained(merged["adapter"])))
    reference = PeftModel.from_pretrained(base, str(merged["adapter"])).eval()

    mask_id = tokenizer.convert_tokens_to_ids(MASK)
    prompts = ["Question: Natalia sold clips", f"Question: {MASK} sold {MASK} clips to {MASK}"]
    for text in prompts:
        ids = torch.tensor([tokenizer(text)["input_ids"]])
        assert (mask_id in ids) == (MASK in text)
        with torch.no_grad():
            assert torch.allclose(merged_model(ids).logits, reference(input_ids=ids).logits, atol=1e-4), text
            kwargs = dict(max_new_tokens=16, do_sample=False, pad_token_id=tokenizer.pad_token_id)
            assert torch.equal(merged_model.generate(ids, **kwargs), reference.generate(input_ids=ids, **kwargs)), text
    # The <mask> input row trained (and was merged): it left its initial value, the mean of the base rows.
    base_rows = AutoModelForCausalLM.from_pretrained(merged["base"]).get_input_embeddings().weight
    merged_row = merged_model.get_input_embeddings().weight[mask_id]
    assert not torch.allclose(merged_row, base_rows.mean(dim=0), atol=1e-6)


@pytest.mark.parametrize("method", [None, "legacy", "memory_efficient"])
def test_merge_method_keeps_the_training_tokenizer(method) -> None:
    """axolotl < 0.21 calls no hook after its memory-efficient merge: the plugin picks the
    legacy merge when `merge_method` is unset and refuses an explicit memory_efficient.
    axolotl >= 0.21 calls ``post_lora_merge``, which writes the tokenizer: any method runs."""
    from axolotl.integrations.base import BasePlugin
    from axolotl.utils.dict import DictDefault

    from axolotl_maskthought import MaskThoughtPlugin

    raw = {"masked_thought": {"replacement": "mask_token"}, "adapter": "lora", "merge_lora": True}
    cfg = DictDefault({**raw, **({"merge_method": method} if method else {})})
    if hasattr(BasePlugin, "post_lora_merge"):
        MaskThoughtPlugin().register(cfg)
        assert cfg.get("merge_method") == method
    elif method == "memory_efficient":
        with pytest.raises(ValueError, match="`merge_method: memory_efficient`"):
            MaskThoughtPlugin().register(cfg)
    else:
        MaskThoughtPlugin().register(cfg)
        assert cfg["merge_method"] == "legacy"
    without_mask = DictDefault({**raw, "masked_thought": {"replacement": "random"}})
    MaskThoughtPlugin().register(without_mask)
    assert "merge_method" not in without_mask
