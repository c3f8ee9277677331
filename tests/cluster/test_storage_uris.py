"""Prepared data, checkpoints and the bundle at s3:// URIs: prepare, train, serve, on a moto server on 127.0.0.1."""

import json
import os

import httpx
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from conftest import free_port, shared_ray_paused, write_interactions
from rayrec import storage
from rayrec.cli import main
from rayrec.models.bundle import BUNDLE_FILES, load_bundle
from rayrec.models.recommend import rank_queries, resolve_query

pytestmark = pytest.mark.ray

TINY_RUN = ["model.max_len=20", "model.hidden_size=16", "model.num_layers=1", "train.max_epochs=1",
            "train.batch_size=64", "train.num_workers=2", "train.run_name=s3-run"]


@pytest.fixture(scope="module")
def s3_ray(moto_s3):
    """A local Ray started after the AWS variables are set, so its workers and replicas can reach moto."""
    import ray

    with shared_ray_paused():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        yield moto_s3


@pytest.fixture(scope="module")
def s3_run(s3_ray, tmp_path_factory):
    """Run `rayrec train` (prepare, then train) with every output at an s3:// URI, from an empty working directory."""
    root = tmp_path_factory.mktemp("s3-run")
    write_interactions(root / "input" / "log.parquet", num_users=60, num_items=40, seed=5)
    workdir = root / "cwd"
    workdir.mkdir()
    base = f"s3://{s3_ray['bucket']}/run"
    uris = {name: f"{base}/{name}?{s3_ray['query']}" for name in ("prepared", "runs", "bundle")}
    config = os.path.abspath("configs/ml-100k.yaml")

    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        code = main(["train", "--config", config, "data.dataset=null",
                     f"data.input_path={root / 'input' / 'log.parquet'}", f"data.output_dir={uris['prepared']}",
                     f"train.storage_path={uris['runs']}", f"train.bundle_dir={uris['bundle']}", *TINY_RUN])
    finally:
        os.chdir(cwd)
    return {"code": code, "uris": uris, "workdir": workdir, **s3_ray}


def _names(filesystem: pafs.FileSystem, folder: str) -> set[str]:
    selector = pafs.FileSelector(folder, recursive=True)
    return {info.path.removeprefix(folder + "/") for info in filesystem.get_file_info(selector)}


def test_train_writes_everything_to_s3(s3_run):
    filesystem, bucket = s3_run["filesystem"], s3_run["bucket"]
    prepared = _names(filesystem, f"{bucket}/run/prepared")
    runs = _names(filesystem, f"{bucket}/run/runs")
    bundle = _names(filesystem, f"{bucket}/run/bundle")

    assert s3_run["code"] == 0
    for name in ("vocab.parquet", "popularity.parquet", "stats.json", "config.yaml"):
        assert name in prepared, name
    assert any(name.startswith("train/part-") for name in prepared)
    assert any(name.startswith("s3-run/checkpoint_") and name.endswith("state.pt") for name in runs), sorted(runs)
    for name in (*BUNDLE_FILES, "config.yaml"):
        assert name in bundle, name
    # Nothing was written to the working directory, for example a local folder named "s3:".
    assert list(s3_run["workdir"].iterdir()) == []


def test_prepared_stats_on_s3_account_for_rows(s3_run):
    stats = json.loads(storage.read_text(storage.join(s3_run["uris"]["prepared"], "stats.json")))
    filesystem, path = storage.resolve(s3_run["uris"]["prepared"])
    vocab = pq.read_table(f"{path}/vocab.parquet", filesystem=filesystem)

    assert stats["rows_read"] == stats["interactions"] + sum(stats["dropped"].values())
    assert stats["users"] == 60
    assert vocab.num_rows == stats["items"]


def test_bundle_json_has_no_endpoint(s3_run):
    metadata = json.loads(storage.read_text(storage.join(s3_run["uris"]["bundle"], "bundle.json")))

    assert "endpoint_override" not in json.dumps(metadata)
    assert metadata["version"].startswith("log-")


def test_serve_loads_bundle_from_s3(s3_run):
    from rayrec.serving.deploy import deploy, shutdown

    bundle_uri = s3_run["uris"]["bundle"]
    url = deploy("serve_configs/ml-100k.yaml", bundle_path=bundle_uri, port=free_port())
    try:
        response = httpx.post(f"{url}/recommend", json={"user_id": "u007", "k": 5}, timeout=60)
        model = httpx.get(f"{url}/model", timeout=60).json()
    finally:
        shutdown()
    bundle = load_bundle(bundle_uri)
    expected = rank_queries(bundle, [resolve_query(bundle, "u007", None, 5)])[0]

    assert response.status_code == 200, response.text
    assert [item["item_id"] for item in response.json()["items"]] == [bundle.item_ids[i] for i, _ in expected]
    assert response.json()["model_version"] == bundle.version
    assert "endpoint_override" not in json.dumps(model)


def test_missing_prepared_uri_clear_error(s3_ray, capsys):
    missing = f"s3://{s3_ray['bucket']}/nothing/prepared?{s3_ray['query']}"

    code = main(["train", "--skip-prepare", f"data.output_dir={missing}", *TINY_RUN])
    err = capsys.readouterr().err

    assert code == 2
    assert f"s3://{s3_ray['bucket']}/nothing/prepared is not a prepared dataset: missing vocab.parquet" in err
    assert "endpoint_override" not in err


def test_batch_recommend_s3_to_s3(s3_run, capsys):
    output = f"s3://{s3_run['bucket']}/run/top5?{s3_run['query']}"

    code = main(["batch-recommend", "--bundle", s3_run["uris"]["bundle"], "--output", output, "-k", "5"])
    filesystem, path = storage.resolve(output)
    rows = {row["user_id"]: row for row in pq.read_table(path, filesystem=filesystem).to_pylist()}
    bundle = load_bundle(s3_run["uris"]["bundle"])
    expected = rank_queries(bundle, [resolve_query(bundle, "u007", None, 5)])[0]

    assert code == 0
    assert sorted(rows) == sorted(bundle.histories)
    assert rows["u007"]["item_ids"] == [bundle.item_ids[index] for index, _ in expected]
    assert "endpoint_override" not in capsys.readouterr().out
