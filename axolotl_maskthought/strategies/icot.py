"""``type: axolotl_maskthought.strategies.icot`` — lines ``question||cot #### answer``.

axolotl loads a ``.txt`` file as rows ``{"text": line}``. Layout (official
Stepwise Internalization, arXiv 2405.14838): the one string
``' {question} {eos} {cot} {eos} #### {answer} {eos}'`` tokenized in one call, so
a byte-level BPE gives the space before each EOS a token of its own; labels -100
up to and including the first EOS; the CoT is every token strictly between the two
EOS separators (see :func:`axolotl_maskthought.data.formats.tokenize_icot`).
"""

from __future__ import annotations

from axolotl_maskthought.data.formats import CoTExample, parse_icot_line, tokenize_icot
from axolotl_maskthought.strategies.base import CoTStrategy


def parse_text_row(row) -> CoTExample:
    text = row.get("text") if hasattr(row, "get") else None
    if not isinstance(text, str):
        raise ValueError("row has no `text` field (load the file as text: a .txt path)")
    return parse_icot_line(text)


class ICoTStrategy(CoTStrategy):
    def tokenize(self, example):
        return tokenize_icot(self.tokenizer, example, self.train_on_inputs)


def load(tokenizer, cfg, ds_cfg=None):
    return ICoTStrategy(tokenizer, cfg, ds_cfg, parse_text_row)
