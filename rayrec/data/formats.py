"""Input files: listing on any pyarrow filesystem, streaming readers per format, row checks.

Every reader yields raw chunks whose mapped columns are strings (or integers from typed
Parquet columns), so ids are never type-guessed. `normalize_chunk` then turns a chunk into
events with the columns user_id, item_id, timestamp (int64), file_index and row_index, and
counts or rejects every row it cannot use.
"""

from __future__ import annotations

import fnmatch
import io
import json
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from rayrec.data.config import PrepareConfig

logger = logging.getLogger(__name__)

CHUNK_ROWS = 1_000_000
CSV_BLOCK_BYTES = 16 << 20
LINE_CHUNK_BYTES = 32 << 20

# Drop reasons of rows that fail a check; `on_invalid: error` raises on the first of these.
INVALID_REASONS = ("null_id", "unparsable_timestamp", "unparsable_rating")

# Presets for recommender formats: delimiter, header, column names (None: from the header).
PRESETS = {
    "movielens-100k": ("\t", False, ["user_id", "item_id", "rating", "timestamp"]),
    "movielens-dat": ("::", False, ["user_id", "item_id", "rating", "timestamp"]),
    "movielens-csv": (",", True, None),
    "recbole": ("\t", True, None),
}
MOVIELENS_CSV_COLUMNS = {"userId": "user_id", "movieId": "item_id"}


class InvalidInputError(ValueError):
    """A row or file that cannot be read as configured."""


@dataclass
class InputFiles:
    """Input files on one filesystem: `paths` for the filesystem, `labels` as shown to users."""

    filesystem: pafs.FileSystem
    paths: list[str]
    labels: list[str]


def list_input_files(input_path: str) -> InputFiles:
    """Expand a file, a directory or a glob, local or on any pyarrow filesystem, into sorted files."""
    filesystem, path, prefix = _resolve(input_path)
    info = filesystem.get_file_info(path)

    if any(ch in path for ch in "*?["):
        paths = _glob(filesystem, path)
    elif info.type == pafs.FileType.Directory:
        selector = pafs.FileSelector(path, recursive=True)
        paths = [entry.path for entry in filesystem.get_file_info(selector)
                 if entry.type == pafs.FileType.File and not _is_hidden(entry.path, path)]
    elif info.type == pafs.FileType.File:
        paths = [path]
    else:
        raise FileNotFoundError(f"Input path not found: {input_path}. Pass a file, a directory or a glob.")

    paths = sorted(paths)
    if not paths:
        raise FileNotFoundError(f"No input files found under {input_path}.")
    return InputFiles(filesystem, paths, [prefix + p for p in paths])


def _resolve(input_path: str) -> tuple[pafs.FileSystem, str, str]:
    if "://" in input_path:
        scheme = input_path.split("://", 1)[0]
        filesystem, path = pafs.FileSystem.from_uri(input_path)
        prefix = "" if scheme == "file" else f"{scheme}://"
        return filesystem, path, prefix
    return pafs.LocalFileSystem(), str(Path(input_path).expanduser().resolve()), ""


def _glob(filesystem: pafs.FileSystem, pattern: str) -> list[str]:
    parts = pattern.split("/")
    fixed = [part for part in parts[: next(i for i, p in enumerate(parts) if any(ch in p for ch in "*?["))]]
    base = "/".join(fixed) or "/"
    selector = pafs.FileSelector(base, recursive=True, allow_not_found=True)
    return [entry.path for entry in filesystem.get_file_info(selector)
            if entry.type == pafs.FileType.File and _glob_match(entry.path, pattern)]


def _glob_match(path: str, pattern: str) -> bool:
    # As in shell globs, a wildcard matches within one path segment, never across a '/'.
    path_parts, pattern_parts = path.split("/"), pattern.split("/")
    return len(path_parts) == len(pattern_parts) and all(
        fnmatch.fnmatchcase(part, wildcard) for part, wildcard in zip(path_parts, pattern_parts))


