"""The `rayrec` command line and `serve run` with the shipped Serve config, as a user runs them."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from rayrec.cli import build_parser, main
from rayrec.models.bundle import load_bundle

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _env() -> dict:
    # RAY_ADDRESS=local starts a fresh local Ray instead of joining one that another test started.
    return {**os.environ, "RAY_ADDRESS": "local", "PATH": f"{BIN}:{os.environ['PATH']}"}


def test_help_lists_subcommands():
    help_text = build_parser().format_help()

    for command in ("datasets", "prepare", "train", "evaluate", "serve", "recommend", "quickstart"):
        assert command in help_text


def test_datasets_list(capsys):
    assert main(["datasets", "list"]) == 0
    assert "ml-100k" in capsys.readouterr().out


def test_bad_override_is_a_clean_error(capsys):
    assert main(["prepare", "--config", str(REPO / "configs" / "ml-100k.yaml"), "train.num_workers=two"]) == 2
    err = capsys.readouterr().err
    assert "with command-line overrides: train: num_workers: expected int" in err
    assert "Traceback" not in err


def test_recommend_without_server(trained, capsys):
    bundle = str(trained["output"].bundle_dir)
    user = sorted(load_bundle(bundle).histories)[0]

    assert main(["recommend", "--bundle", bundle, "--user-id", user, "-k", "4"]) == 0
    body = json.loads(capsys.readouterr().out)
    assert len(body["items"]) == 4
    assert body["fallback"] is False

    assert main(["recommend", "--bundle", bundle, "-k", "4"]) == 2
    assert "pass --user-id, --history, or both" in capsys.readouterr().err


def test_evaluate_command(trained, capsys):
    assert main(["evaluate", "--bundle", str(trained["output"].bundle_dir), "--prepared", str(trained["prepared"])]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["test_users"] == trained["stats"].users


@pytest.mark.ray
def test_serve_run_with_shipped_config(trained, tmp_path):
    from conftest import free_port

    shutil.copytree(trained["output"].bundle_dir, tmp_path / "bundle")
    config = yaml.safe_load((REPO / "serve_configs" / "ml-100k.yaml").read_text())
    port = free_port()
    config["http_options"]["port"] = port
    config["applications"][0]["args"]["bundle_path"] = "bundle"  # relative to where `serve run` starts
    (tmp_path / "serve.yaml").write_text(yaml.safe_dump(config))

    server = subprocess.Popen([str(BIN / "serve"), "run", "serve.yaml"], cwd=tmp_path, env=_env(),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 240
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert server.poll() is None, "serve run exited before the app was healthy"
            assert time.monotonic() < deadline, "serve run did not become healthy within 240 s"
            time.sleep(2)

        response = httpx.post(f"{url}/recommend", json={"history": ["1", "2"], "k": 3}, timeout=30)
        assert response.status_code == 200
        assert len(response.json()["items"]) == 3
    finally:
        os.killpg(server.pid, signal.SIGINT)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)


@pytest.mark.ray
def test_quickstart_end_to_end(ml100k_slice, tmp_path):
    from conftest import free_port

    out = tmp_path / "out"
    command = [
        str(BIN / "rayrec"), "quickstart", "--config", str(REPO / "configs" / "ml-100k.yaml"),
        "--serve-config", str(REPO / "serve_configs" / "ml-100k.yaml"), "--port", str(free_port()),
        "data.dataset=null", f"data.input_path={ml100k_slice}", f"data.output_dir={out}/prepared",
        "model.max_len=20", "model.hidden_size=16", "model.num_layers=1",
        "train.max_epochs=1", "train.batch_size=64",
        f"train.storage_path={out}/runs", f"train.bundle_dir={out}/bundle",
    ]
    result = subprocess.run(command, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=900)

    assert result.returncode == 0, result.stderr[-4000:]
    assert "Prepared 120 users" in result.stdout
    assert "Offline evaluation of the bundle" in result.stdout
    assert '"model_version"' in result.stdout
    assert (out / "bundle" / "config.yaml").exists()


def test_evaluate_rejects_nonpositive_k(trained, capsys):
    assert main(["evaluate", "--bundle", str(trained["output"].bundle_dir), "--prepared", str(trained["prepared"]),
                 "-k", "0"]) == 2
    assert "k (0) must be at least 1" in capsys.readouterr().err


def test_serve_with_missing_bundle_fails_before_ray(tmp_path, capsys):
    config = REPO / "serve_configs" / "ml-100k.yaml"
    assert main(["serve", "--config", str(config), "--bundle", str(tmp_path / "nope")]) == 2
    assert "No rayrec bundle at" in capsys.readouterr().err
