"""Training survives a killed worker and a killed driver; both continue from the last checkpoint.

Each test kills a real process of a local Ray run: a Ray Train worker (Ray restarts the
worker group) or the whole driver with its local Ray (the user runs `rayrec train --resume`).
"""

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from conftest import registered_checkpoints, shared_ray_paused

pytestmark = pytest.mark.ray

EPOCHS = 6
SMALL_MODEL = ["model.max_len=20", "model.hidden_size=16", "model.num_layers=1", "model.num_heads=1"]


def _checkpoints(storage: Path) -> list[Path]:
    # Each checkpoint folder contains state.pt once the checkpoint is written.
    return sorted(path.parent for path in storage.rglob("checkpoint_*/state.pt"))


def _registered(storage: Path) -> int:
    runs = [path.parent for path in storage.glob("*/checkpoint_manager_snapshot.json")]
    return max((registered_checkpoints(pafs.LocalFileSystem(), str(run)) for run in runs), default=0)


def _wait_for_registered_checkpoint(storage: Path, timeout_s: float, process: subprocess.Popen | None = None) -> bool:
    """Wait until Ray Train has registered a checkpoint: only then must a restart continue from it."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if _registered(storage) >= 1:
            return True
        if process is not None and process.poll() is not None:
            return False
        time.sleep(0.1)
    return False


def _alive_train_worker_pids() -> list[int]:
    """Process ids of the Ray Train workers alive now, from Ray's actor table rather than a process scan."""
    import ray._private.state  # NOTE: private API of Ray 2.60; the public state API needs the dashboard.

    return [actor["Pid"] for actor in ray._private.state.actors().values()
            if actor["ActorClassName"].endswith("RayTrainWorker") and actor["State"] == "ALIVE" and actor["Pid"]]


def test_killed_worker_recovers_from_checkpoint(ray_local, trained, tmp_path):
    from rayrec.models.config import ModelConfig
    from rayrec.training.config import TrainConfig
    from rayrec.training.trainer import train

    storage = tmp_path / "runs"
    config = TrainConfig(num_workers=2, batch_size=16, max_epochs=EPOCHS, patience=EPOCHS, log_every_n_steps=1000,
                         storage_path=str(storage), bundle_dir=str(tmp_path / "bundle"))
    killed: list[int] = []

    def kill_one_worker() -> None:
        if _wait_for_registered_checkpoint(storage, timeout_s=120):
            pids = _alive_train_worker_pids()
            if pids:
                os.kill(pids[0], signal.SIGKILL)
                killed.append(pids[0])

    killer = threading.Thread(target=kill_one_worker, daemon=True)
    killer.start()
    output = train(trained["prepared"], ModelConfig(max_len=20, hidden_size=16, num_layers=1, num_heads=1),
                   config, "ml-100k-slice")
    killer.join(timeout=5)

    assert killed, "no Ray Train worker process was found to kill"
    assert output.metrics["epochs_trained"] == EPOCHS
    resumed = output.metrics["resumed_at_epochs"]
    assert len(resumed) == 1
    assert 1 <= resumed[0] < EPOCHS
    # The history restored from the checkpoint and the epochs after it form one unbroken run.
    assert [int(row["epoch"]) for row in output.history] == list(range(EPOCHS))
    assert output.metrics["test_users"] == trained["stats"].users


def test_killed_driver_resumes_with_resume_flag(trained, tmp_path):
    storage = tmp_path / "runs"
    command = [sys.executable, "-m", "rayrec.cli", "train", "--config", "configs/ml-100k.yaml", "--skip-prepare",
               f"data.output_dir={trained['prepared']}", f"train.storage_path={storage}",
               f"train.bundle_dir={tmp_path / 'bundle'}", f"train.max_epochs={EPOCHS}", f"train.patience={EPOCHS}",
               "train.batch_size=16", *SMALL_MODEL]
    repo = Path(__file__).resolve().parents[2]

    with shared_ray_paused():
        # The driver and the local Ray it starts share one process group: killing the group is a lost job.
        first = subprocess.Popen(command, cwd=repo, start_new_session=True, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
        try:
            registered = _wait_for_registered_checkpoint(storage, timeout_s=180, process=first)
            assert registered, "the first run registered no checkpoint"
        finally:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait(timeout=30)
        checkpoints_before = len(_checkpoints(storage))

        resumed = subprocess.run([*command, "--resume"], cwd=repo, capture_output=True, text=True, timeout=300)

    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert len(list(storage.iterdir())) == 1, "--resume must continue the killed run, not start another"
    assert len(_checkpoints(storage)) >= checkpoints_before
    assert "Resuming run" in resumed.stderr
    assert '"epochs_trained": 6' in resumed.stdout
    assert '"resumed_at_epochs": [' in resumed.stdout
    assert (tmp_path / "bundle" / "model.pt").exists()


def test_resume_without_a_run_fails_clearly(ray_local, trained, tmp_path):
    from rayrec.models.config import ModelConfig
    from rayrec.training.config import TrainConfig
    from rayrec.training.trainer import train

    config = TrainConfig(storage_path=str(tmp_path / "empty"), bundle_dir=str(tmp_path / "bundle"))
    with pytest.raises(FileNotFoundError, match="--resume found no run with a checkpoint under"):
        train(trained["prepared"], ModelConfig(hidden_size=16, num_heads=1), config, "x", resume=True)
