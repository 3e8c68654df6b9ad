"""Masked Thought and Stepwise Internalization for axolotl.

``import axolotl_maskthought`` stays cheap: the plugin class (and with it axolotl)
is imported only when asked for.
"""

__version__ = "0.1.0"
__all__ = ["MaskThoughtPlugin", "__version__"]


def __getattr__(name):
    if name == "MaskThoughtPlugin":
        from axolotl_maskthought.adapters.axolotl.plugin import MaskThoughtPlugin

        return MaskThoughtPlugin
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
