"""Loss functions: exact values on hand-made cases, sampling rules and memory shape; no Ray."""

import math

import pytest
import torch
import torch.nn.functional as F

from rayrec.models.config import ModelConfig
from rayrec.models.factory import build_model
from rayrec.models.losses import (bce_loss, catalog_loss, full_softmax_loss, in_batch_softmax_loss,
                                  uniform_sampled_softmax_loss)


def _catalog(num_items: int = 6, width: int = 4, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    catalog = torch.randn(num_items + 1, width, generator=generator)
    catalog[0] = 0.0
    return catalog


def test_full_softmax_ignores_padding_column():
    catalog = _catalog()
    hidden = torch.randn(3, 4)
    targets = torch.tensor([1, 4, 6])

    logits = hidden @ catalog[1:].T
    expected = F.cross_entropy(logits, targets - 1)  # softmax over items 1..N only
    torch.testing.assert_close(full_softmax_loss(hidden, targets, catalog), expected)


def test_uniform_sampled_softmax_estimates_full_softmax():
    torch.manual_seed(0)
    catalog = _catalog(num_items=50)
    hidden = torch.randn(8, 4)
    targets = torch.randint(1, 51, (8,))

    sampled = uniform_sampled_softmax_loss(hidden, targets, catalog, num_negatives=5000)
    full = full_softmax_loss(hidden, targets, catalog)

    # Each item is drawn about 100 times and each draw is lowered by log(100), so the
    # sampled denominator estimates the full one.
    assert sampled.item() == pytest.approx(full.item(), abs=0.1)


def test_uniform_sampled_softmax_masks_accidental_hits():
    catalog = _catalog(num_items=1)
    hidden = torch.randn(2, 4)
    targets = torch.tensor([1, 1])

    # The only item is the target, so every negative is a hit and the loss is zero.
    loss = uniform_sampled_softmax_loss(hidden, targets, catalog, num_negatives=3)
    assert loss.item() == pytest.approx(0.0, abs=1e-6)


def test_in_batch_softmax_applies_log_q_correction():
    catalog = _catalog()
    hidden = torch.randn(3, 4)
    targets = torch.tensor([2, 2, 5])

    candidates = torch.tensor([2, 5])
    log_q = torch.log(torch.tensor([2 / 3, 1 / 3]))
    logits = hidden @ catalog[candidates].T - log_q
    expected = F.cross_entropy(logits, torch.tensor([0, 0, 1]))
    torch.testing.assert_close(in_batch_softmax_loss(hidden, targets, catalog), expected)


def test_bce_negatives_never_equal_targets():
    torch.manual_seed(0)
    catalog = _catalog(num_items=3)
    hidden = torch.zeros(2000, 4)
    targets = torch.randint(1, 4, (2000,))

    # Zero hidden states score every item 0, so each term is log(2) unless a negative were missing.
    loss = bce_loss(hidden, targets, catalog)
    assert loss.item() == pytest.approx(2 * math.log(2), abs=1e-6)


@pytest.mark.parametrize("loss", ["cross_entropy", "sampled_softmax", "bce"])
@pytest.mark.parametrize("negatives", ["uniform", "in_batch"])
def test_every_loss_trains_a_model(loss, negatives):
    torch.manual_seed(0)
    config = ModelConfig(max_len=6, hidden_size=16, num_layers=1, num_heads=2, dropout=0.0, loss=loss,
                         negatives=negatives, num_negatives=8)
    model = build_model(config, num_items=20).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sequences = torch.tensor([[1, 2, 3, 4, 5, 6, 7], [3, 4, 5, 6, 7, 8, 9]] * 8)
    first = last = None
    for step in range(50):
        logits, value = model(model.training_batch(sequences))
        optimizer.zero_grad()
        value.backward()
        optimizer.step()
        first = value.item() if step == 0 else first
        last = value.item()

    assert last < first
    assert (logits is None) == (loss != "cross_entropy")  # sampled losses never build catalog logits


def test_sampled_softmax_memory_does_not_grow_with_catalog():
    hidden = torch.randn(64, 8, requires_grad=True)
    targets = torch.randint(1, 1000, (64,))
    config = ModelConfig(hidden_size=8, num_heads=1, loss="sampled_softmax", num_negatives=16)
    small = torch.randn(1001, 8)
    large = torch.randn(200_001, 8)

    # The graph keeps (P, 1 + S) logits whatever N is: compare the saved tensor sizes.
    sizes = []
    for catalog in (small, large):
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
            catalog_loss(config, hidden, targets, catalog, catalog.shape[0] - 1)
        sizes.append(max(saved))
    assert sizes[0] == sizes[1]
