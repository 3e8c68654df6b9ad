"""The vLLM generation backend (optional ``vllm`` extra), with the same contract as the transformers one."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from axolotl_maskthought.eval.loading import ADAPTER_FILE, _adapter_base, _check_model_dir, _tokenizer_source

VLLM_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)  # the max_lora_rank values vLLM accepts


def _import_vllm():
    try:
        import vllm
    except ImportError:
        raise ValueError("--backend vllm needs the `vllm` package, which is not installed (pip install vllm)") from None
    return vllm


def load_vllm(
    model_path: str | Path, base_model: str | None = None, tokenizer_path: str | None = None, dtype: str = "auto"
):
    """(vllm.LLM, transformers tokenizer, LoRARequest or None) for ``model_path``."""
    vllm = _import_vllm()
    directory, kind = _check_model_dir(model_path)
    from transformers import AutoTokenizer

    base = _adapter_base(directory, base_model) if kind == "adapter" else None
    tokenizer_source = tokenizer_path or _tokenizer_source(directory, base)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_source)
    if kind == "adapter":
        from vllm.lora.request import LoRARequest

        rank = int(json.loads((directory / ADAPTER_FILE).read_text(encoding="utf-8")).get("r", 16))
        max_rank = min((r for r in VLLM_LORA_RANKS if r >= rank), default=rank)
        llm = vllm.LLM(model=base, tokenizer=tokenizer_source, dtype=dtype, enable_lora=True, max_lora_rank=max_rank)
        return llm, tokenizer, LoRARequest("adapter", 1, str(directory))
    return vllm.LLM(model=str(directory), tokenizer=tokenizer_source, dtype=dtype), tokenizer, None


def generate_vllm(
    llm,
    prompts: Sequence[Sequence[int]],
    eos_token_id: int | Sequence[int],
    stop_after_eos: int = 1,
    max_new_tokens: int = 512,
    lora_request=None,
    progress: bool = True,
) -> list[tuple[list[int], bool]]:
    """Greedy continuations with vLLM, same contract as :func:`generate_greedy`
    (``eos_token_id``: one id or several, each an EOS).

    vLLM stops a request at a token, not at its n-th occurrence, so each round
    generates up to the next EOS and feeds the unfinished rows back (greedy: the
    same tokens as one long run).
    """
    from axolotl_maskthought.eval.generation import stop_id_set

    vllm = _import_vllm()
    stop_ids = stop_id_set(eos_token_id)
    first_stop = eos_token_id if isinstance(eos_token_id, int) else next(iter(eos_token_id))
    generated: list[list[int]] = [[] for _ in prompts]
    done = [False] * len(prompts)
    pending = list(range(len(prompts)))
    for _ in range(stop_after_eos):
        pending = [i for i in pending if len(generated[i]) < max_new_tokens]
        if not pending:
            break
        requests = [{"prompt_token_ids": list(prompts[i]) + generated[i]} for i in pending]
        # Only the given stop ids end a segment (as in the transformers backend), not the
        # model's other end-of-turn ids.
        params = [
            vllm.SamplingParams(
                temperature=0.0,
                max_tokens=max_new_tokens - len(generated[i]),
                stop_token_ids=sorted(stop_ids),
                ignore_eos=True,
                detokenize=False,
            )
            for i in pending
        ]
        outputs = llm.generate(requests, params, lora_request=lora_request, use_tqdm=progress)
        still_pending = []
        for index, output in zip(pending, outputs):
            completion = output.outputs[0]
            tokens = list(completion.token_ids)
            stopped = completion.finish_reason == "stop"
            if stopped and (not tokens or tokens[-1] not in stop_ids):
                reason = getattr(completion, "stop_reason", None)  # the stop id that ended it
                tokens.append(reason if reason in stop_ids else first_stop)
            generated[index].extend(tokens)
            if stopped and sum(token in stop_ids for token in generated[index]) >= stop_after_eos:
                done[index] = True
            elif stopped:
                still_pending.append(index)
        pending = still_pending
    return list(zip(generated, done))


def _is_vllm(model) -> bool:
    return type(model).__module__.split(".")[0] == "vllm"
