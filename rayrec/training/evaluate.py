"""Full-ranking evaluation, shared by the training loop and `rayrec evaluate`.

Items are scored in chunks of the catalog, so memory stays at (users per batch) x (chunk)
however large the catalog is. Per chunk, the evaluator counts the items that outrank each
target and keeps a running top-k for catalog coverage. The sums are exact counts, so
workers can all-reduce them.

Three rankings are reported for each user:
- filtered (the protocol): the user's earlier items are excluded, except the target itself;
- unfiltered: nothing but padding is excluded;
- sampled (only when `sampled_negatives` > 0): the target against that many items drawn
  uniformly from those the user has not interacted with. Sampled metrics overstate quality
  and are reported only beside the full-ranking ones, with a `sampled_` prefix.

Scores come from `last_hidden` and the item embeddings, the same computation as
`score_last`, which serving uses.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from rayrec.models.bundle import load_bundle
from rayrec.models.scoring import pad_histories
from rayrec.models.transformer import PADDING_ID, SequenceRecommender
from rayrec.training.metrics import metrics_from_sums, ranking_sums, reported_ks

BATCH_SIZE = 256
CHUNK_ITEMS = 65_536


@dataclass
class RankingSums:
    """Exact per-worker counts; add them over workers, then call `metrics`."""

    ks: tuple[int, ...]
    filtered: torch.Tensor  # ranking_sums layout, float64
    unfiltered: torch.Tensor
    sampled: torch.Tensor
    recommended: torch.Tensor  # (N + 1,) float64, 1 where an item is in some user's filtered top-max(ks)

    def tensors(self) -> list[torch.Tensor]:
        return [self.filtered, self.unfiltered, self.sampled, self.recommended]

    def metrics(self, prefix: str) -> dict[str, float]:
        values = metrics_from_sums(self.filtered, self.ks, prefix)
        values.update(metrics_from_sums(self.unfiltered, self.ks, f"{prefix}unfiltered_"))
        values.pop(f"{prefix}unfiltered_users")
        if float(self.sampled[-1]) > 0:
            values.update(metrics_from_sums(self.sampled, self.ks, f"{prefix}sampled_"))
            values.pop(f"{prefix}sampled_users")
        num_items = self.recommended.shape[0] - 1
        values[f"{prefix}coverage@{max(self.ks)}"] = float(self.recommended[1:].sum()) / num_items
        return values


def evaluate_bundle(bundle_dir: str | Path, prepared_dir: str | Path, split: str = "test", k: int = 10,
                    sampled_negatives: int = 0) -> dict[str, float]:
    """Return HR, NDCG and MRR at 5, 10, 20 and k of the bundle's model on `split` (valid or test)."""
    if split not in ("valid", "test"):
        raise ValueError(f"split must be valid or test, got {split!r}.")
    if k < 1:
        raise ValueError(f"k ({k}) must be at least 1.")
    split_dir = Path(prepared_dir) / split
    if not split_dir.exists():
        raise FileNotFoundError(f"{split_dir} not found; run `rayrec prepare` first.")

    bundle = load_bundle(bundle_dir)
    table = pq.read_table(split_dir, columns=["history", "target"])
    histories = [np.asarray(history, dtype=np.int64) for history in table["history"].to_pylist()]
    targets = table["target"].to_numpy().astype(np.int64)

    sums = ranking_sums_for_rows(bundle.model, histories, targets, reported_ks(k), sampled_negatives)
    return sums.metrics(prefix=f"{split}_")


@torch.no_grad()
def ranking_sums_for_rows(model: SequenceRecommender, histories: list[np.ndarray], targets: np.ndarray,
                          ks: Sequence[int], sampled_negatives: int = 0, seed: int = 0,
                          chunk_items: int = CHUNK_ITEMS) -> RankingSums:
    """Rank each target given its history; see the module docstring for the three rankings."""
    model.eval()
    ks = tuple(ks)
    device = model.item_emb.weight.device
    num_items = model.num_items
    sums = RankingSums(
        ks=ks,
        filtered=torch.zeros(3 * len(ks) + 1, dtype=torch.float64),
        unfiltered=torch.zeros(3 * len(ks) + 1, dtype=torch.float64),
        sampled=torch.zeros(3 * len(ks) + 1, dtype=torch.float64),
        recommended=torch.zeros(num_items + 1, dtype=torch.float64),
    )
    rng = np.random.default_rng(seed)

    for start in range(0, len(targets), BATCH_SIZE):
        batch_histories = histories[start:start + BATCH_SIZE]
        batch_targets = torch.as_tensor(np.asarray(targets[start:start + BATCH_SIZE]), dtype=torch.int64)
        hidden = model.last_hidden(pad_histories(batch_histories, model.config.max_len).to(device)).float()  # (B, C)
        excluded = [history[history != target] for history, target in zip(batch_histories, batch_targets.tolist())]

        filtered, unfiltered, top_items = _chunked_ranks(model, hidden, batch_targets.to(device), excluded,
                                                         max(ks), chunk_items)
        sums.filtered += ranking_sums(filtered, ks)
        sums.unfiltered += ranking_sums(unfiltered, ks)
        sums.recommended[top_items.flatten()] = 1.0
        if sampled_negatives > 0:
            negatives = _sample_negatives(rng, batch_histories, batch_targets.numpy(), num_items, sampled_negatives)
            sums.sampled += ranking_sums(_sampled_ranks(model, hidden, batch_targets.to(device), negatives), ks)

    sums.recommended[PADDING_ID] = 0.0
    return sums


