"""One thin adapter per training framework, each on :mod:`axolotl_maskthought.engine`."""
