"""rayrec.storage: local paths and URIs with query options, without Ray or a server."""

import pyarrow.fs as pafs
import pytest

from rayrec import storage

QUERY = "endpoint_override=127.0.0.1:9000&scheme=http"


@pytest.mark.parametrize("location, expected", [
    ("s3://bucket/prepared", True),
    ("gs://bucket/x", True),
    ("file:///tmp/x", False),
    ("/tmp/x", False),
    ("relative/x", False),
])
def test_is_uri(location, expected):
    assert storage.is_uri(location) is expected


def test_join_keeps_query_at_end():
    assert storage.join(f"s3://bucket/prepared/?{QUERY}", "train", "part-0.parquet") == \
        f"s3://bucket/prepared/train/part-0.parquet?{QUERY}"
    assert storage.join("/tmp/out", "stats.json") == "/tmp/out/stats.json"


def test_without_query_drops_options():
    assert storage.without_query(f"s3://bucket/b?{QUERY}") == "s3://bucket/b"


def test_resolve_local_is_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    filesystem, path = storage.resolve("out")
    uri_filesystem, uri_path = storage.resolve(f"s3://bucket/prefix/?{QUERY}")

    assert isinstance(filesystem, pafs.LocalFileSystem)
    assert path == str(tmp_path / "out")
    assert isinstance(uri_filesystem, pafs.S3FileSystem)
    assert uri_path == "bucket/prefix"


def test_replace_dir_empties_local_folder(tmp_path):
    folder = tmp_path / "out"
    (folder / "old").mkdir(parents=True)
    (folder / "old" / "stale.parquet").write_text("x")

    storage.replace_dir(str(folder))
    storage.write_text(storage.join(str(folder), "sub", "a.txt"), "hello")

    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")) == ["sub", "sub/a.txt"]
    assert storage.read_text(str(folder / "sub" / "a.txt")) == "hello"
    assert storage.exists(str(folder / "sub"))
    assert not storage.exists(str(folder / "old"))


def test_upload_dir_copies_tree(tmp_path):
    source = tmp_path / "source"
    (source / "nested").mkdir(parents=True)
    (source / "nested" / "f.txt").write_text("data")

    storage.upload_dir(source, f"file://{tmp_path / 'target'}")

    assert (tmp_path / "target" / "nested" / "f.txt").read_text() == "data"
