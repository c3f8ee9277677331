"""Training losses over a catalog of item embeddings.

Each loss takes the hidden states at the positions that have a target (P, C), the target
item ids (P,), and the embedding table whose rows 1..N are the catalog. Row 0 is padding and
is never a candidate. Shapes: P target positions, C hidden size, N catalog size, S samples.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from rayrec.models.config import ModelConfig


def catalog_loss(config: ModelConfig, hidden: torch.Tensor, targets: torch.Tensor, item_weights: torch.Tensor,
                 num_items: int) -> torch.Tensor:
    """Return the mean loss that `config.loss` selects; logits are computed in float32."""
    hidden = hidden.float()
    catalog = item_weights[: num_items + 1].float()
    if config.loss == "cross_entropy":
        return full_softmax_loss(hidden, targets, catalog)
    if config.loss == "bce":
        return bce_loss(hidden, targets, catalog)
    if config.negatives == "in_batch":
        return in_batch_softmax_loss(hidden, targets, catalog)
    return uniform_sampled_softmax_loss(hidden, targets, catalog, config.num_negatives)


def full_softmax_loss(hidden: torch.Tensor, targets: torch.Tensor, catalog: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over every item: memory grows with P x N."""
    logits = hidden @ catalog.T  # (P, N + 1)
    logits[:, 0] = float("-inf")
    return F.cross_entropy(logits, targets)


def uniform_sampled_softmax_loss(hidden: torch.Tensor, targets: torch.Tensor, catalog: torch.Tensor,
                                 num_negatives: int) -> torch.Tensor:
    """Softmax over each target and S items drawn uniformly, shared by the whole batch.

    Each negative's logit is lowered by log(S * q) with q = 1 / N, its expected count in the
    sample, so the negatives' summed exp estimates the full softmax denominator without bias.
    A draw that equals a row's target is masked out; the target enters once, unsampled.
    """
    num_items = catalog.shape[0] - 1
    negatives = torch.randint(1, num_items + 1, (num_negatives,), device=hidden.device)  # (S,)
    log_expected_count = math.log(num_negatives / num_items)

    positive = (hidden * catalog[targets]).sum(dim=-1, keepdim=True)  # (P, 1)
    negative = hidden @ catalog[negatives].T - log_expected_count  # (P, S)
    negative = negative.masked_fill(negatives.unsqueeze(0) == targets.unsqueeze(1), float("-inf"))
    logits = torch.cat([positive, negative], dim=1)  # (P, 1 + S)
    return F.cross_entropy(logits, torch.zeros_like(targets))


def in_batch_softmax_loss(hidden: torch.Tensor, targets: torch.Tensor, catalog: torch.Tensor) -> torch.Tensor:
    """Softmax over the distinct targets of the batch, each corrected by log(count / P).

    Items appear as candidates in proportion to how often they are targets, so without the
    correction popular items are pushed down too hard.
    """
    candidates, target_index, counts = torch.unique(targets, return_inverse=True, return_counts=True)  # (U,), (P,), (U,)
    log_q = torch.log(counts.float() / targets.shape[0])  # (U,)
    logits = hidden @ catalog[candidates].T - log_q  # (P, U)
    return F.cross_entropy(logits, target_index)


def bce_loss(hidden: torch.Tensor, targets: torch.Tensor, catalog: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of each target against one uniform negative that differs from it."""
    num_items = catalog.shape[0] - 1
    positive = (hidden * catalog[targets]).sum(dim=-1)  # (P,)
    if num_items == 1:
        return F.softplus(-positive).mean()  # no other item to contrast with

    # Draw from the N - 1 other items: ids from 1..N-1, shifted up by one at or above the target.
    negatives = torch.randint(1, num_items, targets.shape, device=hidden.device)  # (P,)
    negatives = negatives + (negatives >= targets).long()
    negative = (hidden * catalog[negatives]).sum(dim=-1)  # (P,)
    return (F.softplus(-positive) + F.softplus(negative)).mean()
