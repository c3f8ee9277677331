"""Turn a user id or a raw history into top-k raw item ids: shared by `rayrec recommend`,
offline checks and the serving replicas, so every path ranks the same way."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from rayrec.models.bundle import Bundle
from rayrec.models.scoring import mask_items, pad_histories, top_k


@dataclass
class Query:
    """A request resolved against a bundle's vocabulary."""

    history: np.ndarray  # item indices, oldest first; empty means no known history
    k: int
    exclude: np.ndarray  # item indices to leave out of the results
    unknown_items: list[str] = field(default_factory=list)

    @property
    def fallback(self) -> bool:
        return len(self.history) == 0


def resolve_query(bundle: Bundle, user_id: str | None, history: Sequence[str] | None, k: int,
                  exclude_seen: bool = True) -> Query:
    """Map raw ids to item indices; a given history takes precedence over the stored one."""
    unknown: list[str] = []
    if history is not None:
        known = [bundle.item_index.get(item) for item in history]
        unknown = [item for item, index in zip(history, known) if index is None]
        indices = np.asarray([index for index in known if index is not None], dtype=np.int64)
    else:
        indices = bundle.histories.get(user_id, np.zeros(0, dtype=np.int64))

    exclude = indices if exclude_seen else np.zeros(0, dtype=np.int64)
    return Query(history=indices, k=k, exclude=exclude, unknown_items=unknown)


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
        logits = model.score_last(item_ids)
        mask_items(logits, [queries[i].exclude for i in scored])
        ranked = top_k(logits, max(queries[i].k for i in scored))
        for i, row in zip(scored, ranked):
            results[i] = row[: queries[i].k]
    return results


def popular_items(bundle: Bundle, query: Query) -> list[tuple[int, float]]:
    """Most popular training items not excluded; the score is 1 / popularity rank."""
    popular = bundle.popular_items[~np.isin(bundle.popular_items, query.exclude)]
    return [(int(item), 1.0 / (rank + 1)) for rank, item in enumerate(popular[: query.k])]
