"""The framework-neutral engine: per-step state and transforms for any HF Trainer."""

from .metrics import DeviceMetrics
from .mixin import STATE_FILE, MaskThoughtMixin, show_count

__all__ = ["DeviceMetrics", "MaskThoughtMixin", "STATE_FILE", "show_count"]
