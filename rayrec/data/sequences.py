"""Vectorized per-user steps on Arrow tables: one call handles every user of a shard or batch.

Users are rows with list columns (item_ids, timestamps), so no step calls Python once per
user. Each user row also carries its own drop counts by reason. A user whose events are all
dropped stays as a row of length 0 until the splits are written, so its counts are summed.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from rayrec.data.config import PrepareConfig

EVENT_ORDER = [("user_code", "ascending"), ("timestamp", "ascending"), ("file_index", "ascending"),
               ("row_index", "ascending")]
USER_DROP_REASONS = ("duplicate", "consecutive_repeat", "k_core", "too_short_user")
SPLITS = ("train", "valid", "test")
USER_SCHEMA = pa.schema([
    ("shard", pa.int32()), ("user_id", pa.string()), ("item_ids", pa.large_list(pa.string())),
    ("timestamps", pa.large_list(pa.int64())), ("length", pa.int64()),
    *[(reason, pa.int64()) for reason in USER_DROP_REASONS],
])


def build_user_rows(events: pa.Table, drop_duplicates: bool, drop_repeats: bool) -> pa.Table:
    """Order each user's events by (timestamp, file, row) and return one row per user."""
    if events.num_rows == 0:
        return USER_SCHEMA.empty_table()
    # Sorting by an integer user code is much faster than by the id string. Users come out
    # in first-seen order, which varies with the input layout, so write_shard sorts by id.
    user_code = pc.dictionary_encode(events["user_id"].combine_chunks()).indices
    events = events.append_column("user_code", user_code)
    events = events.take(pc.sort_indices(events, sort_keys=EVENT_ORDER))
    user_start = _group_starts(events["user_code"])
    duplicate = np.zeros(events.num_rows, dtype=bool)
    if drop_duplicates:
        duplicate = _duplicates(events)
    events, user_start, duplicate_counts = _drop_events(events, user_start, duplicate)

    repeat = np.zeros(events.num_rows, dtype=bool)
    if drop_repeats:
        items = events["item_id"].combine_chunks()
        repeat[1:] = pc.equal(items[1:], items[:-1]).to_numpy(zero_copy_only=False) & ~user_start[1:]
    events, user_start, repeat_counts = _drop_events(events, user_start, repeat)

    offsets = np.append(np.flatnonzero(user_start), events.num_rows).astype(np.int64)
    users = pc.take(events["user_id"], pa.array(offsets[:-1]))
    zeros = np.zeros(len(users), dtype=np.int64)
    return pa.table({
        "shard": pc.take(events["shard"], pa.array(offsets[:-1])),
        "user_id": users,
        "item_ids": _lists(offsets, events["item_id"]),
        "timestamps": _lists(offsets, events["timestamp"]),
        "length": pa.array(np.diff(offsets)),
        "duplicate": pa.array(duplicate_counts),
        "consecutive_repeat": pa.array(repeat_counts),
        "k_core": pa.array(zeros),
        "too_short_user": pa.array(zeros),
    })


def _group_starts(sorted_ids: pa.ChunkedArray) -> np.ndarray:
    ids = sorted_ids.combine_chunks() if isinstance(sorted_ids, pa.ChunkedArray) else sorted_ids
    starts = np.ones(len(ids), dtype=bool)
    if len(ids) > 1:
        starts[1:] = pc.not_equal(ids[1:], ids[:-1]).to_numpy(zero_copy_only=False)
    return starts


def _duplicates(events: pa.Table) -> np.ndarray:
    """Mark every repeat of a (user, item, timestamp) event after its first in input order."""
    order = pc.sort_indices(events, sort_keys=[
        ("user_code", "ascending"), ("timestamp", "ascending"), ("item_id", "ascending"),
        ("file_index", "ascending"), ("row_index", "ascending"),
    ]).to_numpy()
    keys = events.select(["user_code", "timestamp", "item_id"]).take(pa.array(order))
    same = np.zeros(len(order), dtype=bool)
    if len(order) > 1:
        same[1:] = True
        for name in keys.column_names:
            column = keys[name].combine_chunks()
            same[1:] &= pc.equal(column[1:], column[:-1]).to_numpy(zero_copy_only=False)
    duplicate = np.zeros(len(order), dtype=bool)
    duplicate[order] = same
    return duplicate


