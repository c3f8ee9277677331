"""Ranking helpers shared by offline evaluation and the serving replicas.

Both paths call `pad_histories`, `SASRec.score_last`, `mask_items` and `top_k`, so a served
top-k equals the evaluated top-k for the same history.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from rayrec.models.sasrec import PADDING_ID


def pad_histories(histories: Sequence[Sequence[int]], max_len: int) -> torch.Tensor:
    """Keep the most recent `max_len` items of each history and right-pad to (B, T) int64."""
    if not histories:
        raise ValueError("pad_histories needs at least one history.")
    recent = [np.asarray(history[-max_len:], dtype=np.int64) for history in histories]
    width = max(len(history) for history in recent)
    padded = np.full((len(recent), max(width, 1)), PADDING_ID, dtype=np.int64)
    for row, history in enumerate(recent):
        padded[row, : len(history)] = history
    return torch.from_numpy(padded)


def mask_items(logits: torch.Tensor, excluded: Sequence[Sequence[int]]) -> torch.Tensor:
    """Set the logits (B, N + 1) of each row's excluded item ids to -inf, in place."""
    rows = [np.full(len(items), row, dtype=np.int64) for row, items in enumerate(excluded)]
    if rows:
        row_index = torch.from_numpy(np.concatenate(rows))
        col_index = torch.from_numpy(np.concatenate([np.asarray(items, dtype=np.int64) for items in excluded]))
        logits[row_index, col_index] = float("-inf")
    logits[:, PADDING_ID] = float("-inf")
    return logits


def top_k(logits: torch.Tensor, k: int) -> list[list[tuple[int, float]]]:
    """Return up to k (item_id, score) pairs per row, best first, skipping -inf items.

    Rows with fewer than k rankable items return fewer pairs.
    """
    k = min(k, logits.shape[1])
    scores, indices = torch.topk(logits, k, dim=1)
    results = []
    for row_scores, row_indices in zip(scores.tolist(), indices.tolist()):
        results.append([(item, score) for item, score in zip(row_indices, row_scores) if score != float("-inf")])
    return results
