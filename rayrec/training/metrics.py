"""Full-ranking metrics from exact counts.

Each worker sums per-user values. The sums are all-reduced and divided once by the total
number of users, so the result is exact and not a mean of per-worker means.
"""

from __future__ import annotations

import torch

METRIC_NAMES = ("hr", "ndcg", "mrr")


def target_ranks(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """0-based rank (B,) of each target among the items with finite scores.

    Items scored -inf (padding, excluded items) never outrank the target. Ties count in the
    target's favour, as in most published full-ranking evaluations.
    """
    target_scores = logits.gather(1, targets.unsqueeze(1))  # (B, 1)
    return (logits > target_scores).sum(dim=1)  # (B,)


def ranking_sums(ranks: torch.Tensor, k: int) -> torch.Tensor:
    """Per-batch sums [HR@k, NDCG@k, MRR@k, users] as a float64 tensor of shape (4,)."""
    ranks = ranks.to(torch.float64)
    hit = (ranks < k).to(torch.float64)
    ndcg = hit / torch.log2(ranks + 2.0)
    mrr = hit / (ranks + 1.0)
    return torch.stack([hit.sum(), ndcg.sum(), mrr.sum(), torch.tensor(float(len(ranks)), dtype=torch.float64)])


def metrics_from_sums(sums: torch.Tensor, k: int, prefix: str) -> dict[str, float]:
    users = float(sums[3])
    if users == 0:
        raise ValueError("no users were evaluated; check that the evaluation split is not empty.")
    values = {f"{prefix}{name}@{k}": float(sums[i]) / users for i, name in enumerate(METRIC_NAMES)}
    values[f"{prefix}users"] = int(users)
    return values
