"""The framework-neutral engine: per-step state and transforms for any HF Trainer."""

from axolotl_maskthought.engine.metrics import DeviceMetrics
from axolotl_maskthought.engine.mixin import STATE_FILE, MaskThoughtMixin

__all__ = ["DeviceMetrics", "MaskThoughtMixin", "STATE_FILE"]
