"""Leave-one-out explanations on a hand-built model with known answers and on SASRec."""

import numpy as np
import pytest
import torch
from torch import nn

from rayrec.models.config import ModelConfig
from rayrec.models.explain import explain_items
from rayrec.models.sasrec import SASRec
from rayrec.models.scoring import pad_histories


class AdditiveModel(nn.Module):
    """Scores item r after a history as the sum of table[h, r] over the history items h.

    Dropping history item h therefore lowers r's score by exactly table[h, r].
    """

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.table = nn.Parameter(table)

    def score_last(self, item_ids: torch.Tensor) -> torch.Tensor:
        return self.table[item_ids].sum(dim=1)  # padding row 0 of the table is zero


def _additive(num_items: int = 6) -> AdditiveModel:
    table = torch.zeros(num_items + 1, num_items + 1)
    table[2, 5] = 4.0  # item 2 alone determines item 5's score
    table[3, 6] = 1.5
    table[4, 6] = 0.5
    table[1, 6] = -2.0
    return AdditiveModel(table)


def test_one_item_determines_score():
    reasons = explain_items(_additive(), np.array([1, 2, 3]), [5], max_len=10)

    assert len(reasons) == 1
    assert reasons[0][0].item_index == 2
    assert reasons[0][0].weight == pytest.approx(4.0)
    assert [reason.weight for reason in reasons[0][1:]] == pytest.approx([0.0, 0.0])


def test_weights_sorted_largest_first():
    reasons = explain_items(_additive(), np.array([1, 3, 4]), [6, 5], max_len=10)

    assert [reason.item_index for reason in reasons[0]] == [3, 4, 1]
    assert [reason.weight for reason in reasons[0]] == pytest.approx([1.5, 0.5, -2.0])
    assert [reason.weight for reason in reasons[1]] == pytest.approx([0.0, 0.0, 0.0])


def test_max_reasons_and_max_history_caps():
    history = np.array([3, 1, 4, 2])
    reasons = explain_items(_additive(), history, [6], max_len=10, max_history=2, max_reasons=1)

    # Only the two most recent positions (items 4 and 2) are rescored.
    assert [reason.item_index for reason in reasons[0]] == [4]
    assert reasons[0][0].weight == pytest.approx(0.5)


def test_short_history_has_no_reasons():
    assert explain_items(_additive(), np.array([3]), [6, 5], max_len=10) == [[], []]
    assert explain_items(_additive(), np.array([], dtype=np.int64), [6], max_len=10) == [[]]


def test_sasrec_weights_equal_rescoring():
    torch.manual_seed(0)
    model = SASRec(ModelConfig(max_len=8, hidden_size=16, num_layers=1, num_heads=2, dropout=0.0), num_items=20)
    model.eval()
    history = np.array([4, 9, 13, 2, 17])
    items = [7, 11]

    reasons = explain_items(model, history, items, max_len=8, max_reasons=5)

    full = model.score_last(pad_histories([history], 8))[0]
    for column, item in enumerate(items):
        assert len(reasons[column]) == len(history)
        for reason in reasons[column]:
            position = int(np.flatnonzero(history == reason.item_index)[0])
            without = model.score_last(pad_histories([np.delete(history, position)], 8))[0]
            assert reason.weight == pytest.approx(float(full[item] - without[item]), abs=1e-5)
