"""Leave-one-out explanations: which history items raised each recommended item's score.

For a history h and a recommended item r, the weight of history position i is

    weight(i, r) = score(h, r) - score(h without position i, r)

where score is the model's logit for r after the history, as served. A positive weight means
that the item at position i raised r's score. The method is exact for the served model,
because it reruns that model; it needs one extra scored row per explained history position.

Only the most recent `max_history` positions are explained, which bounds the extra work per
request. A history of one item gets no reasons: without it the history is empty, and the
served model returns the popularity fallback instead of logits. When the history is longer than the model's max_len, dropping a position lets one
older item into the scored window, which is also how the served model would see that history.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from rayrec.models.scoring import pad_histories

MAX_EXPLAINED_HISTORY = 50  # history positions rescored per request; older ones get no weight
MAX_REASONS = 3  # history items returned per recommended item


@dataclass
class Reason:
    """One history item and how much it raised a recommended item's logit."""

    item_index: int
    weight: float  # logit with the full history minus logit without this history position


@torch.no_grad()
def explain_items(model: nn.Module, history: np.ndarray, items: Sequence[int], max_len: int,
                  max_history: int = MAX_EXPLAINED_HISTORY, max_reasons: int = MAX_REASONS) -> list[list[Reason]]:
    """Return, for each item in `items`, up to `max_reasons` history items with the largest weights.

    `model` is anything with `score_last(item_ids) -> logits (B, N + 1)`, such as SASRec.
    Reasons are sorted by weight, largest first.
    """
    if len(history) < 2 or len(items) == 0:
        return [[] for _ in items]

    explained = min(len(history), max_history)
    first = len(history) - explained
    rows = [history] + [np.delete(history, position) for position in range(first, len(history))]
    item_ids = pad_histories(rows, max_len)  # (1 + explained, T)

    device = next(model.parameters()).device
    columns = torch.as_tensor(list(items), dtype=torch.int64)
    logits = model.score_last(item_ids.to(device)).float().cpu()[:, columns]  # (1 + explained, R)
    weights = logits[0:1] - logits[1:]  # (explained, R)

    reasons = []
    for column in range(len(columns)):
        order = torch.argsort(weights[:, column], descending=True)[:max_reasons].tolist()
        reasons.append([Reason(int(history[first + row]), float(weights[row, column])) for row in order])
    return reasons


def explain_ranking(model: nn.Module, history: np.ndarray, ranked: Sequence[tuple[int, float]], item_ids: Sequence[str],
                    max_len: int) -> list[list[dict[str, str | float]]]:
    """Return `explain_items` for ranked (item index, score) pairs as {"item_id", "weight"} dicts with raw ids."""
    reasons = explain_items(model, history, [index for index, _ in ranked], max_len)
    return [[{"item_id": item_ids[reason.item_index], "weight": reason.weight} for reason in row] for row in reasons]
