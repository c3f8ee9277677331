"""Preprocess an interaction log on Ray Data into leave-one-out sequence splits.

Steps: read every input file with its file and row position, drop rows with a null id or
timestamp, build the item vocabulary, order each user's events, drop users with too few
events, and write the splits. Every dropped row is counted by reason, so
`rows_read == interactions + sum(dropped.values())` always holds.

Output directory layout:
    vocab.parquet      item_index (int32, 1..N; 0 is padding) and item_id (string)
    sequences/         user_id, item_ids (list<int32>), timestamps (list<int64>), oldest first
    train/             user_id, item_ids: all events but the last two
    valid/             user_id, history (all but the last two), target (second-to-last)
    test/              user_id, history (all but the last), target (last)
    stats.json         counts, drops by reason and sequence-length percentiles
"""

from __future__ import annotations

import glob
import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray

from rayrec.data.config import PrepareConfig

logger = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("user_id", "item_id", "timestamp")
PADDING_ID = 0
ROWS_PER_PARTITION = 1_000_000


@dataclass
class PrepareStats:
    """Counts of one preprocessing run."""

    rows_read: int
    rows_read_per_file: dict[str, int]
    dropped: dict[str, int]
    interactions: int
    users: int
    items: int
    sequence_length: dict[str, float]
    wall_time_s: float = 0.0
    splits: dict[str, int] = field(default_factory=dict)


def list_input_files(input_path: str) -> list[str]:
    """Expand a Parquet file, a directory or a glob into a sorted list of files."""
    path = Path(input_path).expanduser()
    if path.is_dir():
        files = sorted(str(p) for p in path.rglob("*.parquet"))
    elif any(ch in input_path for ch in "*?["):
        files = sorted(glob.glob(input_path))
    elif path.exists():
        files = [str(path)]
    else:
        raise FileNotFoundError(f"Input path not found: {input_path}. Pass a Parquet file, a directory or a glob.")
    if not files:
        raise FileNotFoundError(f"No Parquet files found under {input_path}.")
    return files


def prepare(config: PrepareConfig, input_files: list[str]) -> PrepareStats:
    """Run the preprocessing pipeline and write the splits to `config.output_dir`."""
    start = time.perf_counter()
    output_dir = Path(config.output_dir)
    if output_dir.exists():
        logger.warning("Replacing the existing output directory %s", output_dir)
        shutil.rmtree(output_dir)
    output_dir.mkdir(parents=True)
    logger.info("Preparing %d input file(s) into %s", len(input_files), output_dir)

    events = _read_events(input_files).materialize()
    rows_read_per_file = _count_rows_per_file(events, input_files)
    rows_read = sum(rows_read_per_file.values())

    valid_events = events.map_batches(_keep_rows_with_ids, batch_format="pyarrow").materialize()
    dropped = {"null_id_or_timestamp": rows_read - valid_events.count()}

    partitions = _shuffle_partitions(rows_read)
    # NOTE: the vocabulary also contains items seen only by users dropped as too short below.
    vocab = _build_vocab(valid_events, partitions)
    pq.write_table(vocab, output_dir / "vocab.parquet")
    item_index = dict(zip(vocab["item_id"].to_pylist(), vocab["item_index"].to_pylist()))

    sequences = valid_events.groupby("user_id", num_partitions=partitions).map_groups(
        _build_user_sequence, batch_format="pyarrow", fn_kwargs={"item_index": item_index}
    ).materialize()
    min_length = config.min_sequence_length
    long_enough = sequences.map_batches(
        lambda batch: batch.filter(pc.greater_equal(batch["length"], min_length)), batch_format="pyarrow"
    ).materialize()
    dropped["too_short_user_rows"] = int(sequences.sum("length") or 0) - int(long_enough.sum("length") or 0)

    long_enough = long_enough.sort("user_id").repartition(partitions).materialize()
    splits = _write_splits(long_enough, output_dir)

    lengths = np.array([row["length"] for row in long_enough.select_columns(["length"]).take_all()], dtype=np.int64)
    stats = PrepareStats(
        rows_read=rows_read,
        rows_read_per_file=rows_read_per_file,
        dropped=dropped,
        interactions=int(lengths.sum()),
        users=int(len(lengths)),
        items=vocab.num_rows,
        sequence_length=_percentiles(lengths),
        wall_time_s=round(time.perf_counter() - start, 2),
        splits=splits,
    )
    _check_accounting(stats)
    (output_dir / "stats.json").write_text(json.dumps(asdict(stats), indent=2) + "\n")
    logger.info(
        "Prepared %d users, %d items, %d interactions (dropped %s) in %.1f s",
        stats.users, stats.items, stats.interactions, stats.dropped, stats.wall_time_s,
    )
    return stats


def _read_events(input_files: list[str]) -> ray.data.Dataset:
    """Read each file in one task, tagging rows with their file and row position.

    The (file_index, row_index) pair orders events that share a timestamp by their
    position in the input, a tie-break that does not depend on the item id.
    """
    files = ray.data.from_items([{"file_index": i, "path": p} for i, p in enumerate(input_files)])
    return files.map_batches(_read_one_file, batch_size=1, batch_format="pyarrow")


