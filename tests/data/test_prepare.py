"""Preprocessing on a real local Ray: accounting, ordering, vocabulary and splits."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rayrec.data.config import PrepareConfig
from rayrec.data.prepare import list_input_files, prepare

pytestmark = pytest.mark.ray


def _write(path, rows):
    table = pa.table({
        "user_id": pa.array([r[0] for r in rows], pa.string()),
        "item_id": pa.array([r[1] for r in rows], pa.string()),
        "timestamp": pa.array([r[2] for r in rows], pa.int64()),
    })
    pq.write_table(table, path)
    return path


@pytest.fixture(scope="module")
def hand_made(ray_local, tmp_path_factory):
    """Prepare a small log with ties, nulls and short users once for the tests below."""
    folder = tmp_path_factory.mktemp("hand_made")
    rows = [
        # user a: two events share timestamp 20; file order (z then b) must win over item id order.
        ("a", "x", 10), ("a", "z", 20), ("a", "b", 20), ("a", "y", 30),
        ("b", "y", 5), ("b", "x", 6), ("b", "z", 7),
        ("c", "x", 1), ("c", "y", 2),  # too short: 2 events
        (None, "x", 3),  # null user
        ("d", None, 4),  # null item
        ("e", "x", None),  # null timestamp
        ("e", "", 4),  # empty item id
        ("f", "y", 9_000_000_000_000),  # int64 timestamp beyond 32 bits, alone: too short
    ]
    log = _write(folder / "log.parquet", rows)
    out = folder / "out"
    stats = prepare(PrepareConfig(dataset=None, input_path=str(log), output_dir=str(out)), [str(log)])
    return stats, out


def test_prepare_accounts_for_every_row(hand_made):
    stats, out = hand_made

    assert stats.rows_read == 14
    assert stats.dropped == {"null_id_or_timestamp": 4, "too_short_user_rows": 3}
    assert stats.interactions == 7
    assert stats.rows_read == stats.interactions + sum(stats.dropped.values())
    assert stats.users == 2
    saved = json.loads((out / "stats.json").read_text())
    assert saved["rows_read"] == 14


def test_prepare_orders_ties_by_input_position(hand_made):
    _, out = hand_made
    vocab = pq.read_table(out / "vocab.parquet")
    item_of = dict(zip(vocab["item_index"].to_pylist(), vocab["item_id"].to_pylist()))
    sequences = {row["user_id"]: row for row in pq.read_table(out / "sequences").to_pylist()}

    assert [item_of[i] for i in sequences["a"]["item_ids"]] == ["x", "z", "b", "y"]
    assert sequences["a"]["timestamps"] == [10, 20, 20, 30]


def test_prepare_vocabulary_is_sorted_and_starts_at_one(hand_made):
    _, out = hand_made
    vocab = pq.read_table(out / "vocab.parquet")

    assert vocab["item_id"].to_pylist() == ["b", "x", "y", "z"]
    assert vocab["item_index"].to_pylist() == [1, 2, 3, 4]


def test_prepare_writes_leave_one_out_splits(hand_made):
    _, out = hand_made
    sequences = {row["user_id"]: row["item_ids"] for row in pq.read_table(out / "sequences").to_pylist()}
    train = {row["user_id"]: row["item_ids"] for row in pq.read_table(out / "train").to_pylist()}
    valid = {row["user_id"]: row for row in pq.read_table(out / "valid").to_pylist()}
    test = {row["user_id"]: row for row in pq.read_table(out / "test").to_pylist()}

    assert set(sequences) == {"a", "b"}
    for user, items in sequences.items():
        assert train[user] == items[:-2]
        assert valid[user]["history"] == items[:-2]
        assert valid[user]["target"] == items[-2]
        assert test[user]["history"] == items[:-1]
        assert test[user]["target"] == items[-1]
    assert pq.read_table(out / "sequences").schema.field("timestamps").type == pa.list_(pa.int64())


def test_prepare_same_output_for_one_or_many_files(ray_local, tmp_path):
    from conftest import write_interactions

    whole = write_interactions(tmp_path / "whole.parquet", num_users=25, seed=3)
    parts = tmp_path / "parts"
    parts.mkdir()
    for index, start in enumerate(range(0, whole.num_rows, 97)):
        pq.write_table(whole.slice(start, 97), parts / f"part-{index:03d}.parquet")

    one = prepare(PrepareConfig(dataset=None, input_path="x", output_dir=str(tmp_path / "one")), [str(tmp_path / "whole.parquet")])
    many = prepare(PrepareConfig(dataset=None, input_path="x", output_dir=str(tmp_path / "many")), list_input_files(str(parts)))

    assert one.interactions == many.interactions == whole.num_rows
    assert len(many.rows_read_per_file) > 1
    for name in ("vocab.parquet", "train", "valid", "test"):
        assert pq.read_table(tmp_path / "one" / name).equals(pq.read_table(tmp_path / "many" / name))


def test_prepare_missing_column_names_file(ray_local, tmp_path):
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"user": ["a"], "item_id": ["x"], "timestamp": [1]}), bad)

    with pytest.raises(Exception, match="bad.parquet: missing column\\(s\\) user_id"):
        prepare(PrepareConfig(dataset=None, input_path=str(bad), output_dir=str(tmp_path / "out")), [str(bad)])


def test_prepare_rejects_float_timestamps(ray_local, tmp_path):
    bad = tmp_path / "float_ts.parquet"
    pq.write_table(pa.table({"user_id": ["a"], "item_id": ["x"], "timestamp": [1.5]}), bad)

    with pytest.raises(Exception, match="timestamp has type double"):
        prepare(PrepareConfig(dataset=None, input_path=str(bad), output_dir=str(tmp_path / "out")), [str(bad)])


def test_list_input_files_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="Input path not found"):
        list_input_files(str(tmp_path / "missing.parquet"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="No Parquet files"):
        list_input_files(str(tmp_path / "empty"))