def _is_hidden(path: str, root: str) -> bool:
    # Spark and Hadoop leave _SUCCESS and .crc files next to the data.
    relative = path[len(root):].lstrip("/")
    return any(part.startswith((".", "_")) for part in relative.split("/"))


def detect_format(config: PrepareConfig, label: str) -> str:
    """Return the configured format, or the one the file name implies when the format is auto."""
    if config.format != "auto":
        return config.format
    name = label.rsplit("/", 1)[-1].lower()
    for suffix in (".gz", ".bz2", ".zst"):
        name = name.removesuffix(suffix)
    if name.endswith(".parquet"):
        return "parquet"
    if name.endswith((".csv", ".tsv")):
        return "csv"
    if name.endswith((".jsonl", ".ndjson", ".json")):
        return "jsonl"
    if name.endswith(".inter"):
        return "recbole"
    if name == "u.data":
        return "movielens-100k"
    if name == "ratings.dat":
        return "movielens-dat"
    raise InvalidInputError(
        f"{label}: cannot tell the format from the file name; set data.format to one of "
        "parquet, csv, jsonl, movielens-100k, movielens-dat, movielens-csv, recbole, sequence-lines, pair-lines."
    )


# ---------------------------------------------------------------------------------------
# Raw chunks: a table of input columns plus a function that names the location of a row.


@dataclass
class RawChunk:
    """Rows of one file as read, with `locate(i)` naming row i's line or row group."""

    table: pa.Table
    locate: Callable[[int], str]


def read_raw_chunks(config: PrepareConfig, filesystem: pafs.FileSystem, path: str, label: str) -> Iterator[RawChunk]:
    """Stream the rows of one file in chunks, in file order."""
    file_format = detect_format(config, label)
    if file_format == "parquet":
        yield from _parquet_chunks(config, filesystem, path, label)
    elif file_format == "jsonl":
        yield from _jsonl_chunks(config, filesystem, path, label)
    elif file_format in ("sequence-lines", "pair-lines"):
        yield from _sequence_line_chunks(filesystem, path, label, pairs=file_format == "pair-lines")
    else:
        delimiter, has_header, names = PRESETS.get(file_format, (config.delimiter or ",", config.has_header, config.column_names))
        yield from _delimited_chunks(config, filesystem, path, label, file_format, delimiter, has_header, names)


def _mapped_columns(config: PrepareConfig) -> list[str]:
    columns = config.columns
    names = [columns.user, columns.item]
    if config.format not in ("sequence-lines", "pair-lines"):
        names.append(columns.timestamp)
    names += [name for name in (columns.rating, columns.event_type) if name is not None]
    return names


def _check_columns(found: list[str], config: PrepareConfig, label: str, where: str) -> None:
    roles = {config.columns.user: "user", config.columns.item: "item", config.columns.timestamp: "timestamp",
             config.columns.rating: "rating", config.columns.event_type: "event_type"}
    for name in _mapped_columns(config):
        if name not in found:
            raise InvalidInputError(
                f"{label}: missing column {name!r} (data.columns.{roles[name]}) in {where}; found {', '.join(found) or 'no columns'}. "
                f"Set data.columns.{roles[name]} to the column that holds the {roles[name]}."
            )


def _parquet_chunks(config: PrepareConfig, filesystem, path: str, label: str) -> Iterator[RawChunk]:
    with filesystem.open_input_file(path) as handle:
        parquet = pq.ParquetFile(handle)
        _check_columns(parquet.schema_arrow.names, config, label, "the Parquet schema")
        for group in range(parquet.num_row_groups):
            table = parquet.read_row_group(group, columns=_mapped_columns(config))
            yield RawChunk(table, lambda i, g=group: f"row group {g}, row {i}")


