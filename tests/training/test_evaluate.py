"""Chunked full-ranking evaluation against a plain numpy reference; no Ray."""

import math

import numpy as np
import pytest
import torch

from rayrec.models.config import ModelConfig
from rayrec.models.factory import build_model
from rayrec.models.scoring import pad_histories
from rayrec.training.evaluate import ranking_sums_for_rows

NUM_ITEMS = 57


def _model(architecture: str = "sasrec"):
    torch.manual_seed(0)
    config = ModelConfig(architecture=architecture, max_len=8, hidden_size=16, num_layers=1, num_heads=2, dropout=0.0)
    return build_model(config, NUM_ITEMS).eval()


def _rows(seed: int, users: int = 23):
    rng = np.random.default_rng(seed)
    histories = [rng.choice(np.arange(1, NUM_ITEMS + 1), size=rng.integers(1, 12), replace=False) for _ in range(users)]
    targets = np.array([rng.integers(1, NUM_ITEMS + 1) for _ in range(users)])
    return histories, targets


def _reference(model, histories, targets, k: int, exclude_seen: bool) -> dict[str, float]:
    """Sort every item by its full-catalog score; rank = items strictly above the target."""
    logits = model.score_last(pad_histories(histories, model.config.max_len)).numpy()
    hr = ndcg = mrr = 0.0
    for row, (history, target) in enumerate(zip(histories, targets)):
        excluded = set(history.tolist()) - {int(target)} if exclude_seen else set()
        candidates = [item for item in range(1, NUM_ITEMS + 1) if item not in excluded and item != target]
        rank = sum(1 for item in candidates if logits[row, item] > logits[row, target])
        if rank < k:
            hr += 1
            ndcg += 1 / math.log2(rank + 2)
            mrr += 1 / (rank + 1)
    users = len(targets)
    return {"hr": hr / users, "ndcg": ndcg / users, "mrr": mrr / users}


@pytest.mark.parametrize("architecture", ["sasrec", "bert4rec"])
@pytest.mark.parametrize("chunk_items", [7, 1000])
def test_chunked_ranking_matches_reference(architecture, chunk_items):
    model = _model(architecture)
    histories, targets = _rows(seed=1)

    sums = ranking_sums_for_rows(model, histories, targets, (5, 10, 20), chunk_items=chunk_items)
    metrics = sums.metrics("test_")

    for k in (5, 10, 20):
        filtered = _reference(model, histories, targets, k, exclude_seen=True)
        unfiltered = _reference(model, histories, targets, k, exclude_seen=False)
        for name in ("hr", "ndcg", "mrr"):
            assert metrics[f"test_{name}@{k}"] == pytest.approx(filtered[name], abs=1e-9)
            assert metrics[f"test_unfiltered_{name}@{k}"] == pytest.approx(unfiltered[name], abs=1e-9)
    assert metrics["test_users"] == len(targets)


def test_chunk_size_does_not_change_results():
    model = _model()
    histories, targets = _rows(seed=2)

    small = ranking_sums_for_rows(model, histories, targets, (5, 10, 20), chunk_items=5).metrics("")
    whole = ranking_sums_for_rows(model, histories, targets, (5, 10, 20), chunk_items=10_000).metrics("")

    assert small == pytest.approx(whole)


def test_coverage_counts_distinct_recommended_items():
    model = _model()
    histories, targets = _rows(seed=3)
    logits = model.score_last(pad_histories(histories, model.config.max_len))
    for row, (history, target) in enumerate(zip(histories, targets)):
        logits[row, [item for item in history.tolist() if item != target]] = float("-inf")
    expected = len(set(torch.topk(logits, 20, dim=1).indices.flatten().tolist()) - {0}) / NUM_ITEMS

    metrics = ranking_sums_for_rows(model, histories, targets, (5, 10, 20), chunk_items=9).metrics("")

    assert metrics["coverage@20"] == pytest.approx(expected)


def test_sampled_metrics_are_separate_and_higher():
    model = _model()
    histories, targets = _rows(seed=4, users=40)

    metrics = ranking_sums_for_rows(model, histories, targets, (5, 10, 20), sampled_negatives=20).metrics("valid_")

    assert "valid_sampled_ndcg@10" in metrics
    # A target ranked among 20 unseen items can only rank higher than among the whole catalog.
    assert metrics["valid_sampled_hr@10"] >= metrics["valid_hr@10"]
    off = ranking_sums_for_rows(model, histories, targets, (5, 10, 20)).metrics("valid_")
    assert not any(key.startswith("valid_sampled_") for key in off)


def test_sampled_negatives_need_enough_unseen_items():
    model = _model()
    histories, targets = _rows(seed=5, users=3)

    with pytest.raises(ValueError, match="lower eval_sampled_negatives"):
        ranking_sums_for_rows(model, histories, targets, (10,), sampled_negatives=NUM_ITEMS)
