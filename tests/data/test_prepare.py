"""Preprocessing on a real local Ray: accounting, ordering, cleaning, splits, leakage and determinism."""

import hashlib
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rayrec.data.config import PrepareConfig
from rayrec.data.formats import InvalidInputError
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


def _run(folder, rows, **config_values):
    log = _write(folder / "log.parquet", rows)
    out = folder / "out"
    config = PrepareConfig(dataset=None, input_path=str(log), output_dir=str(out), **config_values)
    return prepare(config, list_input_files(str(log))), out


def _by_user(path, column):
    return {row["user_id"]: row[column] for row in pq.read_table(path).to_pylist()}


def _item_names(out):
    vocab = pq.read_table(out / "vocab.parquet")
    return dict(zip(vocab["item_index"].to_pylist(), vocab["item_id"].to_pylist()))


@pytest.fixture(scope="module")
def hand_made(ray_local, tmp_path_factory):
    """Prepare a small log with ties, bad rows and short users once, skipping bad rows."""
    rows = [
        # user a: two events share timestamp 20; file order (z then b) must win over item id order.
        ("a", "x", 10), ("a", "z", 20), ("a", "b", 20), ("a", "y", 30),
        ("b", "y", 5), ("b", "x", 6), ("b", "z", 7),
        ("c", "x", 1), ("c", "y", 2),  # too short: 2 events
        (None, "x", 3),  # null user
        ("d", None, 4),  # null item
        ("e", "x", None),  # null timestamp
        ("e", "", 4),  # empty item id
        ("f", "y", 9_000_000_000_000),  # int64 timestamp beyond 32 bits, alone: a user left with one event
    ]
    return _run(tmp_path_factory.mktemp("hand_made"), rows, on_invalid="skip")


def test_prepare_accounts_for_every_row(hand_made):
    stats, out = hand_made

    assert stats.rows_read == 14
    assert stats.dropped["null_id"] == 3
    assert stats.dropped["unparsable_timestamp"] == 1
    assert stats.dropped["too_short_user"] == 3
    assert sum(stats.dropped.values()) == 7
    assert stats.interactions == stats.rows_kept == 7
    assert stats.rows_read == stats.rows_kept + sum(stats.dropped.values())
    assert stats.users == 2
    assert stats.splits == {"train": 2, "valid": 2, "test": 2}


def test_prepare_report_json_matches(hand_made):
    stats, out = hand_made
    saved = json.loads((out / "stats.json").read_text())

    assert saved["rows_read"] == 14
    assert saved["rows_read"] == saved["rows_kept"] + sum(saved["dropped"].values())
    assert list(saved["rows_read_per_file"].values()) == [14]
    assert saved["sequence_length"]["max"] == 4.0
    assert set(saved["dropped"]) >= {"null_id", "unparsable_timestamp", "below_min_rating", "duplicate", "k_core",
                                     "too_short_user"}


def test_prepare_orders_ties_by_input_position(hand_made):
    _, out = hand_made
    item_of = _item_names(out)
    sequences = {row["user_id"]: row for row in pq.read_table(out / "sequences").to_pylist()}

    assert [item_of[i] for i in sequences["a"]["item_ids"]] == ["x", "z", "b", "y"]
    assert sequences["a"]["timestamps"] == [10, 20, 20, 30]


def test_prepare_vocabulary_is_sorted_and_starts_at_one(hand_made):
    _, out = hand_made
    vocab = pq.read_table(out / "vocab.parquet")

    assert vocab["item_id"].to_pylist() == ["b", "x", "y", "z"]
    assert vocab["item_index"].to_pylist() == [1, 2, 3, 4]
    assert vocab.schema.field("item_index").type == pa.int32()


def test_prepare_writes_leave_one_out_splits(hand_made):
    _, out = hand_made
    sequences = _by_user(out / "sequences", "item_ids")
    train = _by_user(out / "train", "item_ids")
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
    assert pq.read_table(out / "test").schema.field("target").type == pa.int32()


def test_prepare_popularity_counts_training_events_only(hand_made):
    _, out = hand_made
    popularity = {row["item_id"]: row["train_count"] for row in pq.read_table(out / "popularity.parquet").to_pylist()}

    # a: x z | b y (train x, z); b: y | x z (train y).
    assert popularity == {"b": 0, "x": 1, "y": 1, "z": 1}


def test_k_core_iterates_until_stable(ray_local, tmp_path):
    users = {f"u{i}": list("abcd") for i in range(1, 5)}
    users |= {"u5": ["e", "x"], "u6": list("abce"), "u7": list("abce"), "u8": list("abde")}
    rows = [(user, item, t) for user, items in users.items() for t, item in enumerate(items)]

    stats, out = _run(tmp_path, rows, k_core=4)

    # u5 (2 events) is too short at once, so e falls to 3 events and takes u6..u8 with it;
    # one pass over items then users would have kept e.
    assert stats.k_core_iterations == 2
    assert stats.dropped["too_short_user"] == 2
    assert stats.dropped["k_core"] == 12
    assert stats.interactions == 16
    assert set(_by_user(out / "sequences", "item_ids")) == {"u1", "u2", "u3", "u4"}
    assert sorted(_item_names(out).values()) == ["a", "b", "c", "d"]