def _delimited_chunks(config, filesystem, path, label, file_format, delimiter, has_header, names) -> Iterator[RawChunk]:
    if len(delimiter) > 1:
        yield from _multichar_chunks(config, filesystem, path, label, delimiter, has_header, names)
        return

    names = _read_header(filesystem, path, delimiter) if has_header else list(names)
    if names is None:
        return
    found = _rename_preset_columns(names, file_format)
    _check_columns(found, config, label, "the header" if has_header else "data.column_names")

    # Every column is read as text; the conversions in normalize_chunk never guess a type.
    read_options = pacsv.ReadOptions(column_names=names, skip_rows=1 if has_header else 0, block_size=CSV_BLOCK_BYTES)
    # Only an empty field is null: pyarrow's default null markers (NA, null, NaN) are valid ids.
    convert = pacsv.ConvertOptions(column_types={name: pa.string() for name in names}, null_values=[""],
                                   strings_can_be_null=True, quoted_strings_can_be_null=False)
    with filesystem.open_input_stream(path, compression="detect") as stream:
        try:
            reader = pacsv.open_csv(stream, read_options=read_options,
                                    parse_options=pacsv.ParseOptions(delimiter=delimiter), convert_options=convert)
        except pa.ArrowInvalid as err:
            if "Empty CSV file" in str(err):
                return
            raise InvalidInputError(f"{label}: cannot parse as {file_format} with delimiter {delimiter!r}: {err}") from None

        # NOTE: line numbers assume no quoted field spans several lines.
        first_line = 2 if has_header else 1
        for batch in _iterate(reader, label):
            table = pa.Table.from_batches([batch]).rename_columns(found)
            yield RawChunk(table.select(_mapped_columns(config)), lambda i, start=first_line: f"line {start + i}")
            first_line += batch.num_rows


def _read_header(filesystem, path: str, delimiter: str) -> list[str] | None:
    """Return the column names on the first line, or None for an empty file."""
    with filesystem.open_input_stream(path, compression="detect") as stream:
        first = io.TextIOWrapper(stream, encoding="utf-8-sig", newline="").readline()
    if not first.strip():
        return None
    header = pacsv.read_csv(pa.py_buffer(first.encode()), read_options=pacsv.ReadOptions(autogenerate_column_names=True),
                            parse_options=pacsv.ParseOptions(delimiter=delimiter),
                            convert_options=pacsv.ConvertOptions(strings_can_be_null=False))
    return [str(column[0].as_py()) for column in header.columns]


def _iterate(reader, label: str):
    while True:
        try:
            batch = reader.read_next_batch()
        except StopIteration:
            return
        except pa.ArrowInvalid as err:
            raise InvalidInputError(f"{label}: cannot parse the file: {err}") from None
        yield batch


def _rename_preset_columns(names: list[str], file_format: str) -> list[str]:
    if file_format == "recbole":
        return [name.split(":", 1)[0] for name in names]
    if file_format == "movielens-csv":
        return [MOVIELENS_CSV_COLUMNS.get(name, name) for name in names]
    return list(names)


def _text_lines(filesystem, path: str) -> Iterator[tuple[int, list[str]]]:
    """Yield (first line number, lines) chunks of a text file, decoded as UTF-8 without a BOM."""
    with filesystem.open_input_stream(path, compression="detect") as stream:
        text = io.TextIOWrapper(stream, encoding="utf-8-sig", newline=None)
        line_number = 1
        while True:
            lines = text.readlines(LINE_CHUNK_BYTES)
            if not lines:
                return
            yield line_number, [line.rstrip("\r\n") for line in lines]
            line_number += len(lines)


def _multichar_chunks(config, filesystem, path, label, delimiter, has_header, names) -> Iterator[RawChunk]:
    # pyarrow's CSV reader takes a single-character delimiter, so '::' files are split here.
    header = None if has_header else names
    for first_line, lines in _text_lines(filesystem, path):
        if header is None:
            header, lines, first_line = lines[0].split(delimiter), lines[1:], first_line + 1
            _check_columns(header, config, label, "the header")
        else:
            _check_columns(header, config, label, "data.column_names")
        line_numbers = [first_line + offset for offset, line in enumerate(lines) if line]
        lines = [line for line in lines if line]
        fields = pc.split_pattern(pa.array(lines, pa.string()), delimiter)
        columns = {}
        for position, name in enumerate(header):
            if name in _mapped_columns(config):
                columns[name] = pc.list_element(_pad_lists(fields, len(header)), position)
        yield RawChunk(pa.table(columns), lambda i, numbers=line_numbers: f"line {numbers[i]}")


