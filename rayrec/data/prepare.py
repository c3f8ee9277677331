"""Preprocess an interaction log on Ray Data into sequence splits, accounting for every row.

Steps, each a streaming Ray Data stage:
1. Read each input file in chunks, check and type every row (`formats.normalize_chunk`),
   and tag it with its file and row position and a shard (a stable hash of its user id).
2. Group events by shard, not by user: one call per shard sorts its events by (user,
   timestamp, file, row) and builds one row per user with list columns, so the work is
   vectorized and independent of the number of users. Duplicates and consecutive repeats
   are dropped here.
3. Drop users below min_sequence_length and, with k_core set, repeat until stable: count
   items, drop items and users with fewer than k events.
4. Count items (all events, and training events only) to build the vocabulary and the
   training popularity.
5. Group users by shard again and write one Parquet file per shard and split.

Every dropped row is counted by reason, so `rows_read == interactions + sum(dropped.values())`
always holds, and every Parquet output is the same, byte for byte, whatever the number of input
files, blocks or workers.

Output directory layout:
    vocab.parquet       item_index (int32, 1..N in sorted item_id order; 0 is padding), item_id
    popularity.parquet  item_index, item_id, train_count (events in the training split only)
    sequences/          user_id, item_ids (list<int32>), timestamps (list<int64>), oldest first
    train/              user_id, item_ids: the training events, at most max_len, most recent
    valid/, test/       user_id, history (list<int32>), target (int32)
    stats.json          the report: rows read per file, drops by reason, counts, percentiles

Splits:
    leave_one_out  train: all events but the last two; valid: history = train events, target =
                   second-to-last; test: history = all but the last, target = last.
    temporal       train: events before valid_cutoff; valid: history = events before
                   valid_cutoff, target = first event in [valid_cutoff, test_cutoff); test:
                   history = events before test_cutoff, target = first event at or after
                   test_cutoff. A user gets a valid or test row only when it has both a
                   history and such a target.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import ray

from rayrec import storage
from rayrec.data.config import PrepareConfig
from rayrec.data.formats import (
    INVALID_REASONS, InputFiles, InvalidInputError, list_input_files, normalize_chunk, read_raw_chunks,
)
from rayrec.data.privacy import pseudonymize_column, require_user_id_key, schema_metadata, user_id_info
from rayrec.data.sequences import (
    SPLITS, USER_DROP_REASONS, apply_thresholds, build_user_rows, count_items, index_items, write_shard,
)

logger = logging.getLogger(__name__)

PADDING_ID = 0
DROP_REASONS = (*INVALID_REASONS, "below_min_rating", "event_type_filtered", *USER_DROP_REASONS)

__all__ = ["PrepareStats", "list_input_files", "prepare", "prepare_from_config", "leave_one_out"]


@dataclass
class PrepareStats:
    """The report of one preprocessing run, written as stats.json."""

    rows_read: int
    rows_read_per_file: dict[str, int]
    dropped: dict[str, int]
    interactions: int
    users: int
    items: int
    sequence_length: dict[str, float]
    wall_time_s: float = 0.0
    splits: dict[str, int] = field(default_factory=dict)
    rows_kept: int = 0
    dropped_per_file: dict[str, dict[str, int]] = field(default_factory=dict)
    k_core_iterations: int = 0
    split: str = "leave_one_out"
    user_ids: dict[str, str] | None = None  # scheme and key fingerprint when user ids are pseudonymised


@ray.remote(num_cpus=0)
class _ReadCounts:
    """Rows read and dropped per file, set once per file so a retried read task overwrites."""

    def __init__(self) -> None:
        self.counts: dict[int, tuple[int, dict[str, int]]] = {}

    def record(self, file_index: int, rows: int, dropped: dict[str, int]) -> None:
        self.counts[file_index] = (rows, dropped)

    def get(self) -> dict[int, tuple[int, dict[str, int]]]:
        return self.counts


def prepare(config: PrepareConfig, input_files: InputFiles | list[str]) -> PrepareStats:
    """Run the preprocessing pipeline and write the splits and report to `config.output_dir`."""
    start = time.perf_counter()
    files = input_files if isinstance(input_files, InputFiles) else _local_files(input_files)
    # Read the key before touching the output, so a missing key fails fast and changes nothing.
    user_id_key = require_user_id_key(config.user_id_key_file, "data.pseudonymize_users") if config.pseudonymize_users else None
    filesystem, output_dir = _reset_output_dir(config.output_dir)
    shown = storage.without_query(config.output_dir) if storage.is_uri(config.output_dir) else output_dir
    logger.info("Preparing %d input file(s) into %s", len(files.paths), shown)

    counter = _ReadCounts.remote()
    try:
        users = _run("read, group by user and drop short users",
                     lambda: _drop_short_users(_read_users(files, config, counter, user_id_key), config).materialize())
    except Exception:
        # Ray Data's shuffle fails on a dataset without blocks, so empty input surfaces here.
        _check_not_empty(files, ray.get(counter.get.remote()))
        raise
    read_counts = ray.get(counter.get.remote())
    ray.kill(counter)
    _check_not_empty(files, read_counts)
    rows_per_file = {label: read_counts.get(i, (0, {}))[0] for i, label in enumerate(files.labels)}
    drops_per_file = {label: read_counts.get(i, (0, {}))[1] for i, label in enumerate(files.labels)}

    users, iterations = _filter_users(users, config)
    items = _run("count items", lambda: _item_counts(users, config))
    vocab_ids = _write_vocab(items, filesystem, output_dir)
    metadata = schema_metadata(user_id_key) if user_id_key is not None else None
    summary = _run("write splits", lambda: _write_outputs(users, vocab_ids, config, filesystem, output_dir, metadata))

    stats = _build_stats(config, summary, rows_per_file, drops_per_file, len(vocab_ids), iterations)
    stats.user_ids = user_id_info(pa.schema([], metadata=metadata))
    stats.wall_time_s = round(time.perf_counter() - start, 2)
    _check_accounting(stats)
    with filesystem.open_output_stream(f"{output_dir}/stats.json") as stream:
        stream.write((json.dumps(asdict(stats), indent=2) + "\n").encode("utf-8"))
    logger.info("Prepared %d users, %d items, %d interactions (dropped %s) in %.1f s",
                stats.users, stats.items, stats.interactions, stats.dropped, stats.wall_time_s)
    if stats.users == 0:
        raise InvalidInputError(f"No users left after filtering; see {shown}/stats.json for drops by reason "
                                f"({_nonzero(stats.dropped)}). Lower data.k_core or data.min_sequence_length.")
    return stats


def _check_not_empty(files: InputFiles, read_counts: dict[int, tuple[int, dict[str, int]]]) -> None:
    all_read = len(read_counts) == len(files.paths)
    if all_read and sum(rows for rows, _ in read_counts.values()) == 0:
        shown = ", ".join(files.labels[:3]) + (", ..." if len(files.labels) > 3 else "")
        raise InvalidInputError(f"No rows read from {len(files.paths)} input file(s) ({shown}): the input is empty. "
                                "Check data.input_path and data.format.")


def _local_files(paths: list[str]) -> InputFiles:
    resolved = [str(Path(p).expanduser().resolve()) for p in paths]
    return InputFiles(pafs.LocalFileSystem(), resolved, list(paths))


def _reset_output_dir(path: str) -> tuple[pafs.FileSystem, str]:
    """Empty or create the output folder and its split folders; return its filesystem and absolute path.

    A local path must be on storage every node mounts when the cluster has several nodes; a
    URI (s3://, gs://) is reachable from every node that has credentials for it.
    """
    if storage.is_uri(path):
        filesystem, output_dir = storage.replace_dir(path)
        for name in ("sequences", *SPLITS):
            filesystem.create_dir(f"{output_dir}/{name}")
        return filesystem, output_dir

    output_dir = Path(path)
    if output_dir.exists():
        logger.warning("Replacing the existing output directory %s", output_dir)
        shutil.rmtree(output_dir)
    output_dir.mkdir(parents=True)
    for name in ("sequences", *SPLITS):
        (output_dir / name).mkdir()
    return pafs.LocalFileSystem(), str(output_dir.resolve())


def _run(step: str, action):
    """Run one Ray Data step, turning a bad-input failure in a worker into a plain InvalidInputError."""
    logger.info("Step: %s", step)
    try:
        return action()
    except Exception as err:
        invalid = _find_invalid_input(err)
        if invalid is None:
            raise
        raise InvalidInputError(invalid) from None


def _find_invalid_input(err: BaseException) -> str | None:
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        cause = getattr(err, "cause", None)
        if type(err) is InvalidInputError:
            return str(err)
        if isinstance(cause, InvalidInputError):
            return str(cause.args[0]) if cause.args else str(cause)
        err = cause if isinstance(cause, BaseException) else err.__cause__
    return None


def _read_users(files: InputFiles, config: PrepareConfig, counter, user_id_key: bytes | None) -> ray.data.Dataset:
    listing = [{"file_index": i, "path": path, "label": label}
               for i, (path, label) in enumerate(zip(files.paths, files.labels))]
    events = ray.data.from_items(listing, override_num_blocks=max(1, min(len(listing), 1000))).map_batches(
        _read_files, batch_size=1, batch_format="pyarrow",
        fn_kwargs={"config": config, "filesystem": files.filesystem, "counter": counter, "user_id_key": user_id_key},
    )
    return events.groupby("shard", num_partitions=config.num_shards).map_groups(
        build_user_rows, batch_format="pyarrow",
        fn_kwargs={"drop_duplicates": config.drop_duplicates, "drop_repeats": config.drop_consecutive_repeats},
    )


def _read_files(batch: pa.Table, config: PrepareConfig, filesystem: pafs.FileSystem, counter,
                user_id_key: bytes | None) -> Iterator[pa.Table]:
    for entry in batch.to_pylist():
        rows, dropped = 0, Counter()
        for chunk in read_raw_chunks(config, filesystem, entry["path"], entry["label"]):
            result = normalize_chunk(chunk, config, entry["label"], entry["file_index"], rows, config.num_shards)
            rows += chunk.table.num_rows
            dropped.update(result.dropped)
            if result.events.num_rows:
                yield _pseudonymize_events(result.events, user_id_key)
        ray.get(counter.record.remote(entry["file_index"], rows, dict(dropped)))


def _pseudonymize_events(events: pa.Table, user_id_key: bytes | None) -> pa.Table:
    # Hashing right after reading keeps raw user ids out of Ray's object store and its spill files.
    if user_id_key is None:
        return events
    column = events.schema.get_field_index("user_id")
    return events.set_column(column, "user_id", pseudonymize_column(user_id_key, events["user_id"]))


def _drop_short_users(users: ray.data.Dataset, config: PrepareConfig) -> ray.data.Dataset:
    thresholds = {"user_min": config.k_core or 0, "min_length": config.min_sequence_length}
    return users.map_batches(apply_thresholds, batch_format="pyarrow",
                             fn_kwargs={"low_items": pa.array([], pa.string()), **thresholds})


def _filter_users(users: ray.data.Dataset, config: PrepareConfig) -> tuple[ray.data.Dataset, int]:
    """With k_core set, drop items and users with fewer than k events until none is left."""
    k = config.k_core or 0
    no_items = pa.array([], pa.string())
    thresholds = {"user_min": k, "min_length": config.min_sequence_length}
    if not k:
        return users, 0

    iteration = 0
    while True:
        iteration += 1
        counts = users.map_batches(count_items, batch_format="pyarrow").groupby("item_id").sum("count")
        low = counts.map_batches(_items_below, batch_format="pyarrow", fn_kwargs={"k": k}).to_arrow_refs()
        low_items = pa.concat_tables(ray.get(low)).column("item_id").combine_chunks() if low else no_items
        logger.info("k-core iteration %d: %d item(s) with fewer than %d events", iteration, len(low_items), k)
        if len(low_items) == 0:
            return users, iteration
        low_items = pc.cast(low_items, pa.string())
        users = users.map_batches(apply_thresholds, batch_format="pyarrow",
                                  fn_kwargs={"low_items": low_items, **thresholds}).materialize()


def _items_below(counts: pa.Table, k: int) -> pa.Table:
    return counts.filter(pc.less(counts["sum(count)"], k)).select(["item_id"])


def _item_counts(users: ray.data.Dataset, config: PrepareConfig) -> pa.Table:
    cutoff = config.cutoff("valid_cutoff") if config.split == "temporal" else None
    counts = users.map_batches(count_items, batch_format="pyarrow",
                               fn_kwargs={"train_cutoff": cutoff, "split": config.split})
    totals = counts.groupby("item_id").sum(["count", "train_count"])
    tables = [table for table in ray.get(totals.to_arrow_refs()) if table.num_rows]
    if not tables:
        return pa.table({"item_id": pa.array([], pa.string()), "count": pa.array([], pa.int64()),
                         "train_count": pa.array([], pa.int64())})
    table = pa.concat_tables(tables)
    table = table.filter(pc.greater(table["sum(count)"], 0))
    table = table.take(pc.sort_indices(table, sort_keys=[("item_id", "ascending")]))
    return pa.table({"item_id": pc.cast(table["item_id"], pa.string()), "count": table["sum(count)"],
                     "train_count": table["sum(train_count)"]})


def _write_vocab(items: pa.Table, filesystem: pafs.FileSystem, output_dir: str) -> pa.Array:
    """Write vocab.parquet and popularity.parquet; return the item ids in index order."""
    index = pa.array(np.arange(1, items.num_rows + 1, dtype=np.int32))
    item_ids = items["item_id"].combine_chunks()
    pq.write_table(pa.table({"item_index": index, "item_id": item_ids}), f"{output_dir}/vocab.parquet",
                   filesystem=filesystem)
    pq.write_table(pa.table({"item_index": index, "item_id": item_ids,
                             "train_count": pc.cast(items["train_count"], pa.int64())}),
                   f"{output_dir}/popularity.parquet", filesystem=filesystem)
    return item_ids


def _write_outputs(users: ray.data.Dataset, vocab_ids: pa.Array, config: PrepareConfig, filesystem: pafs.FileSystem,
                   output_dir: str, metadata: dict[bytes, bytes] | None) -> pa.Table:
    # Indexing items before the shuffle moves int32 ids instead of strings between workers.
    indexed = users.map_batches(index_items, batch_format="pyarrow", fn_kwargs={"vocab_ids": vocab_ids})
    written = indexed.groupby("shard", num_partitions=config.num_shards).map_groups(
        write_shard, batch_format="pyarrow",
        fn_kwargs={"vocab_ids": vocab_ids, "config": config, "output_dir": output_dir, "schema_metadata": metadata,
                   "filesystem": filesystem},
    )
    tables = [table for table in ray.get(written.to_arrow_refs()) if table.num_rows]
    _write_empty_splits(filesystem, output_dir, metadata)
    if not tables:
        return pa.table({"length": pa.array([], pa.int64()),
                         **{reason: pa.array([], pa.int64()) for reason in USER_DROP_REASONS},
                         **{f"in_{name}": pa.array([], pa.bool_()) for name in SPLITS}})
    return pa.concat_tables(tables)


def _write_empty_splits(filesystem: pafs.FileSystem, output_dir: str, metadata: dict[bytes, bytes] | None) -> None:
    # A split with no rows at all still gets one empty file, so readers find its schema.
    int_list = pa.list_(pa.int32())
    schemas = {
        "sequences": pa.schema([("user_id", pa.string()), ("item_ids", int_list), ("timestamps", pa.list_(pa.int64()))]),
        "train": pa.schema([("user_id", pa.string()), ("item_ids", int_list)]),
        "valid": pa.schema([("user_id", pa.string()), ("history", int_list), ("target", pa.int32())]),
        "test": pa.schema([("user_id", pa.string()), ("history", int_list), ("target", pa.int32())]),
    }
    for name, schema in schemas.items():
        if not filesystem.get_file_info(pafs.FileSelector(f"{output_dir}/{name}", allow_not_found=True)):
            pq.write_table(schema.with_metadata(metadata).empty_table(), f"{output_dir}/{name}/part-00000.parquet",
                           filesystem=filesystem)


def _build_stats(config, summary, rows_per_file, drops_per_file, items, iterations) -> PrepareStats:
    dropped = Counter({reason: 0 for reason in DROP_REASONS})
    for file_drops in drops_per_file.values():
        dropped.update(file_drops)
    for reason in USER_DROP_REASONS:
        dropped[reason] += int(pc.sum(summary[reason]).as_py() or 0)

    kept = pc.greater(summary["length"], 0)
    lengths = summary["length"].filter(kept).to_numpy()
    interactions = int(lengths.sum())
    return PrepareStats(
        rows_read=sum(rows_per_file.values()),
        rows_read_per_file=rows_per_file,
        dropped=dict(dropped),
        interactions=interactions,
        users=len(lengths),
        items=items,
        sequence_length=_percentiles(lengths),
        splits={name: int(pc.sum(summary[f"in_{name}"]).as_py() or 0) for name in SPLITS},
        rows_kept=interactions,
        dropped_per_file={label: {k: int(v) for k, v in d.items() if v} for label, d in drops_per_file.items()},
        k_core_iterations=iterations,
        split=config.split,
    )


def leave_one_out(item_ids: list[int]) -> tuple[list[int], tuple[list[int], int], tuple[list[int], int]]:
    """Split one time-ordered sequence into train items, (valid history, target), (test history, target).

    The reference definition that the vectorized `sequences.split_tables` follows.
    """
    if len(item_ids) < 3:
        raise ValueError(f"leave-one-out needs at least 3 events per user, got {len(item_ids)}.")
    train = item_ids[:-2]
    return train, (train, item_ids[-2]), (item_ids[:-1], item_ids[-1])


def _percentiles(lengths: np.ndarray) -> dict[str, float]:
    if len(lengths) == 0:
        return {}
    points = {"min": 0, "p25": 25, "p50": 50, "p75": 75, "p90": 90, "p99": 99, "max": 100}
    return {name: float(np.percentile(lengths, q)) for name, q in points.items()}


def _nonzero(counts: dict[str, int]) -> str:
    return ", ".join(f"{reason} {count}" for reason, count in counts.items() if count) or "none"


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
