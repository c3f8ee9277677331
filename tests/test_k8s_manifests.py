"""Checks on the KubeRay manifests in k8s/ that need no Kubernetes cluster: structure, auth, GPUs and the Serve config."""

import copy
import re
import shlex
from pathlib import Path

import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from rayrec.cli import build_parser
from rayrec.config import load_config
from rayrec.serving.deploy import RAYREC_IMPORT_PATH, ServeConfigError, check_rayrec_app

REPO = Path(__file__).resolve().parents[1]
AUTH_DISABLED = re.compile(r"RAY_AUTH_MODE\W*(value\W*)?disabled", re.IGNORECASE)


def _load(name: str) -> dict:
    return yaml.safe_load((REPO / "k8s" / name).read_text())


@pytest.fixture(scope="module")
def rayjob():
    return _load("rayjob.yaml")


@pytest.fixture(scope="module")
def rayservice():
    return _load("rayservice.yaml")


def _cluster_spec(manifest: dict) -> dict:
    return manifest["spec"].get("rayClusterSpec") or manifest["spec"]["rayClusterConfig"]


def _groups(cluster: dict) -> list[dict]:
    return [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]


def _containers(manifest: dict) -> list[dict]:
    containers = [c for group in _groups(_cluster_spec(manifest)) for c in group["template"]["spec"]["containers"]]
    submitter = manifest["spec"].get("submitterPodTemplate")
    if submitter:
        containers += submitter["spec"]["containers"]
    return containers


def _stage_commands(entrypoint: str) -> list[list[str]]:
    """Split the RayJob's `bash -c '... && python jobs/X.py ...'` entrypoint into one argv per stage."""
    script = shlex.split(entrypoint)[-1]
    return [shlex.split(part) for part in script.split("&&") if "jobs/" in part]


@pytest.mark.parametrize("name, kind", [("rayjob.yaml", "RayJob"), ("rayservice.yaml", "RayService")])
def test_manifest_header_and_groups(name, kind):
    manifest = _load(name)
    cluster = _cluster_spec(manifest)

    assert manifest["apiVersion"] == "ray.io/v1"
    assert manifest["kind"] == kind
    assert cluster["rayVersion"].startswith("2.60")
    assert cluster["headGroupSpec"]["rayStartParams"] is not None
    assert cluster["workerGroupSpecs"]
    for group in cluster["workerGroupSpecs"]:
        assert group["groupName"]
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"], group["groupName"]
    for container in _containers(manifest):
        assert container["image"], container["name"]
        assert container["resources"]["requests"], container["name"]
        assert container["resources"]["limits"], container["name"]


@pytest.mark.parametrize("name", ["rayjob.yaml", "rayservice.yaml"])
def test_gpu_group_requests_gpus(name):
    cluster = _cluster_spec(_load(name))
    gpu_groups = [group for group in cluster["workerGroupSpecs"] if "gpu" in group["groupName"]]

    assert gpu_groups
    for group in gpu_groups:
        for container in group["template"]["spec"]["containers"]:
            assert container["resources"]["requests"]["nvidia.com/gpu"] >= 1
            assert container["resources"]["limits"]["nvidia.com/gpu"] == container["resources"]["requests"]["nvidia.com/gpu"]
    assert cluster["enableInTreeAutoscaling"] is True


@pytest.mark.parametrize("name", ["rayjob.yaml", "rayservice.yaml"])
def test_token_auth_from_secret(name):
    manifest = _load(name)

    assert not AUTH_DISABLED.search((REPO / "k8s" / name).read_text())
    for container in _containers(manifest):
        env = {item["name"]: item for item in container["env"]}
        assert env["RAY_AUTH_MODE"]["value"] == "token", container["name"]
        secret = env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]
        assert secret == {"name": "rayrec-ray-token", "key": "auth_token"}, container["name"]


def test_rayjob_runs_prepare_then_train(rayjob):
    stages = _stage_commands(rayjob["spec"]["entrypoint"])

    assert [argv[:2] for argv in stages] == [["python", "jobs/prepare.py"], ["python", "jobs/train.py"]]
    assert "--skip-prepare" in stages[1]


def test_rayjob_arguments_load_as_configs(rayjob):
    """Each stage's arguments parse with rayrec's CLI and load as a valid run config."""
    configs = []
    for argv in _stage_commands(rayjob["spec"]["entrypoint"]):
        command = Path(argv[1]).stem
        args = build_parser().parse_args([command, *argv[2:]])
        configs.append(load_config(REPO / args.config, args.overrides))
    prepare, train = configs

    assert prepare.data.output_dir == train.data.output_dir
    for location in (train.data.output_dir, train.train.storage_path, train.train.bundle_dir):
        assert location.startswith("s3://"), location
    assert train.train.use_gpu is True


def test_rayservice_embeds_production_config(rayservice):
    embedded = yaml.safe_load(rayservice["spec"]["serveConfigV2"])
    shipped = yaml.safe_load((REPO / "serve_configs" / "production.yaml").read_text())

    assert embedded["applications"] == shipped["applications"]
    assert embedded["proxy_location"] == shipped["proxy_location"]
    assert "http_options" not in embedded


def test_rayservice_config_passes_rayrec_checks(rayservice):
    config = ServeDeploySchema.model_validate(yaml.safe_load(rayservice["spec"]["serveConfigV2"]))
    apps = [app for app in config.applications if app.import_path == RAYREC_IMPORT_PATH]

    assert apps
    for app in apps:
        check_rayrec_app(app, "k8s/rayservice.yaml")
        recommender = next(d for d in app.deployments if d.name == "Recommender")
        assert recommender.ray_actor_options.num_gpus >= 1
        assert recommender.autoscaling_config["max_replicas"] > recommender.autoscaling_config["min_replicas"]


def test_rayservice_gpu_group_fits_max_replicas(rayservice):
    embedded = yaml.safe_load(rayservice["spec"]["serveConfigV2"])
    autoscaling = embedded["applications"][0]["deployments"][0]["autoscaling_config"]
    gpu_group = next(g for g in rayservice["spec"]["rayClusterConfig"]["workerGroupSpecs"] if "gpu" in g["groupName"])

    assert gpu_group["maxReplicas"] >= autoscaling["max_replicas"]


def test_broken_embedded_config_is_rejected(rayservice):
    """The check above can fail: batches that can never fill are an error."""
    raw = copy.deepcopy(yaml.safe_load(rayservice["spec"]["serveConfigV2"]))
    raw["applications"][0]["deployments"][0]["max_ongoing_requests"] = 8
    config = ServeDeploySchema.model_validate(raw)

    with pytest.raises(ServeConfigError, match=r"max_ongoing_requests \(8\) is below args.max_batch_size \(64\)"):
        check_rayrec_app(config.applications[0], "k8s/rayservice.yaml")
