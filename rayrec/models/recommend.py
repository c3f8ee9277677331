"""Turn a user id or a raw history into top-k raw item ids: shared by `rayrec recommend`,
offline checks and the serving replicas, so every path ranks the same way."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from rayrec.models.bundle import Bundle
from rayrec.models.scoring import mask_items, pad_histories, top_k

NO_ITEMS = np.zeros(0, dtype=np.int64)


@dataclass
class Query:
    """A request resolved against a bundle's vocabulary."""

    history: np.ndarray  # item indices, oldest first; empty means no known history
    k: int
    exclude: np.ndarray  # item indices to leave out of the results
    allowed: np.ndarray | None = None  # when set, only these item indices may be returned
    unknown_items: list[str] = field(default_factory=list)
    unknown_user: bool = False
    truncated: bool = False  # the history is longer than the model's max_len; only the most recent items count

    @property
    def fallback(self) -> bool:
        return len(self.history) == 0


def resolve_query(bundle: Bundle, user_id: str | None, history: Sequence[str] | None, k: int,
                  exclude_seen: bool = True, exclude_items: Sequence[str] | None = None,
                  allowed_items: Sequence[str] | None = None) -> Query:
    """Map raw ids to item indices; a given history takes precedence over the stored one.

    Ids in `exclude_items` or `allowed_items` that are not in the vocabulary can never be
    recommended, so they are ignored. Unknown history ids are reported in `unknown_items`.
    """
    unknown: list[str] = []
    unknown_user = False
    if history is not None:
        indices, unknown = _known_indices(bundle, history)
    else:
        indices = bundle.histories.get(user_id, NO_ITEMS)
        unknown_user = user_id not in bundle.histories

    exclude = indices if exclude_seen else NO_ITEMS
    if exclude_items:
        exclude = np.concatenate([exclude, _known_indices(bundle, exclude_items)[0]])
    allowed = None if allowed_items is None else _known_indices(bundle, allowed_items)[0]

    return Query(
        history=indices,
        k=k,
        exclude=exclude,
        allowed=allowed,
        unknown_items=unknown,
        unknown_user=unknown_user,
        truncated=len(indices) > bundle.model.config.max_len,
    )


def _known_indices(bundle: Bundle, raw_ids: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    known = [bundle.item_index.get(item) for item in raw_ids]
    unknown = [item for item, index in zip(raw_ids, known) if index is None]
    return np.asarray([index for index in known if index is not None], dtype=np.int64), unknown


def rank_queries(bundle: Bundle, queries: Sequence[Query]) -> list[list[tuple[int, float]]]:
    """Return up to k (item index, score) pairs per query, scoring all model queries in one pass."""
    results: list[list[tuple[int, float]] | None] = [None] * len(queries)
    scored = [i for i, query in enumerate(queries) if not query.fallback]
    for i, query in enumerate(queries):
        if query.fallback:
            results[i] = popular_items(bundle, query)

    if scored:
        model = bundle.model
        item_ids = pad_histories([queries[i].history for i in scored], model.config.max_len)
        device = next(model.parameters()).device
        # Masking and top-k run on CPU, so a GPU model hands back float32 CPU logits.
        logits = model.score_last(item_ids.to(device)).float().cpu()
        _keep_allowed(logits, [queries[i].allowed for i in scored])
        mask_items(logits, [queries[i].exclude for i in scored])
        ranked = top_k(logits, max(queries[i].k for i in scored))
        for i, row in zip(scored, ranked):
            results[i] = row[: queries[i].k]
    return results


def _keep_allowed(logits: torch.Tensor, allowed: Sequence[np.ndarray | None]) -> None:
    """Set every logit outside a row's allowed set to -inf, in place; rows without a set are kept."""
    for row, items in enumerate(allowed):
        if items is None:
            continue
        keep = torch.zeros(logits.shape[1], dtype=torch.bool)
        keep[torch.from_numpy(items)] = True
        logits[row, ~keep] = float("-inf")


def popular_items(bundle: Bundle, query: Query) -> list[tuple[int, float]]:
    """Most popular training items not excluded (and allowed, if set); the score is 1 / popularity rank."""
    popular = bundle.popular_items[~np.isin(bundle.popular_items, query.exclude)]
    if query.allowed is not None:
        popular = popular[np.isin(popular, query.allowed)]
    return [(int(item), 1.0 / (rank + 1)) for rank, item in enumerate(popular[: query.k])]