def test_duplicates_and_consecutive_repeats(ray_local, tmp_path):
    rows = [("a", "x", 1), ("a", "x", 1), ("a", "y", 2), ("a", "y", 3), ("a", "x", 4), ("a", "z", 5),
            ("b", "x", 1), ("b", "y", 1), ("b", "x", 1)]

    stats, out = _run(tmp_path, rows, drop_duplicates=True, drop_consecutive_repeats=True)
    item_of = _item_names(out)
    sequences = _by_user(out / "sequences", "item_ids")

    assert [item_of[i] for i in sequences["a"]] == ["x", "y", "x", "z"]
    assert "b" not in sequences
    assert stats.dropped["duplicate"] == 2
    assert stats.dropped["too_short_user"] == 2
    assert stats.dropped["consecutive_repeat"] == 1
    assert stats.rows_read == stats.interactions + sum(stats.dropped.values())


def test_max_len_keeps_most_recent_events(ray_local, tmp_path):
    rows = [("a", f"i{t}", t) for t in range(10)]

    _, out = _run(tmp_path, rows, max_len=3)
    item_of = _item_names(out)
    train = _by_user(out / "train", "item_ids")
    test = {row["user_id"]: row for row in pq.read_table(out / "test").to_pylist()}

    assert [item_of[i] for i in train["a"]] == ["i5", "i6", "i7"]
    assert [item_of[i] for i in test["a"]["history"]] == ["i6", "i7", "i8"]
    assert item_of[test["a"]["target"]] == "i9"
    assert len(_by_user(out / "sequences", "item_ids")["a"]) == 10


def test_temporal_split_and_no_leakage(ray_local, tmp_path):
    rows = [
        ("u1", "p", 10), ("u1", "q", 20), ("u1", "r", 150), ("u1", "s", 250), ("u1", "t", 260),
        ("u2", "p", 30), ("u2", "w", 210),
        ("u3", "v", 120), ("u3", "z", 130),
    ]

    stats, out = _run(tmp_path, rows, split="temporal", valid_cutoff=100, test_cutoff=200, min_sequence_length=2)
    item_of = _item_names(out)
    train = {user: [item_of[i] for i in items] for user, items in _by_user(out / "train", "item_ids").items()}
    valid = {row["user_id"]: ([item_of[i] for i in row["history"]], item_of[row["target"]])
             for row in pq.read_table(out / "valid").to_pylist()}
    test = {row["user_id"]: ([item_of[i] for i in row["history"]], item_of[row["target"]])
            for row in pq.read_table(out / "test").to_pylist()}
    popularity = {row["item_id"]: row["train_count"] for row in pq.read_table(out / "popularity.parquet").to_pylist()}

    assert train == {"u1": ["p", "q"], "u2": ["p"]}
    assert valid == {"u1": (["p", "q"], "r")}
    assert test == {"u1": (["p", "q", "r"], "s"), "u2": (["p"], "w")}
    assert popularity == {"p": 2, "q": 1, "r": 0, "s": 0, "t": 0, "v": 0, "w": 0, "z": 0}
    # Training data and the seen items excluded in validation contain no later event.
    evaluation_targets = {target for _, target in [*valid.values(), *test.values()]}
    assert not evaluation_targets & {item for items in train.values() for item in items}
    assert not {"r", "s", "t", "w"} & {item for history, _ in valid.values() for item in history}
    assert stats.split == "temporal"
    assert stats.splits == {"train": 2, "valid": 1, "test": 2}


def test_leave_one_out_no_leakage(ray_local, tmp_path):
    rows = [("a", "i1", 1), ("a", "i2", 2), ("a", "v1", 3), ("a", "t1", 4),
            ("b", "i1", 1), ("b", "i3", 2), ("b", "v2", 3), ("b", "t2", 4)]

    _, out = _run(tmp_path, rows)
    item_of = _item_names(out)
    train_items = {item_of[i] for items in _by_user(out / "train", "item_ids").values() for i in items}
    popularity = {row["item_id"]: row["train_count"] for row in pq.read_table(out / "popularity.parquet").to_pylist()}
    valid_seen = {item_of[i] for row in pq.read_table(out / "valid").to_pylist() for i in row["history"]}

    assert train_items == {"i1", "i2", "i3"}
    assert all(popularity[item] == 0 for item in ("v1", "v2", "t1", "t2"))
    assert popularity["i1"] == 2
    assert valid_seen == {"i1", "i2", "i3"}


def _digests(folder):
    return {str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(folder.rglob("*.parquet"))}


