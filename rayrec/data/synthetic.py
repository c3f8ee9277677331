"""Seeded synthetic interaction logs shaped like MovieLens-20M, for benchmarks and scale tests.

The default shape follows ML-20M: 20M events, about 138k users and 27k items. Item
popularity is Zipf-like (p ∝ 1 / rank^zipf_exponent) and user activity is log-normal.
Files are time slices of the log, as production logs usually are, so one user's events
spread over many files. Ids are strings (u123, i45); timestamps are int64 seconds.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

logger = logging.getLogger(__name__)

START_S = 1_000_000_000  # 2001-09-09, near the start of MovieLens-20M's time range
SPAN_S = 600_000_000


@dataclass(frozen=True)
class SyntheticSpec:
    """Shape of a synthetic log; the same spec and seed always give the same files."""

    rows: int = 20_000_000
    users: int = 138_000
    items: int = 27_000
    files: int = 20
    zipf_exponent: float = 1.0
    activity_sigma: float = 1.2
    seed: int = 0


def generate(spec: SyntheticSpec, folder: str | Path) -> list[Path]:
    """Write `spec.files` Parquet files of about rows / files events each; return their paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(spec.seed)
    user_p = _user_activity(rng, spec)
    item_p = _item_popularity(rng, spec)
    user_cdf, item_cdf = np.cumsum(user_p), np.cumsum(item_p)

    paths = []
    slice_s = SPAN_S // spec.files
    for index in range(spec.files):
        rows = spec.rows // spec.files + (1 if index < spec.rows % spec.files else 0)
        users = np.minimum(np.searchsorted(user_cdf, rng.random(rows)), spec.users - 1)
        items = np.minimum(np.searchsorted(item_cdf, rng.random(rows)), spec.items - 1)
        timestamps = START_S + index * slice_s + rng.integers(0, slice_s, size=rows)
        table = pa.table({
            "user_id": _ids("u", users),
            "item_id": _ids("i", items),
            "timestamp": pa.array(timestamps, pa.int64()),
        })
        path = folder / f"part-{index:05d}.parquet"
        pq.write_table(table, path, row_group_size=1_000_000)
        paths.append(path)
        logger.info("Wrote %s (%d rows)", path, rows)
    return paths


def _user_activity(rng: np.random.Generator, spec: SyntheticSpec) -> np.ndarray:
    weights = rng.lognormal(mean=0.0, sigma=spec.activity_sigma, size=spec.users)
    return weights / weights.sum()


def _item_popularity(rng: np.random.Generator, spec: SyntheticSpec) -> np.ndarray:
    ranks = np.arange(1, spec.items + 1, dtype=np.float64)
    weights = 1.0 / ranks ** spec.zipf_exponent
    # Item ids do not follow popularity, so sorted-id vocabularies see no pattern.
    weights = weights[rng.permutation(spec.items)]
    return weights / weights.sum()


def _ids(prefix: str, numbers: np.ndarray) -> pa.Array:
    return pc.binary_join_element_wise(prefix, pc.cast(pa.array(numbers), pa.string()), "")
