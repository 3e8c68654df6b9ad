"""``type: axolotl_maskthought.strategies.gsm8k`` — question/answer rows, answer ends in ``#### N``.

Layout: the prompt template (``cot_format.prompt_template``, Alpaca by default),
then the solution text before ``####`` (the CoT), then ``#### N`` and EOS. Loss on
everything after the prompt. Field names come from ``cot_format``.
"""

from __future__ import annotations

from functools import partial

from axolotl_maskthought.data.formats import parse_gsm8k_row, tokenize_gsm8k
from axolotl_maskthought.strategies.base import CoTStrategy, format_options


class GSM8KStrategy(CoTStrategy):
    def tokenize(self, example):
        return tokenize_gsm8k(self.tokenizer, example, self.options.template(), self.train_on_inputs)


def load(tokenizer, cfg, ds_cfg=None):
    options = format_options(cfg)
    parse = partial(parse_gsm8k_row, question_field=options.question_field, answer_field=options.answer_field)
    return GSM8KStrategy(tokenizer, cfg, ds_cfg, parse)
