"""Autocast dtype selection and a bf16 training step, runnable without a GPU."""

import pytest
import torch

from rayrec.models.config import ModelConfig
from rayrec.models.factory import build_model
from rayrec.training.loop import autocast_dtype_for


def test_fp32_and_bf16_are_explicit():
    assert autocast_dtype_for("fp32", torch.device("cuda")) is None
    assert autocast_dtype_for("bf16", torch.device("cpu")) is torch.bfloat16


def test_auto_is_fp32_on_cpu():
    assert autocast_dtype_for("auto", torch.device("cpu")) is None


@pytest.mark.parametrize("supported, expected", [(True, torch.bfloat16), (False, None)])
def test_auto_on_cuda_follows_bf16_support(monkeypatch, supported, expected):
    # No GPU here: only the support query is replaced, the selection logic runs as on a GPU.
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: supported)
    assert autocast_dtype_for("auto", torch.device("cuda")) is expected


@pytest.mark.parametrize("architecture", ["sasrec", "bert4rec"])
def test_bf16_autocast_step_keeps_fp32_weights(architecture):
    torch.manual_seed(0)
    config = ModelConfig(architecture=architecture, max_len=8, hidden_size=16, num_layers=1, num_heads=2, dropout=0.0)
    model = build_model(config, num_items=30).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sequences = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8, 9], [4, 5, 6, 7, 8, 0, 0, 0, 0]])[:, : config.training_window]

    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, loss = model(model.training_batch(sequences))
    loss.backward()
    optimizer.step()

    assert loss.dtype == torch.float32  # losses compute logits in float32
    assert torch.isfinite(loss)
    assert all(parameter.dtype == torch.float32 for parameter in model.parameters())
    assert all(torch.isfinite(parameter.grad).all() for parameter in model.parameters() if parameter.grad is not None)
