"""Dynamic int8 quantization of nn.Linear layers, and the bfloat16 copy for GPU replicas."""

import pytest
import torch
from torch import nn

from rayrec.models.bert4rec import BERT4Rec
from rayrec.models.config import ModelConfig
from rayrec.models.quantize import quantize_model
from rayrec.models.sasrec import SASRec
from rayrec.models.scoring import pad_histories


def _model(model_class=SASRec):
    torch.manual_seed(0)
    model = model_class(ModelConfig(max_len=10, hidden_size=32, num_layers=2, num_heads=2, dropout=0.0), num_items=50)
    return model.eval()


def test_int8_replaces_every_linear():
    model = _model()
    quantized = quantize_model(model, "int8")

    assert not any(type(module) is nn.Linear for module in quantized.modules())
    dynamic = [m for m in quantized.modules() if isinstance(m, torch.ao.nn.quantized.dynamic.Linear)]
    assert len(dynamic) == sum(type(m) is nn.Linear for m in model.modules())
    assert any(type(m) is nn.Linear for m in model.modules())  # the original is left as it was


def test_int8_scores_close_to_float():
    model = _model()
    quantized = quantize_model(model, "int8")
    item_ids = pad_histories([[1, 2, 3], [7, 8, 9, 10, 11]], 10)

    expected = model.score_last(item_ids)[:, 1:]
    actual = quantized.score_last(item_ids)[:, 1:]

    assert actual.shape == expected.shape
    assert torch.allclose(actual, expected, atol=0.1 * float(expected.abs().max()))
    assert not torch.equal(actual, expected)  # the weights really are int8


def test_none_returns_same_model():
    model = _model()
    assert quantize_model(model, "none") is model


def test_invalid_mode_rejected():
    with pytest.raises(ValueError, match="quantize 'fp4' is invalid; use one of none, int8, bf16"):
        quantize_model(_model(), "fp4")


def test_model_without_linear_rejected():
    with pytest.raises(ValueError, match="found no nn.Linear layer in Embedding"):
        quantize_model(nn.Embedding(4, 2), "int8")


def test_bf16_keeps_item_table_float32():
    model = _model()
    converted = quantize_model(model, "bf16")

    assert converted.item_emb.weight.dtype == torch.float32
    assert converted.pos_emb.weight.dtype == torch.bfloat16
    assert all(layer.weight.dtype == torch.bfloat16 for layer in converted.modules() if isinstance(layer, nn.Linear))
    assert all(parameter.dtype == torch.float32 for parameter in model.parameters())  # the original is left as it was


@pytest.mark.parametrize("model_class", [SASRec, BERT4Rec])
def test_bf16_scores_close_to_float(model_class):
    model = _model(model_class)
    converted = quantize_model(model, "bf16")
    item_ids = pad_histories([[1, 2, 3], [7, 8, 9, 10, 11]], 10)

    expected = model.score_last(item_ids)[:, 1:]
    actual = converted.score_last(item_ids)[:, 1:]

    # The catalog scoring stays float32, so the logits come back float32 with no bfloat16 ties.
    assert actual.dtype == torch.float32
    assert torch.allclose(actual, expected, atol=0.02 * float(expected.abs().max()))
    assert not torch.equal(actual, expected)  # the layers really ran in bfloat16
