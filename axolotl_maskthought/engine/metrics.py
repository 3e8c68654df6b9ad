"""Per-step metrics kept on the device until the trainer logs.

Converting a CUDA scalar to a Python number (``.item()``) waits for the GPU. The
engine records one value per micro-batch, so it keeps them as tensors and turns
all of them into numbers in one transfer when the trainer logs (every
``logging_steps``), instead of once per metric per micro-batch.
"""

from __future__ import annotations

from collections import defaultdict

import torch

REDUCTIONS = ("mean", "max")


class DeviceMetrics:
    """Named scalar series, each reduced by ``mean`` or ``max`` when popped."""

    def __init__(self) -> None:
        self._values: dict[str, list[torch.Tensor | float]] = defaultdict(list)
        self._reduction: dict[str, str] = {}

    def add(self, name: str, value: torch.Tensor | float, reduction: str = "mean") -> None:
        """Record ``value`` (a 0-d tensor on any device, or a number) under ``name``.

        Raises ValueError for a reduction other than ``mean`` or ``max``.
        """
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
        self._values[name].append(value.detach() if torch.is_tensor(value) else value)
        self._reduction[name] = reduction

    def pop(self, ndigits: int = 5) -> dict[str, float]:
        """Reduce every series, clear them, and return plain floats (one host transfer)."""
        numbers: dict[str, float] = {}
        on_device: dict[str, torch.Tensor] = {}
        for name, values in self._values.items():
            tensors = [v for v in values if torch.is_tensor(v)]
            if not tensors:
                numbers[name] = max(values) if self._reduction[name] == "max" else sum(values) / len(values)
                continue
            series = torch.stack([torch.as_tensor(v, device=tensors[0].device).float() for v in values])
            on_device[name] = series.max() if self._reduction[name] == "max" else series.mean()
        if on_device:
            devices = {value.device for value in on_device.values()}
            stacked = torch.stack([value.to(next(iter(devices))) for value in on_device.values()])
            numbers.update(zip(on_device, stacked.tolist()))
        self._values.clear()
        self._reduction.clear()
        return {name: round(float(value), ndigits) for name, value in numbers.items()}
