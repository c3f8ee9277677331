"""The recommender deployment's class run in-process (no Serve): swaps, health and stalls."""

import asyncio
import json
import time

import numpy as np
import pyarrow as pa
import pytest
import torch

from rayrec.models.bundle import write_bundle
from rayrec.models.config import ModelConfig
from rayrec.models.sasrec import SASRec
from rayrec.serving import recommender as recommender_module
from rayrec.serving.schemas import RecommendRequest

NUM_ITEMS = 20
# @serve.batch keeps one queue per decorated method, bound to the event loop that first used it.
LOOP = asyncio.new_event_loop()


def _tiny_bundle(path, dataset="tiny"):
    torch.manual_seed(0)
    config = ModelConfig(max_len=8, hidden_size=16, num_layers=1, num_heads=2, dropout=0.0)
    return write_bundle(
        path,
        state_dict=SASRec(config, NUM_ITEMS).state_dict(),
        model_config=config,
        num_items=NUM_ITEMS,
        vocab=pa.table({"item_index": pa.array(np.arange(1, NUM_ITEMS + 1, dtype=np.int32)),
                        "item_id": pa.array([f"i{i:02d}" for i in range(1, NUM_ITEMS + 1)])}),
        histories=pa.table({"user_id": ["u1"], "item_ids": pa.array([[1, 2, 3]], type=pa.list_(pa.int32()))}),
        popularity=pa.table({"item_index": pa.array(np.arange(1, NUM_ITEMS + 1, dtype=np.int32)),
                             "count": pa.array(np.arange(NUM_ITEMS, 0, -1, dtype=np.int64))}),
        metrics={},
        dataset=dataset,
    )


def _recommender_class():
    """The user class under Serve's deployment and FastAPI ingress wrappers, whose __init__ is async."""
    wrapped = recommender_module.Recommender.func_or_class
    return next(cls for cls in wrapped.__mro__
                if getattr(cls.__dict__.get("__init__"), "__module__", None) == recommender_module.__name__)


@pytest.fixture
def replica(tmp_path, monkeypatch):
    # The batch queue looks up its replica's max_ongoing_requests, which exists only inside Serve.
    from ray.serve import batching

    monkeypatch.setattr(batching._BatchQueue, "_warn_if_max_batch_size_exceeds_max_ongoing_requests", lambda self: None)
    cls = _recommender_class()
    instance = cls(max_batch_size=4, batch_wait_timeout_s=0.001, torch_threads=1, device="cpu")
    LOOP.run_until_complete(instance.reconfigure({"bundle_path": str(_tiny_bundle(tmp_path / "a"))}))
    return instance


def test_first_load_failure_raises(tmp_path):
    cls = _recommender_class()
    instance = cls(device="cpu")

    with pytest.raises(FileNotFoundError, match="not a rayrec bundle"):
        LOOP.run_until_complete(instance.reconfigure({"bundle_path": str(tmp_path)}))


def test_swap_and_failed_swap(replica, tmp_path):
    second = _tiny_bundle(tmp_path / "b", dataset="second")
    version = json.loads((second / "bundle.json").read_text())["version"]

    LOOP.run_until_complete(replica.reconfigure({"bundle_path": str(second), "version": version}))
    assert replica.metadata()["dataset"] == "second"

    LOOP.run_until_complete(replica.reconfigure({"bundle_path": str(tmp_path / "missing")}))
    assert replica.metadata()["dataset"] == "second"
    assert "missing" in replica.metadata()["last_load_error"]["bundle_path"]

    LOOP.run_until_complete(replica.reconfigure({"bundle_path": str(second), "version": "other"}))
    assert "user_config.version is other" in replica.metadata()["last_load_error"]["error"]


def test_healthz_and_recommend(replica):
    async def run():
        healthy = await replica.healthz()
        response = await replica.recommend(RecommendRequest(history=["i01", "i02"], k=3))
        return healthy, response

    healthy, response = LOOP.run_until_complete(run())
    assert healthy is True
    assert len(response.items) == 3
    assert not {"i01", "i02"} & {item.item_id for item in response.items}


def test_stalled_batch_fails_check_health(replica):
    replica.stalled_batch_s = 0.2
    original = replica.bundle.model.score_last

    def slow(item_ids):
        time.sleep(0.6)
        return original(item_ids)

    replica.bundle.model.score_last = slow
    replica.check_health()  # nothing running yet

    async def run():
        task = asyncio.create_task(replica.healthz())
        await asyncio.sleep(0.4)
        with pytest.raises(RuntimeError, match="batch has been running"):
            replica.check_health()
        await task

    LOOP.run_until_complete(run())
    replica.check_health()  # healthy again once the batch finished


def test_bundle_loads_from_s3_uri(tmp_path, monkeypatch):
    """A bundle uploaded to an S3-compatible server on 127.0.0.1 loads through its URI."""
    import pyarrow.fs as pafs
    from moto.server import ThreadedMotoServer

    from conftest import free_port
    from rayrec.models.bundle import BUNDLE_FILES, load_bundle

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        monkeypatch.setenv("AWS_REGION", "us-east-1")
        s3 = pafs.S3FileSystem(endpoint_override=f"127.0.0.1:{port}", scheme="http", allow_bucket_creation=True)
        s3.create_dir("bundles")
        local = _tiny_bundle(tmp_path / "local")
        for name in BUNDLE_FILES:
            pafs.copy_files(str(local / name), f"bundles/tiny/{name}", source_filesystem=pafs.LocalFileSystem(),
                            destination_filesystem=s3)
        query = f"endpoint_override=127.0.0.1:{port}&scheme=http"

        bundle = load_bundle(f"s3://bundles/tiny?{query}")
        with pytest.raises(FileNotFoundError, match="missing model.pt"):
            load_bundle(f"s3://bundles/nothing?{query}")
    finally:
        server.stop()

    assert bundle.item_ids[1:] == [f"i{i:02d}" for i in range(1, NUM_ITEMS + 1)]
    assert bundle.path.startswith("s3://bundles/tiny")
    assert torch.equal(bundle.model.item_emb.weight, load_bundle(local).model.item_emb.weight)


def test_device_choice_on_cpu_machine():
    if torch.cuda.is_available():
        pytest.skip("checks the CPU-only path")

    assert recommender_module.pick_device("auto").type == "cpu"
    assert recommender_module.pick_device("cpu").type == "cpu"
    with pytest.raises(ValueError, match="has no GPU"):
        recommender_module.pick_device("cuda")
