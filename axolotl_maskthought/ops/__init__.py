"""Pure tensor maths of both techniques: no trainer, no framework, only torch.

``masking`` (Masked Thought), ``schedule`` and ``removal`` (Stepwise
Internalization), ``optimizer_reset`` (the reset at each removal step) and
``embeddings`` (the ``<mask>`` rows).
"""
