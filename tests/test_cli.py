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
    recommender = next(d for d in config["applications"][0]["deployments"] if d["name"] == "Recommender")
    recommender["user_config"]["bundle_path"] = "bundle"  # relative to where `serve run` starts
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
    assert len(list((out / "runs").glob("*/report.md"))) == 1


def test_evaluate_rejects_nonpositive_k(trained, capsys):
    assert main(["evaluate", "--bundle", str(trained["output"].bundle_dir), "--prepared", str(trained["prepared"]),
                 "-k", "0"]) == 2
    assert "k (0) must be at least 1" in capsys.readouterr().err


def test_serve_with_missing_bundle_fails_before_ray(tmp_path, capsys):
    config = REPO / "serve_configs" / "ml-100k.yaml"
    assert main(["serve", "--config", str(config), "--bundle", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert f"no rayrec bundle at {tmp_path / 'nope'}" in err.lower()
    assert "pass --bundle" in err


@pytest.fixture
def no_ray_no_network(monkeypatch):
    """Make starting Ray or opening any connection fail the test."""
    import socket

    import ray

    def fail_test(*args, **kwargs):
        raise AssertionError("doctor must not start Ray or connect anywhere")

    monkeypatch.setattr(ray, "init", fail_test)
    monkeypatch.setattr(socket.socket, "connect", fail_test)
    monkeypatch.setattr(socket.socket, "connect_ex", fail_test)


def test_doctor_passes_shipped_config(no_ray_no_network, capsys):
    assert main(["doctor", "--config", str(REPO / "configs" / "ml-100k.yaml"), "--cpus", "8"]) == 0
    out = capsys.readouterr().out

    assert "OK    python: Python 3." in out
    assert "OK    torch: torch 2." in out
    assert "OK    train resources: 2 workers x 3.5 CPUs, 4 torch threads each; 1 of 8 CPUs left for Ray Data" in out
    assert "memory:" in out
    assert "disk train.bundle_dir:" in out
    assert "0 failed" in out


def test_doctor_reports_too_few_cpus(no_ray_no_network, capsys):
    assert main(["doctor", "--config", str(REPO / "configs" / "ml-100k.yaml"), "--cpus", "1"]) == 1
    out = capsys.readouterr().out

    assert "FAIL  train resources: on 1 CPUs: The cluster has 1 CPUs" in out
    assert "fix: Change the config, or pass the real cluster size with --cpus." in out


def test_doctor_reports_missing_gpus_and_input(no_ray_no_network, tmp_path, capsys):
    assert main(["doctor", "--config", str(REPO / "configs" / "ml-100k.yaml"), "--cpus", "8", "--gpus", "1",
                 "train.use_gpu=true", "data.dataset=null", f"data.input_path={tmp_path}/missing/*.csv"]) == 1
    out = capsys.readouterr().out

    assert "FAIL  train gpus: train.use_gpu=true asks for 2 GPUs, 1 available" in out
    assert f"FAIL  input data: data.input_path {tmp_path}/missing/*.csv matches no file" in out


def test_doctor_reports_bad_config(no_ray_no_network, capsys):
    assert main(["doctor", "--config", str(REPO / "configs" / "ml-100k.yaml"), "train.epochs=3"]) == 1
    out = capsys.readouterr().out

    assert "FAIL  config: " in out
    assert "unknown key(s) epochs in TrainConfig. Valid keys: batch_size" in out
    assert "OK    python" in out


@pytest.mark.ray
def test_train_writes_report_and_configs(ray_local, ml100k_slice, tmp_path, capsys):
    out = tmp_path / "out"
    assert main([
        "train", "--config", str(REPO / "configs" / "ml-100k.yaml"),
        "data.dataset=null", f"data.input_path={ml100k_slice}", f"data.output_dir={out}/prepared",
        "model.max_len=20", "model.hidden_size=16", "model.num_layers=1", "train.max_epochs=2", "train.batch_size=64",
        f"train.storage_path={out}/runs", "train.run_name=first", f"train.bundle_dir={out}/bundle",
    ]) == 0
    printed = capsys.readouterr().out
    run_dir = out / "runs" / "first"

    assert f"Report: {run_dir / 'report.md'}" in printed
    for folder in (out / "prepared", run_dir, out / "bundle"):
        saved = yaml.safe_load((folder / "config.yaml").read_text())
        assert saved["model"]["hidden_size"] == 16, folder
    report = (run_dir / "report.md").read_text()
    assert "| metric | model | model, seen items kept | model, sampled | most popular |" in report
    assert "| prepare (Ray Data) |" in report
    assert report.count("\n| 1 | ") == 1  # the second epoch's row in the per-epoch table
    assert (run_dir / "valid_ndcg.png").stat().st_size > 1000


@pytest.mark.ray
def test_bench_train_two_worker_counts(trained, tmp_path, capsys):
    from rayrec.training.throughput import count_training_sequences

    output = tmp_path / "bench.json"
    assert main([
        "bench", "train", "--config", str(REPO / "configs" / "ml-100k.yaml"), "--epochs", "1",
        "--work-dir", str(tmp_path / "work"), "--output", str(output),
        f"data.output_dir={trained['prepared']}", "model.max_len=20", "model.hidden_size=16", "model.num_layers=1",
        "train.batch_size=64",
    ]) == 0
    printed = capsys.readouterr().out
    records = json.loads(output.read_text())

    assert [record["workers"] for record in records] == [1, 2]
    assert records[0]["speedup"] == 1.0
    assert records[1]["speedup"] == pytest.approx(records[1]["sequences_per_s"] / records[0]["sequences_per_s"])
    # SASRec with max_len 20 trains on windows of 21 items.
    assert all(record["sequences_per_epoch"] == count_training_sequences(trained["prepared"], 21) for record in records)
    assert all(0 < record["train_s_per_epoch"] <= record["epoch_s"] for record in records)
    assert "speed-up vs 1 worker(s)" in printed
    assert [record["torch_threads_per_worker"] for record in records] == [2, 1]  # 2 CPUs in ray_local
    assert [record["global_batch_size"] for record in records] == [64, 64]
    assert (tmp_path / "work" / "2-workers" / "bundle" / "bundle.json").exists()


@pytest.mark.ray
def test_bench_train_batch_per_worker(trained, tmp_path, capsys):
    output = tmp_path / "bench.json"
    args = [
        "bench", "train", "--config", str(REPO / "configs" / "ml-100k.yaml"), "--epochs", "1", "--workers", "2",
        "--batch-per-worker", "--work-dir", str(tmp_path / "work"), "--output", str(output),
        f"data.output_dir={trained['prepared']}", "model.max_len=20", "model.hidden_size=16", "model.num_layers=1",
        "train.batch_size=32",
    ]
    assert main(args) == 0
    records = json.loads(output.read_text())
    assert [(record["workers"], record["global_batch_size"]) for record in records] == [(2, 64)]
    assert "global batch" in capsys.readouterr().out

    # A second call in the same work dir trains anew instead of resuming the finished run.
    assert main(args) == 0
    assert len(list((tmp_path / "work" / "2-workers" / "runs").glob("bench-2-workers-*"))) == 2
    assert json.loads(output.read_text())[0]["train_s_per_epoch"] != records[0]["train_s_per_epoch"]


def test_bench_train_rejects_zero_workers(capsys):
    assert main(["bench", "train", "--workers", "0"]) == 2
    assert "--workers ([0]) must be at least 1" in capsys.readouterr().err


def test_doctor_reports_missing_package(monkeypatch):
    import importlib

    from rayrec import doctor

    real_import = importlib.import_module

    def import_without_matplotlib(name, *args, **kwargs):
        if name == "matplotlib":
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(doctor.importlib, "import_module", import_without_matplotlib)
    check = doctor.check_packages()

    assert check.status == "fail"
    assert "matplotlib (No module named 'matplotlib')" in check.detail
    assert "pip install -e ." in check.fix


def test_doctor_warns_low_memory_and_disk(monkeypatch):
    # This machine has plenty of both, so the measurements are replaced by small ones.
    import collections

    import psutil

    from rayrec import doctor
    from rayrec.config import load_config

    memory = collections.namedtuple("Memory", "available total")
    monkeypatch.setattr(psutil, "virtual_memory", lambda: memory(available=1 * doctor.GIB, total=8 * doctor.GIB))
    usage = collections.namedtuple("Usage", "total used free")
    monkeypatch.setattr(doctor.shutil, "disk_usage", lambda path: usage(10 * doctor.GIB, 9.5 * doctor.GIB, 0.5 * doctor.GIB))

    memory_check = doctor.check_memory()
    disk_checks = doctor.check_disk(load_config(None, ["train.storage_path=s3://bucket/runs"]))

    assert memory_check.status == "warn"
    assert memory_check.detail == "1.0 GiB free of 8.0 GiB"
    assert [check.status for check in disk_checks] == ["warn", "info", "warn"]
    assert "set data.output_dir=PATH" in disk_checks[0].fix
    assert "s3://bucket/runs is remote storage; not checked" in disk_checks[1].detail


def test_bench_train_needs_prepared_data(tmp_path, capsys):
    assert main(["bench", "train", f"data.output_dir={tmp_path / 'missing'}"]) == 2
    assert f"No prepared data at {tmp_path / 'missing'}; run `rayrec prepare`" in capsys.readouterr().err