def _pad_lists(fields: pa.ListArray, width: int) -> pa.ListArray:
    lengths = pc.list_value_length(fields).to_numpy(zero_copy_only=False)
    if len(lengths) == 0 or lengths.min() >= width:
        return fields
    rows = [row + [None] * (width - len(row)) for row in fields.to_pylist()]
    return pa.array(rows, pa.list_(pa.string()))


def _jsonl_chunks(config: PrepareConfig, filesystem, path: str, label: str) -> Iterator[RawChunk]:
    # Parsed per line in Python because pyarrow's JSON reader (26.0) rejects a JSON number in a
    # string column, even with an explicit schema, so ids like 12 and "ab" cannot be mixed.
    mapped = _mapped_columns(config)
    for first_line, lines in _text_lines(filesystem, path):
        values: dict[str, list] = {name: [] for name in mapped}
        line_numbers = []
        for offset, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise InvalidInputError(f"{label}: line {first_line + offset} is not valid JSON: {err}.") from None
            if not isinstance(record, dict):
                raise InvalidInputError(f"{label}: line {first_line + offset} is not a JSON object.")
            if not line_numbers:
                _check_columns(list(record), config, label, f"line {first_line + offset}")
            for name in mapped:
                values[name].append(_json_text(record.get(name)))
            line_numbers.append(first_line + offset)
        table = pa.table({name: pa.array(column, pa.string()) for name, column in values.items()})
        yield RawChunk(table, lambda i, numbers=line_numbers: f"line {numbers[i]}")


def _json_text(value) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return str(value).lower()
    return json.dumps(value)


def _sequence_line_chunks(filesystem, path: str, label: str, pairs: bool) -> Iterator[RawChunk]:
    # Each line is `user item item ...` (or `user item`); order in the file is time order.
    for first_line, lines in _text_lines(filesystem, path):
        users, items, line_numbers = [], [], []
        for offset, line in enumerate(lines):
            tokens = line.split()
            if not tokens:
                continue
            if pairs and len(tokens) != 2:
                raise InvalidInputError(
                    f"{label}: line {first_line + offset} has {len(tokens)} fields; pair-lines expects `user item`."
                )
            user, *line_items = tokens
            users += [user] * max(1, len(line_items))
            items += line_items or [None]
            line_numbers += [first_line + offset] * max(1, len(line_items))
        table = pa.table({"user_id": pa.array(users, pa.string()), "item_id": pa.array(items, pa.string())})
        yield RawChunk(table, lambda i, numbers=line_numbers: f"line {numbers[i]}")


# ---------------------------------------------------------------------------------------
# Normalization: typed events, row checks and drop counts.


@dataclass
class ChunkResult:
    """Events kept from one chunk and the rows dropped by reason."""

    events: pa.Table
    dropped: Counter


