"""Two Ray nodes on one machine: training with a worker on each node, replicas on each node, and a killed node.

`ray.cluster_utils.Cluster` starts each node as its own raylet with its own worker processes.
Every artifact goes to a moto S3 server on 127.0.0.1, so no step relies on a shared disk or a
shared working directory. Each node has 3 CPUs, and a training worker requests 2, so the two
training workers can only run on different nodes; the custom resource `replica_slot` (1 per
node) does the same for the two Serve replicas.
"""

import threading
import time

import httpx
import pyarrow.fs as pafs
import pytest
import yaml

from conftest import free_port, registered_checkpoints, shared_ray_paused, write_interactions
from rayrec import storage
from rayrec.cli import main

pytestmark = pytest.mark.ray

NODE_CPUS = 3
# Enough epochs that the run is still going when the node dies, at about 1 s per epoch here.
KILL_RUN_EPOCHS = 12
TWO_NODE_RUN = ["model.max_len=20", "model.hidden_size=16", "model.num_layers=1", "train.batch_size=64",
                "train.num_workers=2", "train.cpus_per_worker=2", "train.data_cpus=1"]


@pytest.fixture(scope="module")
def cluster(moto_s3):
    """A head node and one worker node, started after the AWS variables are set so every node reaches moto."""
    import ray
    from ray.cluster_utils import Cluster

    with shared_ray_paused():
        nodes = Cluster(initialize_head=True, head_node_args={
            "num_cpus": NODE_CPUS, "resources": {"replica_slot": 1}, "include_dashboard": False})
        worker = nodes.add_node(num_cpus=NODE_CPUS, resources={"replica_slot": 1})
        nodes.wait_for_nodes()
        ray.init(address=nodes.address, log_to_driver=False)
        try:
            yield {"cluster": nodes, "worker": worker, **moto_s3}
        finally:
            ray.shutdown()
            nodes.shutdown()


def _uri(cluster, name: str) -> str:
    return f"s3://{cluster['bucket']}/{name}?{cluster['query']}"


def _actor_nodes(class_name: str) -> set[str]:
    """Node ids of every actor of a class, alive or dead, from the GCS actor table."""
    import ray._private.state  # NOTE: private API of Ray 2.60; the public state API needs the dashboard.

    return {actor["Address"]["NodeID"] for actor in ray._private.state.actors().values()
            if actor["ActorClassName"].endswith(class_name)}


def _checkpoints(cluster, run_name: str) -> list[str]:
    filesystem, path = cluster["filesystem"], f"{cluster['bucket']}/runs/{run_name}"
    infos = filesystem.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    return [info.base_name for info in infos if info.base_name.startswith("checkpoint_")]


@pytest.fixture(scope="module")
def two_node_run(cluster, tmp_path_factory):
    """Prepare and train with one worker on each node; every output at an s3:// URI."""
    import ray

    log = tmp_path_factory.mktemp("two-node") / "log.parquet"
    write_interactions(log, num_users=80, num_items=40, seed=7)
    before = _actor_nodes("RayTrainWorker")
    code = main(["train", "--config", "configs/ml-100k.yaml", "data.dataset=null", f"data.input_path={log}",
                 f"data.output_dir={_uri(cluster, 'prepared')}", f"train.storage_path={_uri(cluster, 'runs')}",
                 f"train.bundle_dir={_uri(cluster, 'bundle')}", "train.max_epochs=2", "train.run_name=two-node",
                 *TWO_NODE_RUN])
    return {"code": code, "worker_nodes": _actor_nodes("RayTrainWorker") - before,
            "all_nodes": {node["NodeID"] for node in ray.nodes() if node["Alive"]}}


def test_training_workers_on_both_nodes(cluster, two_node_run):
    assert two_node_run["code"] == 0
    assert len(two_node_run["all_nodes"]) == 2
    assert two_node_run["worker_nodes"] == two_node_run["all_nodes"]
    assert _checkpoints(cluster, "two-node")
    assert storage.exists(storage.join(_uri(cluster, "bundle"), "bundle.json"))


def test_replicas_on_both_nodes_answer(cluster, two_node_run, tmp_path):
    from rayrec.serving.deploy import deploy, shutdown

    config = yaml.safe_load(open("serve_configs/ml-100k.yaml"))
    recommender = config["applications"][0]["deployments"][0]
    recommender["num_replicas"] = 2
    recommender["ray_actor_options"] = {"num_cpus": 1, "resources": {"replica_slot": 1}}
    path = tmp_path / "two-replicas.yaml"
    path.write_text(yaml.safe_dump(config))

    url = deploy(path, bundle_path=_uri(cluster, "bundle"), port=free_port())
    try:
        replica_nodes = _actor_nodes("Recommender")
        responses = [httpx.post(f"{url}/recommend", json={"user_id": f"u{user:03d}", "k": 5}, timeout=60)
                     for user in range(10)]
    finally:
        shutdown()

    assert replica_nodes == two_node_run["all_nodes"]
    assert [response.status_code for response in responses] == [200] * 10
    assert all(len(response.json()["items"]) == 5 for response in responses)


def test_node_kill_resumes_from_checkpoint(cluster, two_node_run, tmp_path):
    """Kill the worker node after a registered checkpoint; training resumes from the latest and finishes."""
    from rayrec.config import load_config
    from rayrec.training.trainer import train

    config = load_config("configs/ml-100k.yaml", [
        f"data.output_dir={_uri(cluster, 'prepared')}", f"train.storage_path={_uri(cluster, 'runs')}",
        f"train.bundle_dir={_uri(cluster, 'killed-bundle')}", f"train.max_epochs={KILL_RUN_EPOCHS}", f"train.patience={KILL_RUN_EPOCHS}",
        "train.run_name=node-kill", *TWO_NODE_RUN])
    outcome = {}

    def run() -> None:
        try:
            outcome["output"] = train(config.data.output_dir, config.model, config.train, "two-node")
        except Exception as err:  # reported by the asserts below
            outcome["error"] = err

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    # Kill once Ray Train has registered a checkpoint: from then on a restart must continue from it.
    run_dir = f"{cluster['bucket']}/runs/node-kill"
    deadline = time.monotonic() + 120
    while registered_checkpoints(cluster["filesystem"], run_dir) < 1 and time.monotonic() < deadline and thread.is_alive():
        time.sleep(0.2)
    killed_at = registered_checkpoints(cluster["filesystem"], run_dir)
    # No graceful shutdown: the node's raylet and workers die at once, as in a machine failure.
    cluster["cluster"].remove_node(cluster["worker"], allow_graceful=False)
    # A replacement node joins, as an autoscaler would add one; the run needs 2 nodes of 3 CPUs.
    cluster["worker"] = cluster["cluster"].add_node(num_cpus=NODE_CPUS, resources={"replica_slot": 1})
    thread.join(timeout=240)

    assert killed_at >= 1, "no checkpoint was registered within 120 s"
    assert not thread.is_alive(), "training did not finish within 240 s of the node kill"
    assert "error" not in outcome, outcome.get("error")
    metrics = outcome["output"].metrics
    assert metrics["epochs_trained"] == KILL_RUN_EPOCHS
    assert metrics["resumed_at_epochs"], "training was not restarted from a checkpoint"
    assert 1 <= metrics["resumed_at_epochs"][0] < KILL_RUN_EPOCHS
