import hashlib
import zipfile

import pyarrow.parquet as pq
import pytest

from rayrec.data import datasets
from rayrec.data.datasets import DATASETS, fetch, get_spec


def test_fetch_ml100k_from_package_index(tmp_path):
    path = fetch("ml-100k", tmp_path)
    table = pq.read_table(path)

    assert table.num_rows == 100_000
    assert len(set(table["user_id"].to_pylist())) == 943
    assert len(set(table["item_id"].to_pylist())) == 1_682
    assert str(table.schema.field("user_id").type) == "string"
    assert str(table.schema.field("timestamp").type) == "int64"


def test_fetch_reuses_cache(tmp_path, monkeypatch):
    fetch("ml-100k", tmp_path)

    def no_download(*args, **kwargs):
        raise AssertionError("a cached dataset must not be downloaded again")

    monkeypatch.setattr(datasets, "_pip_download", no_download)
    assert pq.read_metadata(fetch("ml-100k", tmp_path)).num_rows == 100_000


def test_unknown_dataset_lists_choices():
    with pytest.raises(ValueError, match="Available datasets: ml-100k"):
        get_spec("ml-20m")


def test_member_sha256_mismatch_rejected(tmp_path):
    spec = DATASETS["ml-100k"]
    wheel = tmp_path / "fake-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(spec.member, b"user_id:token\titem_id:token\n1\t2\n")

    with pytest.raises(RuntimeError, match="sha256 mismatch"):
        datasets._read_member(wheel, spec)


def test_member_sha256_accepts_recorded_bytes(tmp_path):
    payload = b"user_id:token\titem_id:token\trating:float\ttimestamp:float\n1\t2\t3\t4\n"
    spec = DATASETS["ml-100k"].__class__(**{**DATASETS["ml-100k"].__dict__,
                                            "member_sha256": hashlib.sha256(payload).hexdigest(), "rows": 1})
    wheel = tmp_path / "fake-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(spec.member, payload)

    table = datasets._parse_recbole_inter(datasets._read_member(wheel, spec), spec)
    assert table.to_pylist() == [{"user_id": "1", "item_id": "2", "rating": 3.0, "timestamp": 4}]