def normalize_chunk(chunk: RawChunk, config: PrepareConfig, label: str, file_index: int, first_row: int,
                    num_shards: int) -> ChunkResult:
    """Type, check and filter one raw chunk; raise on or count bad rows per `config.on_invalid`."""
    table = chunk.table
    rows = table.num_rows
    columns = config.columns
    keep = np.ones(rows, dtype=bool)
    dropped: Counter = Counter()

    user = _id_column(table, columns.user, label)
    item = _id_column(table, columns.item, label)
    for name, ids in ((columns.user, user), (columns.item, item)):
        _apply_check(_is_null_or_empty(ids), keep, dropped, "null_id", chunk, config, label, name,
                     table, "a null or empty id", "Fill in the id or remove the row")

    if config.format in ("sequence-lines", "pair-lines"):
        timestamp = np.zeros(rows, dtype=np.int64)
    else:
        timestamp, bad_time = _timestamp_column(table[columns.timestamp], config.timestamp_format)
        _apply_check(bad_time & keep, keep, dropped, "unparsable_timestamp", chunk, config, label, columns.timestamp,
                     table, _timestamp_problem(config), _timestamp_fix(config))

    if config.min_rating is not None:
        rating, bad_rating = _float_column(table[columns.rating])
        _apply_check(bad_rating & keep, keep, dropped, "unparsable_rating", chunk, config, label, columns.rating,
                     table, "not a number", "Write the rating as a number")
        below = keep & (rating < config.min_rating)
        dropped["below_min_rating"] += int(below.sum())
        keep &= ~below

    if config.event_types is not None:
        event_type = table[columns.event_type]
        kept_type = pc.fill_null(pc.is_in(pc.cast(event_type, pa.string()), pa.array(config.event_types, pa.string())), False)
        other = keep & ~kept_type.to_numpy(zero_copy_only=False)
        dropped["event_type_filtered"] += int(other.sum())
        keep &= ~other

    events = pa.table({
        "user_id": user,
        "item_id": item,
        "timestamp": pa.array(timestamp, pa.int64()),
        "file_index": pa.array(np.full(rows, file_index, dtype=np.int32)),
        "row_index": pa.array(np.arange(first_row, first_row + rows, dtype=np.int64)),
    })
    events = events.filter(pa.array(keep))
    events = events.append_column("shard", shard_of(events["user_id"], num_shards))
    return ChunkResult(events, dropped)


def _id_column(table: pa.Table, name: str, label: str) -> pa.ChunkedArray:
    column = table[name]
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        return pc.cast(column, pa.string())
    if pa.types.is_integer(column.type) or pa.types.is_null(column.type):
        return pc.cast(column, pa.string())
    if pa.types.is_dictionary(column.type):
        return pc.cast(pc.dictionary_decode(column), pa.string())
    raise InvalidInputError(
        f"{label}: column {name!r} has type {column.type}; ids must be strings or integers. "
        "Write the ids as text (a float id such as 1.0 would not match 1)."
    )


def _is_null_or_empty(column: pa.ChunkedArray) -> np.ndarray:
    empty = pc.fill_null(pc.equal(pc.utf8_trim_whitespace(column), ""), True)
    return empty.to_numpy(zero_copy_only=False).astype(bool)


def _timestamp_column(column: pa.ChunkedArray, timestamp_format: str) -> tuple[np.ndarray, np.ndarray]:
    """Return int64 timestamps and a mask of rows whose value is null or cannot be parsed."""
    rows = len(column)
    if pa.types.is_timestamp(column.type):
        unit = "s" if timestamp_format == "seconds" else "ms"
        values = pc.cast(pc.cast(column, pa.timestamp(unit, tz=column.type.tz), safe=False), pa.int64())
        bad = pc.is_null(values).to_numpy(zero_copy_only=False)
        return pc.fill_null(values, 0).to_numpy(zero_copy_only=False), bad
    if timestamp_format == "iso8601":
        if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
            return np.zeros(rows, dtype=np.int64), np.ones(rows, dtype=bool)
        return _parse_iso(column)

    if pa.types.is_integer(column.type):
        values = pc.cast(column, pa.int64())
        bad = pc.is_null(values).to_numpy(zero_copy_only=False)
        return pc.fill_null(values, 0).to_numpy(zero_copy_only=False), bad
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        # A float timestamp (1.5e9) would silently lose or invent precision, so it is invalid.
        return np.zeros(rows, dtype=np.int64), np.ones(rows, dtype=bool)

    text = pc.utf8_trim_whitespace(column)
    integral = pc.fill_null(pc.match_substring_regex(text, r"^[+-]?[0-9]{1,18}$"), False)
    bad = ~integral.to_numpy(zero_copy_only=False).astype(bool)
    values = pc.cast(pc.if_else(integral, text, "0"), pa.int64())
    return values.to_numpy(zero_copy_only=False), bad


