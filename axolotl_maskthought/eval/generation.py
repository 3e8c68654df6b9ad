"""Greedy, batched generation with a transformers causal LM, each row stopping on its own EOS count.

Left padding with position ids that count real tokens only, optionally shifted after the
CoT's place for models trained with ``cot_removal.keep_position`` (arXiv 2405.14838).
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Sequence


def _forward_accepts(model, name: str) -> bool:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return name in inspect.signature(base.forward).parameters


def stop_id_set(eos_token_id: int | Sequence[int]) -> set[int]:
    """The stop ids of ``eos_token_id``: one id, or several (chat: EOS and end-of-turn
    tokens), any of which counts as an EOS."""
    ids = {int(eos_token_id)} if isinstance(eos_token_id, int) else {int(token) for token in eos_token_id}
    if not ids:
        raise ValueError("no stop token id: generation could never stop")
    return ids


def _greedy_batch(
    model,
    prompts: Sequence[Sequence[int]],
    eos_token_id: int | Sequence[int],
    pad_token_id: int,
    stop_after_eos: int,
    max_new_tokens: int,
    position_shifts: Sequence[tuple[int, int]] | None = None,
) -> list[tuple[list[int], bool]]:
    """One left-padded batch: (generated ids up to and including the stopping EOS, stopped).
    ``eos_token_id``: one id or several (:func:`stop_id_set`).
    ``position_shifts[row] = (start, shift)``: prompt tokens from index ``start`` on, and
    every generated token, get position ids ``shift`` higher (see :func:`kept_position_shifts`)."""
    import torch

    stop_ids = stop_id_set(eos_token_id)
    device = next(model.parameters()).device
    batch, width = len(prompts), max(len(prompt) for prompt in prompts)
    input_ids = torch.full((batch, width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((batch, width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        input_ids[row, width - len(prompt) :] = torch.tensor(list(prompt), dtype=torch.long)
        attention_mask[row, width - len(prompt) :] = 1
    input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
    # Positions count real tokens only, so a left-padded row sees the positions it would alone.
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)  # (B, T)
    for row, (start, shift) in enumerate(position_shifts or []):
        if shift:
            position_ids[row, width - len(prompts[row]) + start :] += shift
    extra = {"logits_to_keep": 1} if _forward_accepts(model, "logits_to_keep") else {}

    generated: list[list[int]] = [[] for _ in range(batch)]
    eos_seen = [0] * batch
    done = [False] * batch
    past = None
    step_ids, step_positions = input_ids, position_ids
    for _ in range(max_new_tokens):
        out = model(
            input_ids=step_ids,
            attention_mask=attention_mask,
            position_ids=step_positions,
            past_key_values=past,
            use_cache=True,
            **extra,
        )
        past = out.past_key_values
        next_tokens = out.logits[:, -1, :].argmax(dim=-1)  # (B,)
        for row, token in enumerate(next_tokens.tolist()):
            if done[row]:
                continue
            generated[row].append(token)
            if token in stop_ids:
                eos_seen[row] += 1
                done[row] = eos_seen[row] >= stop_after_eos
        if all(done):
            break
        # Finished rows keep decoding (their tokens are dropped) so the cache stays rectangular.
        step_ids = next_tokens[:, None]
        step_positions = step_positions[:, -1:] + 1
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones((batch, 1))], dim=1)
    return list(zip(generated, done))


def generate_greedy(
    model,
    prompts: Sequence[Sequence[int]],
    eos_token_id: int | Sequence[int],
    pad_token_id: int | None = None,
    stop_after_eos: int = 1,
    batch_size: int = 8,
    max_new_tokens: int = 512,
    progress: bool = True,
    position_shifts: Sequence[tuple[int, int]] | None = None,
) -> list[tuple[list[int], bool]]:
    """Greedy continuations of ``prompts`` with a transformers causal LM, in input order.

    Batches are formed from prompts of similar length (fewer pads); each row stops
    at its ``stop_after_eos``-th generated EOS or after ``max_new_tokens``.
    ``eos_token_id`` may be several ids (chat: EOS and end-of-turn tokens), each an EOS
    here; without ``pad_token_id`` one of them pads (masked out). Returns
    (generated ids including the final EOS, whether the row stopped on EOS). The
    model is put in eval mode and its training mode restored afterwards.
    """
    import torch
    from tqdm.auto import tqdm

    if batch_size < 1 or max_new_tokens < 1:
        raise ValueError("batch size and max new tokens must be at least 1")
    pad = pad_token_id if pad_token_id is not None else min(stop_id_set(eos_token_id))
    order = sorted(range(len(prompts)), key=lambda index: -len(prompts[index]))
    results: list = [None] * len(prompts)
    was_training = model.training
    model.eval()
    bar = tqdm(total=len(prompts), unit="ex", desc="generating", disable=not progress, file=sys.stderr)
    try:
        with torch.no_grad():  # not inference_mode: a training model's caches must stay usable by autograd
            for start in range(0, len(order), batch_size):
                indices = order[start : start + batch_size]
                rows = _greedy_batch(
                    model,
                    [prompts[i] for i in indices],
                    eos_token_id,
                    pad,
                    stop_after_eos,
                    max_new_tokens,
                    [position_shifts[i] for i in indices] if position_shifts else None,
                )
                for index, row in zip(indices, rows):
                    results[index] = row
                bar.update(len(indices))
    finally:
        bar.close()
        model.train(was_training)
    return results