def _drop_events(events: pa.Table, user_start: np.ndarray, drop: np.ndarray) -> tuple[pa.Table, np.ndarray, np.ndarray]:
    """Remove marked events; return the events, new user starts and drops per user."""
    user_of_event = np.cumsum(user_start) - 1
    counts = np.bincount(user_of_event[drop], minlength=int(user_start.sum())).astype(np.int64)
    if not drop.any():
        return events, user_start, counts
    # A user's first event is never a duplicate or repeat, so every user keeps its first event.
    return events.filter(pa.array(~drop)), user_start[~drop], counts


def _lists(offsets: np.ndarray, values: pa.ChunkedArray | pa.Array) -> pa.ListArray:
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    return pa.LargeListArray.from_arrays(pa.array(offsets, pa.int64()), values)


def list_offsets(lists: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, pa.Array]:
    """Return (offsets from 0, flat values) of a list column."""
    if isinstance(lists, pa.ChunkedArray):
        lists = lists.combine_chunks()
    offsets = lists.offsets.to_numpy().astype(np.int64)
    values = lists.values.slice(offsets[0], offsets[-1] - offsets[0])
    return offsets - offsets[0], values


def slice_lists(offsets: np.ndarray, values: pa.Array, starts: np.ndarray, ends: np.ndarray,
                list_type: pa.DataType | None = None) -> pa.Array:
    """Return list i = values[offsets[i] + starts[i] : offsets[i] + ends[i]] for every row."""
    lengths = np.maximum(ends - starts, 0)
    new_offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=new_offsets[1:])
    indices = np.arange(new_offsets[-1], dtype=np.int64) - np.repeat(new_offsets[:-1] - offsets[:-1] - starts, lengths)
    taken = values.take(pa.array(indices))
    if list_type is not None and pa.types.is_list(list_type):
        return pa.ListArray.from_arrays(pa.array(new_offsets.astype(np.int32)), taken)
    return pa.LargeListArray.from_arrays(pa.array(new_offsets), taken)


def filter_lists(batch: pa.Table, keep: np.ndarray) -> tuple[pa.Table, np.ndarray]:
    """Keep only flat events where `keep` is true; return the batch and events removed per user."""
    offsets, items = list_offsets(batch["item_ids"])
    _, timestamps = list_offsets(batch["timestamps"])
    lengths = np.diff(offsets)
    parents = np.repeat(np.arange(len(lengths)), lengths)
    removed = np.bincount(parents[~keep], minlength=len(lengths)).astype(np.int64)

    new_lengths = lengths - removed
    new_offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(new_lengths, out=new_offsets[1:])
    mask = pa.array(keep)
    batch = batch.set_column(batch.schema.get_field_index("item_ids"), "item_ids", _lists(new_offsets, items.filter(mask)))
    batch = batch.set_column(batch.schema.get_field_index("timestamps"), "timestamps",
                             _lists(new_offsets, timestamps.filter(mask)))
    batch = batch.set_column(batch.schema.get_field_index("length"), "length", pa.array(new_lengths))
    return batch, removed


