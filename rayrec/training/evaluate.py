"""Offline full-ranking evaluation of a bundle on a prepared split, in one process.

It uses the same scoring code as training and serving, so its numbers match the metrics
that training reported for the same weights.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from rayrec.models.bundle import load_bundle
from rayrec.models.sasrec import SASRec
from rayrec.models.scoring import mask_items, pad_histories
from rayrec.training.metrics import metrics_from_sums, ranking_sums, target_ranks

BATCH_SIZE = 256


def evaluate_bundle(bundle_dir: str | Path, prepared_dir: str | Path, split: str = "test", k: int = 10) -> dict[str, float]:
    """Return HR, NDCG and MRR at k of the bundle's model on `split` (valid or test)."""
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

    sums = ranking_sums_for_rows(bundle.model, histories, targets, k)
    return metrics_from_sums(sums, k, prefix=f"{split}_")


@torch.no_grad()
def ranking_sums_for_rows(model: SASRec, histories: list[np.ndarray], targets: np.ndarray, k: int) -> torch.Tensor:
    """Sum HR, NDCG and MRR at k over (history, target) rows; see `ranking_sums`.

    Each user's earlier items are excluded from the ranking, except the target itself.
    """
    model.eval()
    device = model.item_emb.weight.device
    sums = torch.zeros(4, dtype=torch.float64)
    for start in range(0, len(targets), BATCH_SIZE):
        batch_histories = histories[start:start + BATCH_SIZE]
        batch_targets = torch.as_tensor(np.asarray(targets[start:start + BATCH_SIZE]), dtype=torch.int64)
        item_ids = pad_histories(batch_histories, model.config.max_len).to(device)
        logits = model.score_last(item_ids).float().cpu()
        mask_items(logits, [h[h != t] for h, t in zip(batch_histories, batch_targets.tolist())])
        sums += ranking_sums(target_ranks(logits, batch_targets), k)
    return sums
