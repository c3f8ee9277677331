"""Checks on cluster.yaml, the `ray up` config, that need no AWS account or Ray cluster."""

import copy
import json
import os
import re

import jsonschema
import pytest
import ray.autoscaler
import yaml

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLUSTER_YAML = os.path.join(REPO_ROOT, "cluster.yaml")

# The schema that `ray up` validates against, shipped inside the installed ray package.
RAY_SCHEMA = os.path.join(os.path.dirname(ray.autoscaler.__file__), "ray-schema.json")

# Command lists the cluster launcher runs, at the top level and per node type.
TOP_LEVEL_COMMAND_KEYS = (
    "initialization_commands",
    "setup_commands",
    "head_setup_commands",
    "worker_setup_commands",
    "head_start_ray_commands",
    "worker_start_ray_commands",
)
NODE_TYPE_COMMAND_KEYS = ("initialization_commands", "worker_setup_commands")

# Matches RAY_AUTH_MODE=disabled with optional spaces or quotes, in any letter case.
AUTH_DISABLED = re.compile(r"RAY_AUTH_MODE\s*=\s*[\"']?disabled", re.IGNORECASE)


@pytest.fixture(scope="module")
def config():
    with open(CLUSTER_YAML) as f:
        return yaml.safe_load(f)


@pytest.fixture(scope="module")
def schema():
    with open(RAY_SCHEMA) as f:
        return json.load(f)


def all_commands(config):
    commands = []
    for key in TOP_LEVEL_COMMAND_KEYS:
        commands.extend(config.get(key, []))
    for node_type in config["available_node_types"].values():
        for key in NODE_TYPE_COMMAND_KEYS:
            commands.extend(node_type.get(key, []))
    return commands


def worker_types(config):
    return {
        name: node_type
        for name, node_type in config["available_node_types"].items()
        if name != config["head_node_type"]
    }


def effective_worker_setup(config, node_type):
    # Ray runs a node type's own worker_setup_commands instead of setup_commands plus
    # the top-level worker_setup_commands (ray 2.60.0, StandardAutoscaler).
    if "worker_setup_commands" in node_type:
        return node_type["worker_setup_commands"]
    return config.get("setup_commands", []) + config.get("worker_setup_commands", [])


def installs_project(commands):
    return any("pip install" in command and "rayrec" in command for command in commands)


def test_schema_accepts_cluster_yaml(config, schema):
    jsonschema.validate(config, schema)


@pytest.mark.parametrize(
    "key, value",
    [
        ("max_workers", "many"),
        ("unknown_top_level_key", True),
    ],
)
def test_schema_rejects_invalid_copy(config, schema, key, value):
    broken = copy.deepcopy(config)
    broken[key] = value

    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)


def test_schema_rejects_fractional_gpu(config, schema):
    broken = copy.deepcopy(config)
    next(iter(worker_types(broken).values()))["resources"]["GPU"] = 0.5

    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)


def test_ray_prepare_and_validate(config):
    # The schema does not check head_node_type or min_workers against max_workers, but
    # `ray up` does in these helpers. They are private in ray 2.60.0, so an upgrade may move them.
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)


def test_cluster_name(config):
    assert config["cluster_name"] == "rayrec"


def test_head_type_has_no_gpu(config):
    head_type = config["head_node_type"]
    assert head_type in config["available_node_types"]

    resources = config["available_node_types"][head_type]["resources"]
    assert resources.get("GPU", 0) == 0
    assert resources.get("CPU", 0) >= 1, "head resources must state its CPU count"


def test_gpu_worker_scales_from_zero(config):
    gpu_types = [
        name
        for name, node_type in worker_types(config).items()
        if node_type["resources"].get("GPU", 0) >= 1
    ]
    assert gpu_types, "no worker node type has a GPU"

    for name in gpu_types:
        assert config["available_node_types"][name].get("min_workers", 0) == 0, name


def test_every_node_type_sets_ami(config):
    # Without ImageId, Ray 2.60.0 picks an Ubuntu 18.04 Deep Learning AMI with CUDA 11.2.
    for name, node_type in config["available_node_types"].items():
        assert node_type["node_config"].get("ImageId"), name


def test_project_synced_to_nodes(config):
    assert config["file_mounts"].get("~/rayrec") == "."


def test_setup_installs_project(config):
    assert installs_project(config["setup_commands"])


def test_every_worker_type_installs_project(config):
    for name, node_type in worker_types(config).items():
        assert installs_project(effective_worker_setup(config, node_type)), name


def test_no_command_disables_token_auth(config):
    for command in all_commands(config):
        assert not AUTH_DISABLED.search(command), command


def test_file_never_disables_token_auth():
    # Also covers places other than command lists, such as docker run options or comments.
    with open(CLUSTER_YAML) as f:
        text = f.read()

    assert not AUTH_DISABLED.search(text)


@pytest.mark.parametrize(
    "command",
    [
        "export RAY_AUTH_MODE=disabled",
        "RAY_AUTH_MODE = 'disabled' ray start --head",
        'echo "export ray_auth_mode=DISABLED" >> ~/.bashrc',
    ],
)
def test_auth_check_catches_disabled(command):
    assert AUTH_DISABLED.search(command)


def test_token_auth_enabled_on_nodes(config):
    # `ray start --address` on a worker turns token auth on only when RAY_AUTH_MODE=token is set.
    assert any("RAY_AUTH_MODE=token" in command for command in config["setup_commands"])
    assert "~/.ray/auth_token" in config["file_mounts"]


def test_head_start_commands(config):
    commands = config["head_start_ray_commands"]
    assert commands[0] == "ray stop"

    start = commands[-1]
    assert "ray start --head" in start
    assert re.search(r"--dashboard-host[= ]127\.0\.0\.1\b", start), start
    assert "--autoscaling-config=~/ray_bootstrap_config.yaml" in start


def test_worker_start_commands(config):
    commands = config["worker_start_ray_commands"]
    assert commands[0] == "ray stop"
    assert "ray start --address=$RAY_HEAD_IP:6379" in commands[-1]
