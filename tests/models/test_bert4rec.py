"""BERT4Rec unit tests: masking, bidirectional attention and ranking at the mask; no Ray."""

import pytest
import torch

from rayrec.models.bert4rec import BERT4Rec
from rayrec.models.config import ModelConfig
from rayrec.models.factory import build_model
from rayrec.models.sasrec import SASRec
from rayrec.models.transformer import PADDING_ID, SequenceBatch

NUM_ITEMS = 30


def _model(**overrides) -> BERT4Rec:
    torch.manual_seed(0)
    config = ModelConfig(**{"architecture": "bert4rec", "max_len": 6, "hidden_size": 16, "num_layers": 2,
                            "num_heads": 2, "dropout": 0.0, **overrides})
    return build_model(config, NUM_ITEMS).eval()


def test_factory_builds_each_architecture():
    assert isinstance(_model(), BERT4Rec)
    assert isinstance(build_model(ModelConfig(architecture="sasrec", hidden_size=8, num_heads=1), 5), SASRec)
    with pytest.raises(ValueError, match="architecture \\('gru'\\) must be one of: sasrec, bert4rec"):
        ModelConfig(architecture="gru")


def test_training_batch_masks_only_real_items():
    model = _model(mask_prob=0.5)
    item_ids = torch.tensor([[1, 2, 3, 4, 5, 6], [7, 8, 0, 0, 0, 0]])
    torch.manual_seed(1)

    batch = model.training_batch(item_ids)

    masked = batch.item_ids == model.mask_id
    assert torch.equal(batch.target_ids[masked], item_ids[masked])
    assert not (batch.target_ids[~masked] != PADDING_ID).any()
    assert not masked[item_ids == PADDING_ID].any()
    assert masked.any(dim=1).all()  # every row trains on at least one item


def test_row_without_a_draw_masks_its_last_item():
    model = _model(mask_prob=1e-6)
    batch = model.training_batch(torch.tensor([[4, 5, 6, 0, 0, 0]]))

    assert batch.item_ids.tolist() == [[4, 5, model.mask_id, 0, 0, 0]]
    assert batch.target_ids.tolist() == [[0, 0, 6, 0, 0, 0]]


def test_mask_last_item_masks_every_row():
    model = _model(mask_prob=0.3, mask_last_item=True)
    item_ids = torch.tensor([[1, 2, 3, 4, 5, 6], [7, 8, 0, 0, 0, 0], [9, 0, 0, 0, 0, 0]])
    torch.manual_seed(3)

    batch = model.training_batch(item_ids)

    assert batch.item_ids[0, 5] == model.mask_id
    assert batch.item_ids[1, 1] == model.mask_id
    assert batch.item_ids[2, 0] == model.mask_id
    assert batch.target_ids[0, 5] == 6
    assert batch.target_ids[1, 1] == 8
    assert not (batch.item_ids == model.mask_id)[item_ids == PADDING_ID].any()


def test_attention_sees_later_items():
    model = _model()
    # Changing the item after the mask changes the score at the mask, unlike a causal model.
    a, _ = model(SequenceBatch(torch.tensor([[3, model.mask_id, 5]])))
    b, _ = model(SequenceBatch(torch.tensor([[3, model.mask_id, 9]])))

    assert not torch.allclose(a[0, 1], b[0, 1])


@pytest.mark.parametrize("padding", [0, 2])
def test_padding_does_not_change_scores(padding):
    model = _model()
    history = torch.tensor([[3, 9, 1]])
    padded = torch.cat([history, torch.full((1, padding), PADDING_ID)], dim=1)

    torch.testing.assert_close(model.score_last(padded), model.score_last(history), rtol=1e-5, atol=1e-5)


def test_full_history_drops_oldest_item_for_the_mask():
    model = _model()
    full = torch.tensor([[1, 2, 3, 4, 5, 6]])  # max_len items: the mask would not fit

    scores = model.score_last(full)

    torch.testing.assert_close(scores, model.score_last(torch.tensor([[2, 3, 4, 5, 6]])))
    mixed = model.score_last(torch.tensor([[1, 2, 3, 4, 5, 6], [7, 8, 0, 0, 0, 0]]))
    torch.testing.assert_close(mixed[1:], model.score_last(torch.tensor([[7, 8]])), rtol=1e-5, atol=1e-5)


def test_mask_id_is_never_ranked():
    model = _model()
    scores = model.score_last(torch.tensor([[1, 2]]))

    assert scores.shape == (1, NUM_ITEMS + 1)  # the mask id has no column
    assert scores[0, PADDING_ID] == float("-inf")


def test_training_reduces_loss_on_a_pattern():
    model = _model(dropout=0.0).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sequences = torch.tensor([[1, 2, 3, 4, 5, 6], [2, 3, 4, 5, 6, 7]] * 8)
    losses = []
    for _ in range(60):
        _, loss = model(model.training_batch(sequences))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())

    assert sum(losses[-10:]) / 10 < 0.5 * sum(losses[:10]) / 10
