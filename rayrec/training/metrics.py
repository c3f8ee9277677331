"""Ranking metrics from exact counts.

Each worker sums per-user values. The sums are all-reduced and divided once by the total
number of users, so the result is exact and not a mean of per-worker means.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

METRIC_NAMES = ("hr", "ndcg", "mrr")
REPORTED_KS = (5, 10, 20)


def target_ranks(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """0-based rank (B,) of each target among the items with finite scores.

    Items scored -inf (padding, excluded items) never outrank the target. Ties count in the
    target's favour, as in most published full-ranking evaluations.
    """
    target_scores = logits.gather(1, targets.unsqueeze(1))  # (B, 1)
    return (logits > target_scores).sum(dim=1)  # (B,)


def ranking_sums(ranks: torch.Tensor, ks: Sequence[int]) -> torch.Tensor:
    """Sums of HR@k, NDCG@k and MRR@k for each k, then the user count: float64 (3 * len(ks) + 1,)."""
    ranks = ranks.to(torch.float64)
    sums = []
    for k in ks:
        hit = (ranks < k).to(torch.float64)
        sums += [hit.sum(), (hit / torch.log2(ranks + 2.0)).sum(), (hit / (ranks + 1.0)).sum()]
    sums.append(torch.tensor(float(len(ranks)), dtype=torch.float64))
    return torch.stack(sums)


def metrics_from_sums(sums: torch.Tensor, ks: Sequence[int], prefix: str) -> dict[str, float]:
    """Divide `ranking_sums` output by the user count: {prefix}{hr,ndcg,mrr}@{k} and {prefix}users."""
    users = float(sums[-1])
    if users == 0:
        raise ValueError("no users were evaluated; check that the evaluation split is not empty.")
    values = {}
    for i, k in enumerate(ks):
        for j, name in enumerate(METRIC_NAMES):
            values[f"{prefix}{name}@{k}"] = float(sums[3 * i + j]) / users
    values[f"{prefix}users"] = int(users)
    return values


def reported_ks(eval_k: int) -> tuple[int, ...]:
    """Return the cutoffs every evaluation reports: 5, 10 and 20, plus `eval_k` if it is another value."""
    return tuple(sorted({*REPORTED_KS, eval_k}))
