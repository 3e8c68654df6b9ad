"""Dataset strategies (``type: axolotl_maskthought.strategies.<name>``).

Each records the CoT span as a ``cot_mask`` column next to axolotl's usual
``input_ids`` / ``attention_mask`` / ``labels``.
"""
