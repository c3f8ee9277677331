"""Readers and row checks on real files, without Ray: formats, schemas, bad rows, listing."""

import gzip
from collections import Counter

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from rayrec.data.config import ColumnMapping, PrepareConfig
from rayrec.data.formats import InvalidInputError, list_input_files, normalize_chunk, read_raw_chunks


def read_events(path, **config_values):
    """Read one file as prepare does; return (events as rows, rows read, drops by reason)."""
    config = PrepareConfig(dataset=None, input_path=str(path), **config_values)
    tables, rows, dropped = [], 0, Counter()
    for chunk in read_raw_chunks(config, pafs.LocalFileSystem(), str(path), str(path)):
        result = normalize_chunk(chunk, config, str(path), 0, rows, num_shards=4)
        rows += chunk.table.num_rows
        dropped.update(result.dropped)
        tables.append(result.events)
    events = [row for table in tables for row in table.select(["user_id", "item_id", "timestamp"]).to_pylist()]
    return events, rows, dropped


def triples(events):
    return [(row["user_id"], row["item_id"], row["timestamp"]) for row in events]


def test_csv_header_ids_stay_strings(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("user_id,item_id,timestamp\n007,0042,10\n7,42,11\n")

    events, rows, _ = read_events(path)

    assert rows == 2
    assert triples(events) == [("007", "0042", 10), ("7", "42", 11)]


def test_csv_bom_header_is_read(tmp_path):
    path = tmp_path / "bom.csv"
    path.write_bytes("\ufeffuser_id,item_id,timestamp\nu1,i1,5\n".encode())

    events, _, _ = read_events(path)

    assert triples(events) == [("u1", "i1", 5)]


def test_csv_numeric_then_alphanumeric_ids(tmp_path):
    # Enough numeric rows that a type-guessing reader would settle on integers first.
    lines = ["user_id,item_id,timestamp"] + [f"{i},{i},{i}" for i in range(50_000)] + ["u-x,0099,50000"]
    path = tmp_path / "mixed.csv"
    path.write_text("\n".join(lines) + "\n")

    events, rows, _ = read_events(path)

    assert rows == 50_001
    assert triples(events)[-1] == ("u-x", "0099", 50_000)
    assert triples(events)[1] == ("1", "1", 1)


def test_csv_without_header_any_delimiter(tmp_path):
    path = tmp_path / "log.txt"
    path.write_text("a|x|1\nb|y|2\n")

    events, _, _ = read_events(path, format="csv", delimiter="|", has_header=False,
                               column_names=["user_id", "item_id", "timestamp"])

    assert triples(events) == [("a", "x", 1), ("b", "y", 2)]


def test_gzip_csv_is_read(tmp_path):
    path = tmp_path / "log.csv.gz"
    with gzip.open(path, "wt") as handle:
        handle.write("user_id,item_id,timestamp\na,x,1\n")

    events, _, _ = read_events(path)

    assert triples(events) == [("a", "x", 1)]


def test_movielens_100k_u_data(tmp_path):
    path = tmp_path / "u.data"
    path.write_text("196\t242\t3\t881250949\n186\t302\t3\t891717742\n")

    events, _, _ = read_events(path)

    assert triples(events) == [("196", "242", 881250949), ("186", "302", 891717742)]


def test_movielens_ratings_dat(tmp_path):
    path = tmp_path / "ratings.dat"
    path.write_text("1::1193::5::978300760\n1::661::3::978302109\n")

    events, _, _ = read_events(path)

    assert triples(events) == [("1", "1193", 978300760), ("1", "661", 978302109)]


def test_movielens_ratings_csv_with_min_rating(tmp_path):
    path = tmp_path / "ratings.csv"
    path.write_text("userId,movieId,rating,timestamp\n1,2,3.5,1112486027\n1,29,4.0,1112484676\n")

    events, rows, dropped = read_events(path, format="movielens-csv", columns=ColumnMapping(rating="rating"),
                                        min_rating=4.0)

    assert rows == 2
    assert triples(events) == [("1", "29", 1112484676)]
    assert dropped["below_min_rating"] == 1


def test_recbole_inter(tmp_path):
    path = tmp_path / "ml.inter"
    path.write_text("user_id:token\titem_id:token\trating:float\ttimestamp:float\n196\t242\t3\t881250949\n")

    events, _, _ = read_events(path)

    assert triples(events) == [("196", "242", 881250949)]


def test_sequence_lines_keep_file_order(tmp_path):
    path = tmp_path / "seqs.txt"
    path.write_text("u1 i3 i1 i2\nu2 i9\n")

    config = PrepareConfig(dataset=None, input_path=str(path), format="sequence-lines")
    chunk = next(read_raw_chunks(config, pafs.LocalFileSystem(), str(path), str(path)))
    events = normalize_chunk(chunk, config, str(path), 0, 0, num_shards=2).events

    assert events["user_id"].to_pylist() == ["u1", "u1", "u1", "u2"]
    assert events["item_id"].to_pylist() == ["i3", "i1", "i2", "i9"]
    assert events["row_index"].to_pylist() == [0, 1, 2, 3]


def test_pair_lines_reject_extra_fields(tmp_path):
    path = tmp_path / "pairs.txt"
    path.write_text("u1 i1\nu1 i2 i3\n")

    with pytest.raises(InvalidInputError, match=r"pairs.txt: line 2 has 3 fields"):
        read_events(path, format="pair-lines")


def test_jsonl_mixed_id_types_and_iso_timestamps(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_text('{"user_id": 12, "item_id": "007", "timestamp": "2024-05-01T00:00:00Z"}\n'
                    '{"user_id": "ab", "item_id": 7, "timestamp": "2024-05-01T01:00:00+01:00"}\n')

    events, _, _ = read_events(path, timestamp_format="iso8601")

    assert triples(events) == [("12", "007", 1714521600000), ("ab", "7", 1714521600000)]


def test_milliseconds_keep_their_unit(tmp_path):
    path = tmp_path / "ms.csv"
    path.write_text("user_id,item_id,timestamp\na,x,1714521600123\n")

    events, _, _ = read_events(path, timestamp_format="milliseconds")

    assert triples(events) == [("a", "x", 1714521600123)]


def test_float_timestamp_names_file_line_column(tmp_path):
    path = tmp_path / "float.csv"
    path.write_text("user_id,item_id,timestamp\na,x,1\nb,y,1.5\n")

    with pytest.raises(InvalidInputError, match=r"float.csv: line 3, column 'timestamp': value '1.5' is not an "
                                                r"integer timestamp.*on_invalid: skip"):
        read_events(path)


def test_float_timestamp_parquet_column(tmp_path):
    path = tmp_path / "float.parquet"
    pq.write_table(pa.table({"user_id": ["a"], "item_id": ["x"], "timestamp": [1.5]}), path)

    with pytest.raises(InvalidInputError, match=r"row group 0, row 0, column 'timestamp': value 1.5"):
        read_events(path)


def test_null_id_error_names_row(tmp_path):
    path = tmp_path / "null.parquet"
    pq.write_table(pa.table({"user_id": ["a", None], "item_id": ["x", "y"], "timestamp": [1, 2]}), path)

    with pytest.raises(InvalidInputError, match=r"null.parquet: row group 0, row 1, column 'user_id': value None "
                                                r"is a null or empty id"):
        read_events(path)


def test_skip_counts_each_reason(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("user_id,item_id,timestamp\na,x,1\n,x,2\na,,3\na,x,soon\na,x,\nb,y,4\n")

    events, rows, dropped = read_events(path, on_invalid="skip")

    assert rows == 6
    assert triples(events) == [("a", "x", 1), ("b", "y", 4)]
    assert dropped == {"null_id": 2, "unparsable_timestamp": 2}


def test_event_type_filter(tmp_path):
    path = tmp_path / "events.csv"
    path.write_text("user_id,item_id,timestamp,kind\na,x,1,click\na,y,2,view\na,z,3,buy\n")

    events, _, dropped = read_events(path, columns=ColumnMapping(event_type="kind"), event_types=["click", "buy"])

    assert [row["item_id"] for row in events] == ["x", "z"]
    assert dropped["event_type_filtered"] == 1


def test_missing_column_says_what_to_set(tmp_path):
    path = tmp_path / "cols.csv"
    path.write_text("user,item_id,timestamp\na,x,1\n")

    with pytest.raises(InvalidInputError, match=r"cols.csv: missing column 'user_id' \(data.columns.user\).*"
                                                r"found user, item_id, timestamp. Set data.columns.user"):
        read_events(path)


def test_column_mapping_renames(tmp_path):
    path = tmp_path / "mapped.csv"
    path.write_text("visitor;sku;ts\nv1;s1;9\n")

    events, _, _ = read_events(path, delimiter=";", columns=ColumnMapping(user="visitor", item="sku", timestamp="ts"))

    assert triples(events) == [("v1", "s1", 9)]


def test_empty_csv_reads_no_rows(tmp_path):
    path = tmp_path / "empty.csv"
    path.write_text("")

    events, rows, _ = read_events(path)

    assert rows == 0
    assert events == []


def test_list_input_files_dir_glob_and_hidden(tmp_path):
    (tmp_path / "logs" / "day=1").mkdir(parents=True)
    for name in ("day=1/b.csv", "a.csv", "_SUCCESS", ".a.csv.crc"):
        (tmp_path / "logs" / name).write_text("user_id,item_id,timestamp\n")

    listed = list_input_files(str(tmp_path / "logs"))
    globbed = list_input_files(str(tmp_path / "logs" / "*.csv"))

    assert [p.rsplit("/", 1)[-1] for p in listed.paths] == ["a.csv", "b.csv"]
    assert [p.rsplit("/", 1)[-1] for p in globbed.paths] == ["a.csv"]


def test_list_input_files_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="Input path not found"):
        list_input_files(str(tmp_path / "missing.parquet"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="No input files"):
        list_input_files(str(tmp_path / "empty"))


def test_unknown_extension_asks_for_format(tmp_path):
    path = tmp_path / "log.bin"
    path.write_text("x")

    with pytest.raises(InvalidInputError, match="set data.format"):
        read_events(path)


def test_csv_null_markers_are_ids(tmp_path):
    path = tmp_path / "na.csv"
    path.write_text("user_id,item_id,timestamp\nNA,null,1\n")

    events, _, _ = read_events(path)

    assert triples(events) == [("NA", "null", 1)]


def test_parquet_timestamp_type_to_seconds(tmp_path):
    path = tmp_path / "typed.parquet"
    moments = pa.array([1714521600123], pa.timestamp("ms", tz="UTC"))
    pq.write_table(pa.table({"user_id": ["a"], "item_id": ["x"], "timestamp": moments}), path)

    seconds, _, _ = read_events(path)
    milliseconds, _, _ = read_events(path, timestamp_format="milliseconds")

    assert triples(seconds) == [("a", "x", 1714521600)]
    assert triples(milliseconds) == [("a", "x", 1714521600123)]


def test_ratings_dat_skips_blank_lines_keeps_numbers(tmp_path):
    path = tmp_path / "ratings.dat"
    path.write_text("1::10::5::100\n\n1::11::4::oops\n")

    with pytest.raises(InvalidInputError, match=r"ratings.dat: line 3, column 'timestamp': value 'oops'"):
        read_events(path)
