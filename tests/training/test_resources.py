import os
import subprocess
import sys
import tempfile

import pytest

from rayrec.training.config import TrainConfig
from rayrec.training.resources import WORKER_NICENESS_ENV, plan_worker_resources, run_workers_at_normal_priority


def test_two_cpus_keep_one_for_data():
    plan = plan_worker_resources(TrainConfig(num_workers=2), cluster_cpus=2)

    assert plan.cpus_per_worker == 0.5
    assert plan.free_cpus == 1
    assert plan.torch_threads == 1


def test_explicit_cpus_that_starve_data_rejected():
    with pytest.raises(ValueError, match="2 training workers x 1 CPUs = 2 CPUs, but only 1 of the cluster's 2 CPUs"):
        plan_worker_resources(TrainConfig(num_workers=2, cpus_per_worker=1.0), cluster_cpus=2)


def test_cluster_too_small_rejected():
    with pytest.raises(ValueError, match="leaves none for training"):
        plan_worker_resources(TrainConfig(num_workers=1), cluster_cpus=1)


def test_large_cluster_caps_cpus_per_worker():
    plan = plan_worker_resources(TrainConfig(num_workers=2), cluster_cpus=64)

    assert plan.cpus_per_worker == 4.0
    assert plan.free_cpus == 56


def test_train_config_validation():
    with pytest.raises(ValueError, match="batch_size \\(1\\) is global and must be at least num_workers \\(2\\)"):
        TrainConfig(num_workers=2, batch_size=1)
    with pytest.raises(ValueError, match="cpus_per_worker"):
        TrainConfig(cpus_per_worker=0)
    with pytest.raises(ValueError, match="data_cpus \\(0.0\\) must be positive"):
        TrainConfig(data_cpus=0.0)


def test_lr_schedule_validation():
    with pytest.raises(ValueError, match="warmup_steps \\(-1\\) must not be negative"):
        TrainConfig(warmup_steps=-1)


@pytest.mark.ray
def test_local_ray_workers_niceness_0(ray_local):
    env = {key: value for key, value in os.environ.items() if key not in ("RAY_ADDRESS", WORKER_NICENESS_ENV)}
    script = (
        "import os, ray\n"
        "from rayrec.cli import init_ray\n"
        "init_ray()\n"
        "print('niceness', ray.get(ray.remote(num_cpus=0)(lambda: os.nice(0)).remote()))\n"
        "ray.shutdown()\n"
    )
    # Its own temp dir (short, for Ray's socket paths) makes it start a new Ray beside the suite's.
    with tempfile.TemporaryDirectory(prefix="rr-", dir="/tmp") as temp_dir:
        env["RAY_TMPDIR"] = temp_dir
        result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)

    assert result.returncode == 0, result.stderr[-2000:]
    assert "niceness 0" in result.stdout


def test_user_niceness_is_kept(monkeypatch):
    monkeypatch.setenv(WORKER_NICENESS_ENV, "15")
    run_workers_at_normal_priority()
    assert os.environ[WORKER_NICENESS_ENV] == "15"