def _read_one_file(batch: pa.Table) -> pa.Table:
    path = batch["path"][0].as_py()
    file_index = batch["file_index"][0].as_py()
    schema = pq.read_schema(path)
    missing = [name for name in REQUIRED_COLUMNS if name not in schema.names]
    if missing:
        raise ValueError(
            f"{path}: missing column(s) {', '.join(missing)}; found {', '.join(schema.names)}. "
            f"rayrec expects {', '.join(REQUIRED_COLUMNS)}."
        )

    table = pq.read_table(path, columns=list(REQUIRED_COLUMNS))
    if not pa.types.is_integer(table.schema.field("timestamp").type):
        raise ValueError(
            f"{path}: column timestamp has type {table.schema.field('timestamp').type}; "
            "expected integer seconds (int64)."
        )

    return pa.table({
        "user_id": pc.cast(table["user_id"], pa.string()),
        "item_id": pc.cast(table["item_id"], pa.string()),
        "timestamp": pc.cast(table["timestamp"], pa.int64()),
        "file_index": pa.array(np.full(table.num_rows, file_index, dtype=np.int32)),
        "row_index": pa.array(np.arange(table.num_rows, dtype=np.int64)),
    })


def _count_rows_per_file(events: ray.data.Dataset, input_files: list[str]) -> dict[str, int]:
    per_file = events.groupby("file_index", num_partitions=1).count()
    counts = {row["file_index"]: row["count()"] for row in per_file.take_all()}
    return {path: int(counts.get(i, 0)) for i, path in enumerate(input_files)}


def _keep_rows_with_ids(batch: pa.Table) -> pa.Table:
    valid = pc.and_(pc.is_valid(batch["user_id"]), pc.is_valid(batch["item_id"]))
    valid = pc.and_(valid, pc.is_valid(batch["timestamp"]))
    # An empty id is as unusable as a null one.
    valid = pc.and_(valid, pc.fill_null(pc.not_equal(batch["user_id"], ""), False))
    valid = pc.and_(valid, pc.fill_null(pc.not_equal(batch["item_id"], ""), False))
    return batch.filter(valid)


def _shuffle_partitions(rows: int) -> int:
    # Ray Data's default of 200 hash partitions makes hundreds of tiny files for small logs.
    return max(1, min(200, rows // ROWS_PER_PARTITION + 1))


def _build_vocab(events: ray.data.Dataset, partitions: int) -> pa.Table:
    """Map raw item ids to 1..N in sorted string order; 0 stays the padding id."""
    counts = events.groupby("item_id", num_partitions=partitions).count()
    item_ids = sorted(row["item_id"] for row in counts.take_all())
    return pa.table({
        "item_index": pa.array(np.arange(1, len(item_ids) + 1, dtype=np.int32)),
        "item_id": pa.array(item_ids, type=pa.string()),
    })


def _build_user_sequence(events: pa.Table, item_index: dict[str, int]) -> pa.Table:
    order = pc.sort_indices(events, sort_keys=[
        ("timestamp", "ascending"), ("file_index", "ascending"), ("row_index", "ascending"),
    ])
    events = events.take(order)
    items = [item_index[item] for item in events["item_id"].to_pylist()]
    return pa.table({
        "user_id": pa.array([events["user_id"][0].as_py()], type=pa.string()),
        "item_ids": pa.array([items], type=pa.list_(pa.int32())),
        "timestamps": pa.array([events["timestamp"].to_pylist()], type=pa.list_(pa.int64())),
        "length": pa.array([len(items)], type=pa.int64()),
    })


def leave_one_out(item_ids: list[int]) -> tuple[list[int], tuple[list[int], int], tuple[list[int], int]]:
    """Split one time-ordered sequence into train items, (valid history, target), (test history, target)."""
    if len(item_ids) < 3:
        raise ValueError(f"leave-one-out needs at least 3 events per user, got {len(item_ids)}.")
    train = item_ids[:-2]
    return train, (train, item_ids[-2]), (item_ids[:-1], item_ids[-1])


def _split_batch(batch: pa.Table, split: str) -> pa.Table:
    rows = [leave_one_out(items) for items in batch["item_ids"].to_pylist()]
    if split == "train":
        return pa.table({
            "user_id": batch["user_id"],
            "item_ids": pa.array([train for train, _, _ in rows], type=pa.list_(pa.int32())),
        })

    pairs = [valid if split == "valid" else test for _, valid, test in rows]
    return pa.table({
        "user_id": batch["user_id"],
        "history": pa.array([history for history, _ in pairs], type=pa.list_(pa.int32())),
        "target": pa.array([target for _, target in pairs], type=pa.int32()),
    })


def _write_splits(sequences: ray.data.Dataset, output_dir: Path) -> dict[str, int]:
    sequences.drop_columns(["length"]).write_parquet(str(output_dir / "sequences"))
    counts = {}
    for split in ("train", "valid", "test"):
        part = sequences.map_batches(_split_batch, batch_format="pyarrow", fn_kwargs={"split": split})
        part.write_parquet(str(output_dir / split))
        counts[split] = sequences.count()
    return counts


def _percentiles(lengths: np.ndarray) -> dict[str, float]:
    if len(lengths) == 0:
        return {}
    points = {"min": 0, "p25": 25, "p50": 50, "p75": 75, "p90": 90, "p99": 99, "max": 100}
    return {name: float(np.percentile(lengths, q)) for name, q in points.items()}


def _check_accounting(stats: PrepareStats) -> None:
    accounted = stats.interactions + sum(stats.dropped.values())
    if accounted != stats.rows_read:
        raise RuntimeError(
            f"Row accounting failed: read {stats.rows_read} rows but kept {stats.interactions} and "
            f"dropped {sum(stats.dropped.values())}. This is a rayrec bug; please report it."
        )


def prepare_from_config(config: PrepareConfig) -> PrepareStats:
    """Fetch the configured dataset if needed, then run `prepare` on it."""
    if config.input_path is not None:
        input_files = list_input_files(config.input_path)
    else:
        from rayrec.data.datasets import fetch

        input_files = [str(fetch(config.dataset, config.cache_dir))]
    return prepare(config, input_files)