def _chunked_ranks(model: SequenceRecommender, hidden: torch.Tensor, targets: torch.Tensor,
                   excluded: list[np.ndarray], top_k: int, chunk_items: int):
    """Return filtered ranks (B,), unfiltered ranks (B,) and the item ids of every filtered top-k list."""
    weights = model.catalog_weights()  # (N + 1, C)
    B = hidden.shape[0]
    target_scores = (hidden * weights[targets].float()).sum(dim=1, keepdim=True).cpu()  # (B, 1)
    targets = targets.cpu()
    rows, cols = _exclusion_index(excluded)

    filtered = torch.zeros(B, dtype=torch.int64)
    unfiltered = torch.zeros(B, dtype=torch.int64)
    top_scores = torch.full((B, 0), float("-inf"))
    top_items = torch.zeros((B, 0), dtype=torch.int64)
    for lo in range(0, weights.shape[0], chunk_items):
        hi = min(lo + chunk_items, weights.shape[0])
        logits = (hidden @ weights[lo:hi].float().T).cpu()  # (B, chunk)
        if lo == 0:
            logits[:, PADDING_ID] = float("-inf")
        # The target never outranks itself; comparing it with its own score could fail by rounding.
        in_chunk = (targets >= lo) & (targets < hi)
        own = logits[in_chunk, targets[in_chunk] - lo].clone()
        logits[in_chunk, targets[in_chunk] - lo] = float("-inf")
        unfiltered += (logits > target_scores).sum(dim=1)

        chunk_excluded = (cols >= lo) & (cols < hi)
        logits[rows[chunk_excluded], cols[chunk_excluded] - lo] = float("-inf")
        filtered += (logits > target_scores).sum(dim=1)

        logits[in_chunk, targets[in_chunk] - lo] = own
        scores = torch.cat([top_scores, logits], dim=1)
        items = torch.cat([top_items, torch.arange(lo, hi).expand(B, -1)], dim=1)
        top_scores, order = torch.topk(scores, min(top_k, scores.shape[1]), dim=1)
        top_items = items.gather(1, order)
    return filtered, unfiltered, top_items[top_scores > float("-inf")]


def _exclusion_index(excluded: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and item index (E,) of every excluded (user, item) pair."""
    if not excluded:
        return torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.int64)
    rows = np.concatenate([np.full(len(items), row, dtype=np.int64) for row, items in enumerate(excluded)])
    cols = np.concatenate([np.asarray(items, dtype=np.int64) for items in excluded])
    return torch.from_numpy(rows), torch.from_numpy(cols)


def _sample_negatives(rng: np.random.Generator, histories: list[np.ndarray], targets: np.ndarray,
                      num_items: int, count: int) -> torch.Tensor:
    """Draw `count` distinct items per user, uniformly among those not in the history or the target."""
    rows = []
    for history, target in zip(histories, targets):
        seen = set(history.tolist()) | {int(target)}
        available = num_items - len(seen)
        if available < count:
            raise ValueError(
                f"sampled evaluation needs {count} unseen items per user, but a user has only {available}; "
                "lower eval_sampled_negatives."
            )
        drawn: list[int] = []
        while len(drawn) < count:
            for item in rng.integers(1, num_items + 1, size=2 * count).tolist():
                if item not in seen:
                    seen.add(item)
                    drawn.append(item)
                    if len(drawn) == count:
                        break
        rows.append(drawn)
    return torch.tensor(rows, dtype=torch.int64)


def _sampled_ranks(model: SequenceRecommender, hidden: torch.Tensor, targets: torch.Tensor,
                   negatives: torch.Tensor) -> torch.Tensor:
    weights = model.catalog_weights().float()
    target_scores = (hidden * weights[targets]).sum(dim=1, keepdim=True)  # (B, 1)
    negative_scores = torch.einsum("bc,bsc->bs", hidden, weights[negatives.to(hidden.device)])  # (B, S)
    return (negative_scores > target_scores).sum(dim=1).cpu()
