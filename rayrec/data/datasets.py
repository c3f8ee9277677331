"""Example datasets, fetched only from the Python package index and verified by sha256.

MovieLens-100K is taken from the copy inside the `recbole==1.2.1` wheel, because the
package index is the one source that every rayrec machine, CI runner included, can reach.
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

logger = logging.getLogger(__name__)

INTERACTIONS_FILE = "interactions.parquet"


@dataclass(frozen=True)
class DatasetSpec:
    """An interaction file shipped inside a wheel on the Python package index."""

    name: str
    description: str
    requirement: str
    wheel_sha256: str
    member: str
    member_sha256: str
    rows: int
    users: int
    items: int


DATASETS: dict[str, DatasetSpec] = {
    "ml-100k": DatasetSpec(
        name="ml-100k",
        description="MovieLens-100K ratings (GroupLens), 100,000 events with timestamps",
        requirement="recbole==1.2.1",
        wheel_sha256="9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407",
        member="recbole/dataset_example/ml-100k/ml-100k.inter",
        member_sha256="4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff",
        rows=100_000,
        users=943,
        items=1_682,
    ),
}

# RecBole atomic files name each column `name:type`; rayrec reads ids as strings.
_RECBOLE_COLUMNS = {
    "user_id:token": ("user_id", pa.string()),
    "item_id:token": ("item_id", pa.string()),
    "rating:float": ("rating", pa.float32()),
    "timestamp:float": ("timestamp", pa.int64()),
}


def default_cache_dir() -> Path:
    """Return `$RAYREC_CACHE_DIR`, or the per-user cache folder (`~/.cache/rayrec` on Linux)."""
    if os.environ.get("RAYREC_CACHE_DIR"):
        return Path(os.environ["RAYREC_CACHE_DIR"])
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("rayrec"))


def get_spec(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise ValueError(f"Unknown dataset {name!r}. Available datasets: {', '.join(sorted(DATASETS))}.")
    return DATASETS[name]


def fetch(name: str, cache_dir: str | Path | None = None) -> Path:
    """Download, verify and convert dataset `name`; return its Parquet file.

    A verified copy in the cache is reused without touching the network.
    """
    spec = get_spec(name)
    target_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    target = target_dir / spec.name / INTERACTIONS_FILE
    if target.exists() and pq.read_metadata(target).num_rows == spec.rows:
        logger.info("Using cached %s at %s", spec.name, target)
        return target

    with tempfile.TemporaryDirectory(prefix="rayrec-fetch-") as tmp:
        wheel = _pip_download(spec, Path(tmp))
        raw = _read_member(wheel, spec)
        table = _parse_recbole_inter(raw, spec)

    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial")
    pq.write_table(table, partial)
    partial.replace(target)
    logger.info("Wrote %s (%d rows) to %s", spec.name, table.num_rows, target)
    return target


def _pip_download(spec: DatasetSpec, folder: Path) -> Path:
    logger.info("Downloading %s from the Python package index", spec.requirement)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "--quiet", "--dest", str(folder), spec.requirement]
    completed = subprocess.run(command, capture_output=True, text=True)
    if completed.returncode != 0:
        raise RuntimeError(
            f"pip download of {spec.requirement} failed (exit {completed.returncode}). Check that the "
            f"Python package index is reachable.\n{completed.stderr.strip()}"
        )

    wheels = sorted(folder.glob("*.whl"))
    if len(wheels) != 1:
        raise RuntimeError(f"Expected one wheel for {spec.requirement} in {folder}, found {len(wheels)}.")
    _verify_sha256(wheels[0].read_bytes(), spec.wheel_sha256, wheels[0].name)
    return wheels[0]


def _read_member(wheel: Path, spec: DatasetSpec) -> bytes:
    with zipfile.ZipFile(wheel) as archive:
        try:
            raw = archive.read(spec.member)
        except KeyError:
            raise RuntimeError(f"{wheel.name} does not contain {spec.member}.") from None
    _verify_sha256(raw, spec.member_sha256, spec.member)
    return raw


def _verify_sha256(data: bytes, expected: str, label: str) -> None:
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise RuntimeError(f"sha256 mismatch for {label}: expected {expected}, got {actual}. The file is not the recorded release.")


def _parse_recbole_inter(raw: bytes, spec: DatasetSpec) -> pa.Table:
    header = raw.split(b"\n", 1)[0].decode().split("\t")
    missing = [name for name in _RECBOLE_COLUMNS if name not in header]
    if missing:
        raise RuntimeError(f"{spec.member}: header lacks column(s) {', '.join(missing)}; found {header}.")

    types = {name: dtype for name, (_, dtype) in _RECBOLE_COLUMNS.items()}
    table = pacsv.read_csv(
        pa.BufferReader(raw),
        parse_options=pacsv.ParseOptions(delimiter="\t"),
        convert_options=pacsv.ConvertOptions(column_types=types, include_columns=list(_RECBOLE_COLUMNS)),
    )
    table = table.rename_columns([_RECBOLE_COLUMNS[name][0] for name in table.column_names])

    if table.num_rows != spec.rows:
        raise RuntimeError(f"{spec.member}: expected {spec.rows} rows, parsed {table.num_rows}.")
    return table
