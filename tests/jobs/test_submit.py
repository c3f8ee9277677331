"""Submit the training job to a real head node on 127.0.0.1 with token authentication on."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.ray

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _ray(*args, env, timeout=120, check=True):
    return subprocess.run([str(BIN / "ray"), *args], env=env, timeout=timeout, capture_output=True, text=True,
                          check=check)


@pytest.fixture(scope="module")
def head_node(tmp_path_factory):
    from conftest import free_port

    env = {**os.environ, "RAY_AUTH_MODE": "token", "PATH": f"{BIN}:{os.environ['PATH']}"}
    env.pop("RAY_ADDRESS", None)
    # A token file must exist before `ray start`; the job client reads the same file.
    token_path = Path.home() / ".ray" / "auth_token"
    if not token_path.exists():
        _ray("get-auth-token", "--generate", env=env)

    gcs_port, dashboard_port = free_port(), free_port()
    temp_dir = tmp_path_factory.mktemp("ray-head")
    # --block keeps the head tied to this process, so stopping it does not touch other Ray instances.
    head = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={gcs_port}",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard_port}", "--num-cpus=2",
         "--disable-usage-stats", f"--temp-dir={temp_dir}",
         # Ray's default agent ports may already be taken by the local Ray of other tests.
         f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
         f"--runtime-env-agent-port={free_port()}", f"--metrics-export-port={free_port()}",
         f"--ray-client-server-port={free_port()}"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    address = f"http://127.0.0.1:{dashboard_port}"
    deadline = time.monotonic() + 120
    while _ray("job", "list", "--address", address, env=env, check=False).returncode != 0:
        if time.monotonic() > deadline or head.poll() is not None:
            head.kill()
            pytest.fail("the Ray head node did not come up within 120 s")
        time.sleep(2)

    yield {"address": address, "env": env}
    head.terminate()
    try:
        head.wait(timeout=60)
    except subprocess.TimeoutExpired:
        head.kill()


def test_job_client_without_token_is_rejected(head_node):
    env = {**head_node["env"], "RAY_AUTH_TOKEN": "not-the-token"}
    result = _ray("job", "list", "--address", head_node["address"], env=env, check=False)

    assert result.returncode != 0


def test_submitted_training_job_writes_bundle(head_node, ml100k_slice, tmp_path):
    out = tmp_path / "out"
    command = [
        "job", "submit", "--address", head_node["address"], "--working-dir", str(REPO), "--",
        "python", "jobs/train.py", "--config", "configs/ml-100k.yaml",
        "data.dataset=null", f"data.input_path={ml100k_slice}", f"data.output_dir={out}/prepared",
        "model.max_len=20", "model.hidden_size=16", "model.num_layers=1",
        "train.max_epochs=1", "train.batch_size=64",
        f"train.storage_path={out}/runs", f"train.bundle_dir={out}/bundle",
    ]
    deadline = time.monotonic() + 120
    while True:
        result = _ray(*command, env=head_node["env"], timeout=900, check=False)
        # The head serves `job list` a little before its job agent accepts submissions.
        if "No available agent" not in result.stderr or time.monotonic() > deadline:
            break
        time.sleep(3)

    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "succeeded" in (result.stdout + result.stderr).lower()
    for name in ("model.pt", "bundle.json", "vocab.parquet", "histories.parquet", "config.yaml"):
        assert (out / "bundle" / name).exists(), name
    assert list((out / "runs").rglob("state.pt"))
