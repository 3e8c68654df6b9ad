"""Plugin for ``test_promises``: in an ``axolotl inference`` subprocess, saves the first
forward of the loaded model (the prompt's prefill: its ``input_ids`` and ``logits``) with
``torch.save`` to the file named by ``$PROMISE_CAPTURE``, so the test can check which
tokens the prompt became and which weights answered."""

from __future__ import annotations

import os

from axolotl.integrations.base import BasePlugin

CAPTURE_ENV = "PROMISE_CAPTURE"


class FirstForwardCapture(BasePlugin):
    def post_model_load(self, cfg, model):
        target = os.environ.get(CAPTURE_ENV)
        if not target:
            return
        # generate() on a PeftModel runs the wrapped causal LM's forward, not the wrapper's
        causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model

        def save_first(module, args, kwargs, output):
            import torch

            if os.path.exists(target):
                return
            input_ids = kwargs.get("input_ids", args[0] if args else None)
            torch.save(
                {"input_ids": input_ids.detach().cpu(), "logits": output.logits.detach().float().cpu()},
                target,
            )

        causal_lm.register_forward_hook(save_first, with_kwargs=True)
