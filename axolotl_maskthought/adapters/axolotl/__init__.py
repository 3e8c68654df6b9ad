"""The axolotl adapter: plugin, trainer subclass and config checks."""
