"""Metric code against a plain numpy reference on hand-made cases."""

import math

import numpy as np
import pytest
import torch

from rayrec.training.metrics import metrics_from_sums, ranking_sums, reported_ks, target_ranks


def numpy_reference(scores: np.ndarray, targets: np.ndarray, excluded: list[list[int]], k: int) -> dict[str, float]:
    hr, ndcg, mrr = [], [], []
    for row, target, seen in zip(scores, targets, excluded):
        candidates = [item for item in range(1, len(row)) if item not in seen or item == target]
        ranked = sorted(candidates, key=lambda item: -row[item])
        rank = ranked.index(target)
        hr.append(1.0 if rank < k else 0.0)
        ndcg.append(1.0 / math.log2(rank + 2) if rank < k else 0.0)
        mrr.append(1.0 / (rank + 1) if rank < k else 0.0)
    return {"hr": float(np.mean(hr)), "ndcg": float(np.mean(ndcg)), "mrr": float(np.mean(mrr))}


def _rayrec_metrics(scores, targets, excluded, k):
    logits = torch.tensor(scores, dtype=torch.float32)
    logits[:, 0] = float("-inf")
    for row, seen in enumerate(excluded):
        for item in seen:
            if item != targets[row]:
                logits[row, item] = float("-inf")
    ranks = target_ranks(logits, torch.tensor(targets))
    return metrics_from_sums(ranking_sums(ranks, [k]), [k], prefix="")


def test_hand_made_ranks():
    logits = torch.tensor([[float("-inf"), 0.9, 0.1, 0.5], [float("-inf"), 0.2, 0.3, 0.1]])
    ranks = target_ranks(logits, torch.tensor([3, 1]))

    assert ranks.tolist() == [1, 1]
    result = metrics_from_sums(ranking_sums(ranks, [1]), [1], prefix="valid_")
    assert result == {"valid_hr@1": 0.0, "valid_ndcg@1": 0.0, "valid_mrr@1": 0.0, "valid_users": 2}
    result = metrics_from_sums(ranking_sums(ranks, [2]), [2], prefix="")
    assert result["hr@2"] == 1.0
    assert result["ndcg@2"] == pytest.approx(1 / math.log2(3))
    assert result["mrr@2"] == pytest.approx(0.5)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_numpy_reference(seed):
    rng = np.random.default_rng(seed)
    scores = rng.normal(size=(20, 30))
    targets = rng.integers(1, 30, size=20)
    excluded = [list(rng.choice(np.arange(1, 30), size=5, replace=False)) for _ in range(20)]

    ours = _rayrec_metrics(scores, targets, excluded, k=10)
    reference = numpy_reference(scores, targets, excluded, k=10)
    for name in ("hr", "ndcg", "mrr"):
        assert ours[f"{name}@10"] == pytest.approx(reference[name], abs=1e-9)


def test_sums_over_shards_equal_whole():
    rng = np.random.default_rng(7)
    logits = torch.tensor(rng.normal(size=(9, 15)), dtype=torch.float32)
    targets = torch.tensor(rng.integers(1, 15, size=9))
    ranks = target_ranks(logits, targets)

    whole = ranking_sums(ranks, [5, 10])
    # Uneven shards: 2 users and 7 users; the sums must add up, unlike a mean of means.
    split = ranking_sums(ranks[:2], [5, 10]) + ranking_sums(ranks[2:], [5, 10])
    torch.testing.assert_close(split, whole)


def test_empty_evaluation_rejected():
    with pytest.raises(ValueError, match="no users were evaluated"):
        metrics_from_sums(torch.zeros(4, dtype=torch.float64), [10], prefix="")


def test_several_cutoffs_match_single_cutoffs():
    rng = np.random.default_rng(3)
    logits = torch.tensor(rng.normal(size=(12, 40)), dtype=torch.float32)
    ranks = target_ranks(logits, torch.tensor(rng.integers(1, 40, size=12)))

    together = metrics_from_sums(ranking_sums(ranks, [5, 10, 20]), [5, 10, 20], prefix="test_")
    for k in (5, 10, 20):
        alone = metrics_from_sums(ranking_sums(ranks, [k]), [k], prefix="test_")
        for name in ("hr", "ndcg", "mrr"):
            assert together[f"test_{name}@{k}"] == alone[f"test_{name}@{k}"]
    assert together["test_users"] == 12


def test_reported_cutoffs_include_eval_k():
    assert reported_ks(10) == (5, 10, 20)
    assert reported_ks(50) == (5, 10, 20, 50)