def count_items(batch: pa.Table, train_cutoff: int | None = None, split: str = "leave_one_out") -> pa.Table:
    """Count each item's events in a batch of users: all events, and training events only.

    Training events are all but each user's last two under leave-one-out, and the events
    before `train_cutoff` under the temporal split.
    """
    offsets, items = list_offsets(batch["item_ids"])
    lengths = np.diff(offsets)
    if split == "temporal":
        _, timestamps = list_offsets(batch["timestamps"])
        train = timestamps.to_numpy(zero_copy_only=False) < train_cutoff
    else:
        position = np.arange(offsets[-1]) - np.repeat(offsets[:-1], lengths)
        train = position < np.repeat(lengths - 2, lengths)

    encoded = pc.dictionary_encode(items)
    total = np.bincount(encoded.indices.to_numpy(zero_copy_only=False), minlength=len(encoded.dictionary))
    train_counts = np.bincount(encoded.indices.to_numpy(zero_copy_only=False)[train], minlength=len(encoded.dictionary))
    return pa.table({
        "item_id": pc.cast(encoded.dictionary, pa.string()),
        "count": pa.array(total.astype(np.int64)),
        "train_count": pa.array(train_counts.astype(np.int64)),
    })


def apply_thresholds(batch: pa.Table, low_items: pa.Array, user_min: int, min_length: int) -> pa.Table:
    """Drop events of `low_items`, then every event of users left below a threshold.

    The events of users below `min_length` count as too_short_user. The events of users
    below `user_min` (the k-core threshold) but not below `min_length` count as k_core, as
    do the events of low items.
    """
    if batch.num_rows == 0:
        return USER_SCHEMA.empty_table()
    offsets, items = list_offsets(batch["item_ids"])
    keep = np.ones(offsets[-1], dtype=bool)
    if len(low_items):
        keep = ~pc.fill_null(pc.is_in(items, value_set=low_items), False).to_numpy(zero_copy_only=False)
    batch, removed_items = filter_lists(batch, keep)

    lengths = batch["length"].to_numpy()
    too_short = (lengths > 0) & (lengths < min_length)
    below_core = (lengths > 0) & ~too_short & (lengths < user_min)
    dead = too_short | below_core
    if dead.any():
        offsets, _ = list_offsets(batch["item_ids"])
        batch, _ = filter_lists(batch, ~np.repeat(dead, np.diff(offsets)))

    k_core = batch["k_core"].to_numpy() + removed_items + np.where(below_core, lengths, 0)
    too_short_user = batch["too_short_user"].to_numpy() + np.where(too_short, lengths, 0)
    batch = batch.set_column(batch.schema.get_field_index("k_core"), "k_core", pa.array(k_core))
    return batch.set_column(batch.schema.get_field_index("too_short_user"), "too_short_user", pa.array(too_short_user))


def index_items(users: pa.Table, vocab_ids: pa.Array) -> pa.Table:
    """Replace raw item ids by their vocabulary index (1..N, int32), unless already done."""
    if pa.types.is_integer(users.schema.field("item_ids").type.value_type):
        return users
    offsets, items = list_offsets(users["item_ids"])
    item_index = pc.cast(pc.add(pc.index_in(items, value_set=vocab_ids), 1), pa.int32())
    return users.set_column(users.schema.get_field_index("item_ids"), "item_ids", _lists(offsets, item_index))


def write_shard(users: pa.Table, vocab_ids: pa.Array, config: PrepareConfig, output_dir: str,
                schema_metadata: dict[bytes, bytes] | None = None,
                filesystem: pafs.FileSystem | None = None) -> pa.Table:
    """Write the sequences and splits of one shard's users, with `schema_metadata` on every file.

    Returns one row per user, dropped ones included: length, drops by reason and split flags.
    """
    shard = users["shard"][0].as_py()
    dropped_users = users.filter(pc.equal(users["length"], 0))
    users = users.filter(pc.greater(users["length"], 0))
    users = users.take(pc.sort_indices(users, sort_keys=[("user_id", "ascending")]))

    offsets, item_index = list_offsets(index_items(users, vocab_ids)["item_ids"])
    _, timestamps = list_offsets(users["timestamps"])
    int_lists = pa.list_(pa.int32())
    everything = np.zeros(len(users), dtype=np.int64), np.diff(offsets)
    sequences = pa.table({
        "user_id": pc.cast(users["user_id"], pa.string()),
        "item_ids": slice_lists(offsets, item_index, *everything, int_lists),
        "timestamps": pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), timestamps),
    })
    tables = {"sequences": sequences, **split_tables(sequences, offsets, item_index, timestamps, config)}

    for name, table in tables.items():
        if table.num_rows:
            pq.write_table(table.replace_schema_metadata(schema_metadata), f"{output_dir}/{name}/part-{shard:05d}.parquet",
                           filesystem=filesystem)
    kept = pa.table({
        "length": pa.array(np.diff(offsets)),
        **{reason: users[reason] for reason in USER_DROP_REASONS},
        **{f"in_{name}": pc.is_in(sequences["user_id"], value_set=tables[name]["user_id"].combine_chunks())
           for name in SPLITS},
    })
    dropped = pa.table({
        "length": dropped_users["length"],
        **{reason: dropped_users[reason] for reason in USER_DROP_REASONS},
        **{f"in_{name}": pa.array(np.zeros(dropped_users.num_rows, dtype=bool)) for name in SPLITS},
    })
    return pa.concat_tables([kept, dropped])


