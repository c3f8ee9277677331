"""Checks on Serve config files, run before Ray starts."""

import copy
from pathlib import Path

import pytest
import yaml

from rayrec.cli import main
from rayrec.serving.deploy import ServeConfigError, load_serve_config

SERVE_CONFIGS = Path(__file__).resolve().parents[2] / "serve_configs"
LOCAL = yaml.safe_load((SERVE_CONFIGS / "ml-100k.yaml").read_text())


def _write(tmp_path: Path, config: dict) -> Path:
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _edit(tmp_path: Path, deployment: str | None = None, **changes) -> Path:
    config = copy.deepcopy(LOCAL)
    app = config["applications"][0]
    target = app if deployment is None else next(d for d in app["deployments"] if d["name"] == deployment)
    for key, value in changes.items():
        if value is None:
            target.pop(key, None)
        else:
            target[key] = value
    return _write(tmp_path, config)


@pytest.mark.parametrize("name", sorted(path.name for path in SERVE_CONFIGS.glob("*.yaml")))
def test_shipped_configs_pass_checks(name):
    config = load_serve_config(SERVE_CONFIGS / name, check_bundle=False)

    assert config.http_options.host == "127.0.0.1"
    assert config.applications[0].import_path == "rayrec.serving.app:build_app"


def test_local_bundle_path_made_absolute(tmp_path):
    config = load_serve_config(SERVE_CONFIGS / "ml-100k.yaml", bundle_path="some/bundle", port=8123, check_bundle=False)
    recommender = next(d for d in config.applications[0].deployments if d.name == "Recommender")

    assert config.http_options.port == 8123
    assert Path(recommender.user_config["bundle_path"]).is_absolute()
    assert recommender.user_config["bundle_path"].endswith("some/bundle")


def test_uri_bundle_path_kept():
    config = load_serve_config(SERVE_CONFIGS / "ml-100k.yaml", bundle_path="s3://bucket/bundle", check_bundle=False)
    recommender = next(d for d in config.applications[0].deployments if d.name == "Recommender")

    assert recommender.user_config["bundle_path"] == "s3://bucket/bundle"


def test_missing_bundle_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="user_config.bundle_path"):
        load_serve_config(SERVE_CONFIGS / "ml-100k.yaml", bundle_path=str(tmp_path / "nope"))


def test_max_ongoing_below_batch_size(tmp_path):
    path = _edit(tmp_path, "Recommender", max_ongoing_requests=8)

    with pytest.raises(ServeConfigError, match=r"max_ongoing_requests \(8\) is below args.max_batch_size \(32\)"):
        load_serve_config(path, check_bundle=False)


def test_default_max_ongoing_below_batch_size(tmp_path):
    # Ray's default max_ongoing_requests is 5, below the shipped batch size of 32.
    path = _edit(tmp_path, "Recommender", max_ongoing_requests=None)

    with pytest.raises(ServeConfigError, match=r"max_ongoing_requests \(5\)"):
        load_serve_config(path, check_bundle=False)


@pytest.mark.parametrize("target", [256, 300])
def test_autoscaling_target_not_below_max_ongoing(tmp_path, target):
    path = _edit(tmp_path, "Recommender", num_replicas=None,
                 autoscaling_config={"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": target})

    with pytest.raises(ServeConfigError, match="target_ongoing_requests .* must be below max_ongoing_requests"):
        load_serve_config(path, check_bundle=False)


def test_autoscaling_target_below_max_ongoing_passes(tmp_path):
    path = _edit(tmp_path, "Recommender", num_replicas=None,
                 autoscaling_config={"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 8})

    load_serve_config(path, check_bundle=False)


def test_unknown_deployment_named(tmp_path):
    config = copy.deepcopy(LOCAL)
    config["applications"][0]["deployments"].append({"name": "Recommendr", "num_replicas": 2})

    with pytest.raises(ServeConfigError, match="Recommendr"):
        load_serve_config(_write(tmp_path, config), check_bundle=False)


@pytest.mark.parametrize("args, field", [
    ({"max_batch_size": 0}, "max_batch_size"),
    ({"batch_wait_timeout_s": -1}, "batch_wait_timeout_s"),
    ({"device": "tpu"}, "device"),
    ({"bundle_path": "x"}, "bundle_path"),  # moved to user_config; an old config gets a clear error
])
def test_bad_args_named(tmp_path, args, field):
    path = _edit(tmp_path, args=args)

    with pytest.raises(ServeConfigError, match=field):
        load_serve_config(path, check_bundle=False)


def test_user_config_without_bundle_path(tmp_path):
    path = _edit(tmp_path, "Recommender", user_config={"version": "v1"})

    with pytest.raises(ServeConfigError, match="bundle_path"):
        load_serve_config(path, check_bundle=False)


def _fake_bundle(tmp_path: Path) -> Path:
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "bundle.json").write_text("{}")
    return bundle


def test_serve_check_reports_ok(tmp_path, capsys):
    bundle = _fake_bundle(tmp_path)

    assert main(["serve", "--config", str(SERVE_CONFIGS / "ml-100k.yaml"), "--bundle", str(bundle), "--check"]) == 0
    assert "OK" in capsys.readouterr().out


def test_serve_check_reports_error(tmp_path, capsys):
    path = _edit(tmp_path, "Recommender", max_ongoing_requests=4)

    assert main(["serve", "--config", str(path), "--bundle", str(_fake_bundle(tmp_path)), "--check"]) == 2
    assert "max_ongoing_requests (4)" in capsys.readouterr().err
