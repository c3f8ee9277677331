import numpy as np
import pytest
import torch

from rayrec.models.scoring import mask_items, pad_histories, top_k


def test_pad_histories_keeps_most_recent_items():
    padded = pad_histories([np.array([1, 2, 3, 4, 5]), np.array([7])], max_len=3)

    assert padded.tolist() == [[3, 4, 5], [7, 0, 0]]
    assert padded.dtype == torch.int64


def test_pad_histories_rejects_empty_batch():
    with pytest.raises(ValueError, match="at least one history"):
        pad_histories([], max_len=3)


def test_mask_items_excludes_rows_independently():
    logits = torch.arange(12, dtype=torch.float32).reshape(2, 6)
    mask_items(logits, [np.array([5, 4]), np.array([], dtype=np.int64)])

    assert logits[0].tolist() == [float("-inf"), 1, 2, 3, float("-inf"), float("-inf")]
    assert logits[1].tolist() == [float("-inf"), 7, 8, 9, 10, 11]


def test_top_k_skips_masked_items_and_returns_fewer():
    logits = torch.tensor([[float("-inf"), 0.5, float("-inf"), 0.9]])

    assert top_k(logits, 3) == [[(3, pytest.approx(0.9)), (1, pytest.approx(0.5))]]
    assert top_k(logits, 1) == [[(3, pytest.approx(0.9))]]