def test_outputs_byte_identical_any_layout(ray_local, tmp_path):
    from conftest import write_interactions

    whole = write_interactions(tmp_path / "whole.parquet", num_users=25, seed=3)
    parts = tmp_path / "parts"
    parts.mkdir()
    for index, start in enumerate(range(0, whole.num_rows, 97)):
        # Small row groups give the reader many chunks per file as well.
        pq.write_table(whole.slice(start, 97), parts / f"part-{index:03d}.parquet", row_group_size=13)

    one = prepare(PrepareConfig(dataset=None, input_path="x", output_dir=str(tmp_path / "one"), num_shards=3),
                  list_input_files(str(tmp_path / "whole.parquet")))
    many = prepare(PrepareConfig(dataset=None, input_path="x", output_dir=str(tmp_path / "many"), num_shards=3),
                   list_input_files(str(parts)))

    context = ray_local.data.DataContext.get_current()
    previous = context.target_max_block_size
    context.target_max_block_size = 2048  # bytes, so every step splits its output into many blocks
    try:
        prepare(PrepareConfig(dataset=None, input_path="x", output_dir=str(tmp_path / "small_blocks"), num_shards=3),
                list_input_files(str(parts)))
    finally:
        context.target_max_block_size = previous

    assert one.interactions == many.interactions == whole.num_rows
    assert len(many.rows_read_per_file) > 1
    assert sum(many.rows_read_per_file.values()) == whole.num_rows
    digests = _digests(tmp_path / "one")
    assert len([name for name in digests if name.startswith("train/")]) == 3
    assert digests == _digests(tmp_path / "many")
    assert digests == _digests(tmp_path / "small_blocks")


def test_prepare_null_id_error_names_file_and_row(ray_local, tmp_path):
    log = _write(tmp_path / "bad.parquet", [("a", "x", 1), (None, "y", 2)])

    with pytest.raises(InvalidInputError, match=r"bad.parquet: row group 0, row 1, column 'user_id': value None"):
        prepare(PrepareConfig(dataset=None, input_path=str(log), output_dir=str(tmp_path / "out")), [str(log)])


def test_prepare_missing_column_names_file(ray_local, tmp_path):
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"user": ["a"], "item_id": ["x"], "timestamp": [1]}), bad)

    with pytest.raises(InvalidInputError, match=r"bad.parquet: missing column 'user_id'"):
        prepare(PrepareConfig(dataset=None, input_path=str(bad), output_dir=str(tmp_path / "out")), [str(bad)])


def test_prepare_empty_input_is_an_error(ray_local, tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("")

    with pytest.raises(InvalidInputError, match="No rows read from 1 input file"):
        prepare(PrepareConfig(dataset=None, input_path=str(empty), output_dir=str(tmp_path / "out")), [str(empty)])


def test_prepare_all_users_too_short_is_an_error(ray_local, tmp_path):
    with pytest.raises(InvalidInputError, match="No users left after filtering.*too_short_user 3"):
        _run(tmp_path, [("a", "x", 1), ("a", "y", 2), ("b", "x", 1)])
    saved = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert saved["dropped"]["too_short_user"] == 3


def test_prepare_csv_directory_with_rating_filter(ray_local, tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "day1.csv").write_text("user,item,stars,time\n007,01,5,1\n007,02,1,2\n007,03,4,3\n")
    (logs / "day2.csv").write_text("user,item,stars,time\n007,04,5,4\n007,05,5,5\n")
    config = PrepareConfig(dataset=None, input_path=str(logs), output_dir=str(tmp_path / "out"), min_rating=4,
                           columns={"user": "user", "item": "item", "timestamp": "time", "rating": "stars"})

    stats = prepare(config, list_input_files(str(logs)))

    assert stats.dropped["below_min_rating"] == 1
    assert list(stats.rows_read_per_file.values()) == [3, 2]
    assert pq.read_table(tmp_path / "out" / "sequences")["user_id"].to_pylist() == ["007"]
    assert pq.read_table(tmp_path / "out" / "vocab.parquet")["item_id"].to_pylist() == ["01", "03", "04", "05"]


def test_outputs_byte_identical_any_worker_count(ray_local, tmp_path):
    """A second Ray with 1 CPU (so Ray Data runs one task at a time) writes the same bytes as this 2-CPU one."""
    import subprocess
    import sys

    from conftest import write_interactions

    write_interactions(tmp_path / "log.parquet", num_users=25, seed=4)
    prepare(PrepareConfig(dataset=None, input_path="x", output_dir=str(tmp_path / "two_cpus"), num_shards=3),
            list_input_files(str(tmp_path / "log.parquet")))
    script = (
        "import ray\n"
        "from rayrec.data.config import PrepareConfig\n"
        "from rayrec.data.prepare import list_input_files, prepare\n"
        "ray.init(num_cpus=1, include_dashboard=False)\n"
        f"prepare(PrepareConfig(dataset=None, input_path='x', output_dir={str(tmp_path / 'one_cpu')!r}, num_shards=3),"
        f" list_input_files({str(tmp_path / 'log.parquet')!r}))\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=300, capture_output=True)

    digests = _digests(tmp_path / "two_cpus")
    assert len(digests) > 3
    assert digests == _digests(tmp_path / "one_cpu")
