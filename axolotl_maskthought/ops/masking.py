"""Masked Thought: corrupt the inputs of response tokens, keep their labels.

Pure tensor functions (no axolotl, no trainer): the trainer decides *which*
positions are eligible and *which* generator to use; these functions do the maths.
Reference: Chen et al., "Masked Thought", arXiv 2403.02178.
"""

from __future__ import annotations

import hashlib

import torch

REPLACEMENTS = ("random", "mask_token", "pad")


def mask_rate(optimizer_step: int, max_steps: int, ratio: float, warmup: float) -> float:
    """Masking probability at an optimizer step.

    The official warm-up: ``ratio * step / (warmup * max_steps + 1)``, capped at
    ``ratio``; linear from 0 over the first ``warmup`` fraction of the run.
    ``warmup == 0`` means the full ratio from the first step.
    """
    if warmup <= 0:
        return float(ratio)
    return float(min(ratio, ratio * optimizer_step / (warmup * max_steps + 1)))


def step_seed(seed: int, rank: int, optimizer_step: int, micro_step: int, stream: str = "mask") -> int:
    """A 63-bit seed unique to (run seed, data-parallel rank, step, micro-batch, stream).

    Masks are then reproducible across runs and resumes, and differ across ranks;
    ``stream`` keeps independent draws (masks, removal offsets) apart.
    """
    key = f"{stream}:{seed}:{rank}:{optimizer_step}:{micro_step}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") >> 1


def make_generator(seed: int, device: torch.device | str) -> torch.Generator:
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    return generator


def select_positions(eligible: torch.Tensor, rate: float, generator: torch.Generator) -> torch.Tensor:
    """Each eligible position independently with probability ``rate``. (B, T) bool."""
    draws = torch.rand(eligible.shape, generator=generator, device=eligible.device)
    return eligible & (draws < rate)


def replace_inputs(
    input_ids: torch.Tensor,
    positions: torch.Tensor,
    replacement: str,
    *,
    vocab_size: int | None = None,
    replacement_id: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Return a copy of ``input_ids`` (B, T) with ``positions`` replaced.

    ``random`` draws uniformly from ``[0, vocab_size)``; ``mask_token`` and ``pad``
    write ``replacement_id``.
    """
    if replacement == "random":
        if vocab_size is None or vocab_size < 1:
            raise ValueError("`vocab_size` is required for replacement `random`")
        values = torch.randint(
            0,
            vocab_size,
            input_ids.shape,
            generator=generator,
            device=input_ids.device,
            dtype=input_ids.dtype,
        )
    elif replacement in ("mask_token", "pad"):
        if replacement_id is None:
            raise ValueError(f"`replacement_id` is required for replacement `{replacement}`")
        values = torch.full_like(input_ids, replacement_id)
    else:
        raise ValueError(f"unknown replacement `{replacement}`; expected one of {REPLACEMENTS}")
    return torch.where(positions, values, input_ids)


def mask_thought(
    input_ids: torch.Tensor,
    eligible: torch.Tensor,
    rate: float,
    replacement: str,
    generator: torch.Generator,
    *,
    vocab_size: int | None = None,
    replacement_id: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Select and replace in one call. Returns (masked input_ids, selected positions)."""
    positions = select_positions(eligible, rate, generator)
    masked = replace_inputs(
        input_ids,
        positions,
        replacement,
        vocab_size=vocab_size,
        replacement_id=replacement_id,
        generator=generator,
    )
    return masked, positions
