"""The `<mask>` rows' maths (ops.embeddings.set_rows_to_mean) and the model-level write
(engine.embeddings.init_rows_to_mean) without DeepSpeed; ZeRO-3 is in
tests/e2e/test_zero3_embeddings.py."""

from __future__ import annotations

import pytest
import torch

from axolotl_maskthought.engine.embeddings import embedding_weights, init_rows_to_mean
from axolotl_maskthought.ops.embeddings import set_rows_to_mean


def test_rows_set_to_the_mean_of_the_existing_rows_only():
    torch.manual_seed(0)
    weight = torch.randn(10, 4)
    before = weight.clone()
    set_rows_to_mean(weight, [8, 9], existing_rows=8)
    expected = before[:8].mean(dim=0)
    assert torch.equal(weight[8], expected) and torch.equal(weight[9], expected)
    assert torch.equal(weight[:8], before[:8])


def test_mean_is_taken_in_float32_and_written_in_the_weight_dtype():
    weight = torch.tensor([[1.0, 2.0], [2.0, 2.0], [4.0, 5.0], [0.0, 0.0]], dtype=torch.bfloat16)
    set_rows_to_mean(weight, [3], existing_rows=3)
    assert weight.dtype == torch.bfloat16
    assert weight[3].tolist() == [pytest.approx(7 / 3, rel=1e-2), 3.0]


@pytest.mark.parametrize(
    "weight, new_ids, existing_rows",
    [
        (torch.empty(0), [96], 96),  # a ZeRO-3 partitioned parameter's placeholder
        (torch.zeros(48, 4), [96], 96),  # a shard of the rows
        (torch.zeros(97, 4), [97], 96),  # the new id is past the matrix
        (torch.zeros(97, 4), [50], 96),  # the "new" id is an existing row
    ],
)
def test_a_matrix_without_the_rows_named_is_refused(weight, new_ids, existing_rows):
    with pytest.raises(ValueError, match="partitioned \\(ZeRO-3\\) parameter must be gathered first"):
        set_rows_to_mean(weight, new_ids, existing_rows)


def _tiny(tied: bool):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=33, hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=2, tie_word_embeddings=tied,
    )  # fmt: skip
    return LlamaForCausalLM(config)


@pytest.mark.parametrize("tied", [False, True])
def test_input_and_output_rows_both_set(tied):
    model = _tiny(tied)
    weights = embedding_weights(model)
    assert len(weights) == (1 if tied else 2)
    before = [weight.detach().clone() for weight in weights]
    init_rows_to_mean(model, [32], existing_rows=32)
    for weight, old in zip(weights, before):
        assert torch.equal(weight[32], old[:32].mean(dim=0))
    assert torch.equal(model.get_output_embeddings().weight[32], model.get_output_embeddings().weight[:32].mean(dim=0))