def split_tables(sequences: pa.Table, offsets: np.ndarray, item_index: pa.Array, timestamps: pa.Array,
                 config: PrepareConfig) -> dict[str, pa.Table]:
    """Build train (user_id, item_ids) and valid/test (user_id, history, target) tables."""
    lengths = np.diff(offsets)
    if config.split == "temporal":
        valid_cut = _first_at_or_after(offsets, timestamps, config.cutoff("valid_cutoff"))
        test_cut = _first_at_or_after(offsets, timestamps, config.cutoff("test_cutoff"))
        train_end = valid_cut
        valid_rows = (valid_cut > 0) & (valid_cut < test_cut)
        test_rows = (test_cut > 0) & (test_cut < lengths)
        valid_target, test_target = valid_cut, test_cut
    else:
        train_end = lengths - 2
        valid_target, test_target = lengths - 2, lengths - 1
        valid_rows = test_rows = np.ones(len(lengths), dtype=bool)

    train_rows = train_end > 0
    return {
        "train": _train_table(sequences, offsets, item_index, train_end, train_rows, config.max_len),
        "valid": _target_table(sequences, offsets, item_index, valid_target, valid_rows, config.max_len),
        "test": _target_table(sequences, offsets, item_index, test_target, test_rows, config.max_len),
    }


def _first_at_or_after(offsets: np.ndarray, timestamps: pa.Array, cutoff: int) -> np.ndarray:
    """Per user, the position of the first event at or after `cutoff` (its length when none)."""
    lengths = np.diff(offsets)
    before = (timestamps.to_numpy(zero_copy_only=False) < cutoff).astype(np.int64)
    counts = np.add.reduceat(before, offsets[:-1]) if len(before) else np.zeros(len(lengths), dtype=np.int64)
    # reduceat returns the element itself for empty ranges; every user here has events.
    return np.minimum(counts, lengths)


def _history_start(end: np.ndarray, max_len: int | None) -> np.ndarray:
    return np.zeros_like(end) if max_len is None else np.maximum(end - max_len, 0)


def _train_table(sequences, offsets, item_index, end, rows, max_len) -> pa.Table:
    items = slice_lists(offsets, item_index, _history_start(end, max_len), end, pa.list_(pa.int32()))
    return pa.table({"user_id": sequences["user_id"], "item_ids": items}).filter(pa.array(rows))


def _target_table(sequences, offsets, item_index, target, rows, max_len) -> pa.Table:
    history = slice_lists(offsets, item_index, _history_start(target, max_len), target, pa.list_(pa.int32()))
    positions = np.minimum(offsets[:-1] + target, max(len(item_index) - 1, 0))
    targets = pc.take(item_index, pa.array(positions)) if len(item_index) else pa.array([], pa.int32())
    table = pa.table({"user_id": sequences["user_id"], "history": history, "target": targets})
    return table.filter(pa.array(rows))
