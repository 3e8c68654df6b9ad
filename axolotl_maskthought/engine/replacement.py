"""Which token ids a Masked Thought replacement must never be.

Masked Thought (arXiv 2403.02178) replaces response *inputs* with a random token,
an added ``<mask>`` or the pad token. If the replacement id is a token that lays
the example out (EOS, which is also the ICoT separator; BOS; a chat template's
turn markers or think tags), masking writes structure into the middle of the
reasoning: with a tokenizer that ships without a pad token, axolotl sets pad to
EOS, and ``replacement: pad`` then masks with EOS.
"""

from __future__ import annotations

# special-token roles that structure an example (pad and mask are what a replacement may be)
STRUCTURAL_ROLES = ("eos_token", "bos_token", "sep_token", "cls_token")


def structural_token_ids(
    tokenizer, extra_tokens: tuple[str, ...] = (), replacement_token: str | None = None
) -> dict[int, str]:
    """Token id -> what it is (``"eos_token '</s>'"``) for every token that lays an
    example out: the EOS/BOS/SEP/CLS special tokens, the additional special tokens
    (chat turn markers), and each of ``extra_tokens`` (think tags, ...) that is a
    single token of ``tokenizer``. ``replacement_token`` (an added ``<mask>``, which
    a tokenizer may list as special) is left out of the other special tokens, never
    out of the EOS/BOS/SEP/CLS roles. Empty for ``tokenizer`` None."""
    found: dict[int, str] = {}
    if tokenizer is None:
        return found
    for role in STRUCTURAL_ROLES:
        token = getattr(tokenizer, role, None)
        token_id = getattr(tokenizer, f"{role}_id", None)
        if token is not None and token_id is not None:
            found.setdefault(int(token_id), f"{role} {str(token)!r}")
    # the other special tokens (chat turn markers: `additional_special_tokens`, called
    # `extra_special_tokens` in transformers 5), but not what a replacement may be
    replaceable = {str(getattr(tokenizer, role, None)) for role in ("pad_token", "unk_token", "mask_token")}
    replaceable.add(str(replacement_token))
    for token in getattr(tokenizer, "all_special_tokens", None) or []:
        token_id = tokenizer.convert_tokens_to_ids(str(token))
        if str(token) not in replaceable and token_id is not None:
            found.setdefault(int(token_id), f"special token {str(token)!r}")
    for token in extra_tokens:
        ids = tokenizer(token, add_special_tokens=False)["input_ids"]
        if len(ids) == 1:
            found.setdefault(int(ids[0]), f"{token!r}")
    return found


def replacement_conflict(replacement: str, replacement_id: int | None, tokenizer, extra_tokens=()) -> str | None:
    """Why ``replacement_id`` (the id ``replacement`` resolves to) may not be used, or None.

    The text names ``masked_thought.replacement`` and what to use instead; callers
    raise it as ``ValueError`` (``random`` and a missing id are never refused here).
    """
    if replacement == "random" or replacement_id is None:
        return None
    token = tokenizer.convert_ids_to_tokens(int(replacement_id))
    what = structural_token_ids(tokenizer, tuple(extra_tokens), token).get(int(replacement_id))
    if what is None:
        return None
    if replacement == "pad":
        return (
            f"`masked_thought.replacement: pad`: the tokenizer's pad token (id {replacement_id}) is also its "
            f"{what}, which lays the examples out (the ICoT separator and end token when it is EOS); masking "
            "with it would write that token into the reasoning. Give the tokenizer a pad token of its own "
            '(axolotl: `special_tokens: {pad_token: "<pad>"}` with a token that is not EOS or BOS, which '
            "axolotl adds), or use `masked_thought.replacement: mask_token` or `random`"
        )
    return (
        f"`masked_thought.mask_token` (id {replacement_id}) is the tokenizer's {what}, which lays the examples "
        "out; masking with it would write that token into the reasoning. Name a new token (the default "
        "`<mask>` is added to the tokenizer), or use `masked_thought.replacement: random`"
    )
