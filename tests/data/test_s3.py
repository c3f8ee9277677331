"""Preprocessing from an S3-compatible object store: a moto server on 127.0.0.1 started here."""

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from conftest import free_port
from rayrec.data.config import PrepareConfig
from rayrec.data.prepare import list_input_files, prepare

BUCKET = "rayrec-test"


@pytest.fixture(scope="module")
def s3_logs():
    """Start moto in server mode on loopback, upload a CSV and a Parquet file, yield the logs URI."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    patch = pytest.MonkeyPatch()
    # Credentials come from the standard variables; moto accepts any value.
    patch.setenv("AWS_ACCESS_KEY_ID", "testing")
    patch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    patch.setenv("AWS_REGION", "us-east-1")
    endpoint = f"endpoint_override=127.0.0.1:{port}&scheme=http"

    admin = pafs.S3FileSystem(endpoint_override=f"127.0.0.1:{port}", scheme="http", allow_bucket_creation=True)
    admin.create_dir(BUCKET)
    with admin.open_output_stream(f"{BUCKET}/logs/a-day1.csv") as stream:
        stream.write(b"user_id,item_id,timestamp\n007,x,1\n007,y,2\n008,x,3\n")
    table = pa.table({"user_id": ["007", "008", "008", "007"], "item_id": ["z", "y", "z", "w"],
                      "timestamp": pa.array([4, 5, 6, 7], pa.int64())})
    with admin.open_output_stream(f"{BUCKET}/logs/b-day2.parquet") as stream:
        pq.write_table(table, stream)

    yield {"uri": f"s3://{BUCKET}/logs/?{endpoint}", "endpoint": endpoint}
    patch.undo()
    server.stop()


def test_s3_listing_names_files(s3_logs):
    files = list_input_files(s3_logs["uri"])

    assert files.labels == [f"s3://{BUCKET}/logs/a-day1.csv", f"s3://{BUCKET}/logs/b-day2.parquet"]


def test_s3_missing_prefix_not_found(s3_logs):
    with pytest.raises(FileNotFoundError, match="Input path not found"):
        list_input_files(f"s3://{BUCKET}/nothing-here.csv?{s3_logs['endpoint']}")


@pytest.mark.ray
def test_prepare_reads_from_s3(ray_local, s3_logs, tmp_path):
    stats = prepare(PrepareConfig(dataset=None, input_path=s3_logs["uri"], output_dir=str(tmp_path / "out")),
                    list_input_files(s3_logs["uri"]))
    vocab = pq.read_table(tmp_path / "out" / "vocab.parquet")["item_id"].to_pylist()
    sequences = {row["user_id"]: row["item_ids"] for row in pq.read_table(tmp_path / "out" / "sequences").to_pylist()}

    assert stats.rows_read_per_file == {f"s3://{BUCKET}/logs/a-day1.csv": 3, f"s3://{BUCKET}/logs/b-day2.parquet": 4}
    assert stats.interactions == 7
    assert vocab == ["w", "x", "y", "z"]
    assert [vocab[i - 1] for i in sequences["007"]] == ["x", "y", "z", "w"]
    assert [vocab[i - 1] for i in sequences["008"]] == ["x", "y", "z"]