def _parse_iso(column: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    text = pc.utf8_trim_whitespace(column)
    for target in (pa.timestamp("ms", tz="UTC"), pa.timestamp("ms")):
        try:
            parsed = pc.cast(text, target)
            bad = pc.is_null(parsed).to_numpy(zero_copy_only=False)
            return pc.fill_null(pc.cast(parsed, pa.int64()), 0).to_numpy(zero_copy_only=False), bad
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            continue

    # Mixed or bad values: parse one by one, which is slow but only happens on such chunks.
    values = np.zeros(len(text), dtype=np.int64)
    bad = np.zeros(len(text), dtype=bool)
    for i, value in enumerate(text.to_pylist()):
        parsed = _parse_one_iso(value)
        if parsed is None:
            bad[i] = True
        else:
            values[i] = parsed
    return values, bad


def _parse_one_iso(value: str | None) -> int | None:
    if value is None:
        return None
    for target in (pa.timestamp("ms", tz="UTC"), pa.timestamp("ms")):
        try:
            return pc.cast(pc.cast(pa.array([value]), target), pa.int64())[0].as_py()
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            continue
    return None


def _float_column(column: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    if pa.types.is_integer(column.type) or pa.types.is_floating(column.type):
        values = pc.cast(column, pa.float64())
    else:
        text = pc.utf8_trim_whitespace(pc.cast(column, pa.string()))
        numeric = pc.fill_null(pc.match_substring_regex(text, r"^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$"), False)
        values = pc.cast(pc.if_else(numeric, text, None), pa.float64())
    bad = pc.is_null(values).to_numpy(zero_copy_only=False)
    return pc.fill_null(values, 0.0).to_numpy(zero_copy_only=False), bad


def _timestamp_problem(config: PrepareConfig) -> str:
    if config.timestamp_format == "iso8601":
        return "not an ISO-8601 timestamp"
    return f"not an integer timestamp in {config.timestamp_format} (null, text or a float)"


def _timestamp_fix(config: PrepareConfig) -> str:
    if config.timestamp_format == "iso8601":
        return "Write it like 2024-05-01T12:00:00Z, or set data.timestamp_format to seconds or milliseconds"
    return ("Write whole seconds or milliseconds such as 1714564800, or set data.timestamp_format: iso8601 "
            "for ISO-8601 strings")


def _apply_check(bad: np.ndarray, keep: np.ndarray, dropped: Counter, reason: str, chunk: RawChunk,
                 config: PrepareConfig, label: str, column: str, table: pa.Table, problem: str, fix: str) -> None:
    bad = bad & keep
    count = int(bad.sum())
    if count == 0:
        return
    if config.on_invalid == "error":
        first = int(np.argmax(bad))
        value = table[column][first].as_py()
        raise InvalidInputError(
            f"{label}: {chunk.locate(first)}, column {column!r}: value {value!r} is {problem}. "
            f"{fix}, or set data.on_invalid: skip to drop and count such rows."
        )
    dropped[reason] += count
    keep &= ~bad


def shard_of(user_ids: pa.ChunkedArray | pa.Array, num_shards: int) -> pa.Array:
    """Assign each user to a shard by a stable hash of its id, the same in every process."""
    import pandas as pd

    encoded = pc.dictionary_encode(user_ids)
    if isinstance(encoded, pa.ChunkedArray):
        encoded = encoded.combine_chunks()
    unique = encoded.dictionary.to_numpy(zero_copy_only=False).astype(object)
    shards = (pd.util.hash_array(unique, categorize=False) % np.uint64(num_shards)).astype(np.int32)
    indices = encoded.indices.to_numpy(zero_copy_only=False)
    return pa.array(shards[indices] if len(indices) else np.zeros(0, dtype=np.int32), pa.int32())
