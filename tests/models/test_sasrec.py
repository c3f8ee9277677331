"""SASRec unit tests: no Ray."""

import pytest
import torch

from rayrec.models.config import ModelConfig
from rayrec.models.sasrec import PADDING_ID, SASRec, SequenceBatch

NUM_ITEMS = 40


def _model(**overrides) -> SASRec:
    torch.manual_seed(0)
    config = ModelConfig(**{"max_len": 60, "hidden_size": 16, "num_layers": 2, "num_heads": 2, "dropout": 0.1, **overrides})
    return SASRec(config, NUM_ITEMS).eval()


def test_forward_shapes():
    model = _model()
    item_ids = torch.tensor([[1, 2, 3, 0], [4, 5, 0, 0]])
    targets = torch.tensor([[2, 3, 7, 0], [5, 9, 0, 0]])

    logits, loss = model(SequenceBatch(item_ids, targets))
    assert logits.shape == (5, NUM_ITEMS + 1)  # one row per real target
    assert loss.ndim == 0
    assert torch.isfinite(loss)

    logits, loss = model(SequenceBatch(item_ids))
    assert logits.shape == (2, 4, NUM_ITEMS + 1)
    assert loss is None


@pytest.mark.parametrize("padding", [0, 5, 50])
def test_padding_does_not_change_scores(padding):
    model = _model()
    history = torch.tensor([[3, 9, 1, 22, 7]])
    reference = model.score_last(history)

    padded = torch.cat([history, torch.full((1, padding), PADDING_ID)], dim=1)
    torch.testing.assert_close(model.score_last(padded), reference, rtol=1e-5, atol=1e-5)


def test_batch_neighbours_do_not_change_scores():
    model = _model()
    alone = model.score_last(torch.tensor([[3, 9, 1]]))
    batched = model.score_last(torch.tensor([[3, 9, 1, 0, 0, 0], [5, 6, 7, 8, 9, 10]]))

    torch.testing.assert_close(batched[:1], alone, rtol=1e-5, atol=1e-5)


def test_padding_never_ranked_and_embedding_row_stays_zero():
    model = _model().train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    item_ids = torch.tensor([[1, 2, 3, 4, 0, 0], [5, 6, 0, 0, 0, 0]])
    for _ in range(3):
        _, loss = model(SequenceBatch(item_ids[:, :-1], item_ids[:, 1:]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    assert torch.count_nonzero(model.item_emb.weight[PADDING_ID]) == 0
    scores = model.eval().score_last(torch.tensor([[1, 2]]))
    assert scores[0, PADDING_ID] == float("-inf")
    assert torch.isfinite(scores[0, 1:]).all()


def test_padding_targets_do_not_enter_loss():
    model = _model()
    item_ids = torch.tensor([[1, 2, 3]])
    _, short = model(SequenceBatch(item_ids[:, :-1], item_ids[:, 1:]))
    padded = torch.tensor([[1, 2, 3, 0, 0]])
    _, long = model(SequenceBatch(padded[:, :-1], padded[:, 1:]))

    torch.testing.assert_close(long, short)


def test_causal_future_items_do_not_change_earlier_positions():
    model = _model()
    logits_a, _ = model(SequenceBatch(torch.tensor([[4, 5, 6, 7]])))
    logits_b, _ = model(SequenceBatch(torch.tensor([[4, 5, 30, 31]])))

    torch.testing.assert_close(logits_a[:, :2], logits_b[:, :2])
    assert not torch.allclose(logits_a[:, 3], logits_b[:, 3])


def test_too_long_and_empty_histories_rejected():
    model = _model(max_len=4)
    with pytest.raises(ValueError, match="exceeds max_len 4"):
        model.score_last(torch.ones((1, 5), dtype=torch.int64))
    with pytest.raises(ValueError, match="at least one known item"):
        model.score_last(torch.zeros((1, 3), dtype=torch.int64))


def test_model_config_validation():
    with pytest.raises(ValueError, match="hidden_size \\(30\\) must be divisible by num_heads \\(4\\)"):
        ModelConfig(hidden_size=30, num_heads=4)
    with pytest.raises(ValueError, match="dropout"):
        ModelConfig(dropout=1.0)
