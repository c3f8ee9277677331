"""Submit the training job to a real head node on 127.0.0.1 with token authentication on."""

import os
import random
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.ray

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _ports_outside_ephemeral_range(count: int) -> list[int]:
    """Pick free ports that no bind to port 0 can take while the head starts.

    A port from bind(0) is released before `ray start` binds it, and Ray's own processes bind
    port 0 too, so they could take it first. Ports below the OS's ephemeral range and above
    Ray's default worker ports (10002-19999) are never handed out that way.
    """
    low, high = 20000, 32768
    range_file = Path("/proc/sys/net/ipv4/ip_local_port_range")
    if range_file.exists():
        high = min(high, int(range_file.read_text().split()[0]))
    ports = []
    for port in random.sample(range(low, high), min(500, high - low)):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        ports.append(port)
        if len(ports) == count:
            return ports
    pytest.fail(f"found only {len(ports)} of {count} free ports between {low} and {high}")


def _ray(*args, env, timeout=120, check=True):
    return subprocess.run([str(BIN / "ray"), *args], env=env, timeout=timeout, capture_output=True, text=True,
                          check=check)


@pytest.fixture(scope="module")
def head_node(tmp_path_factory):
    env = {**os.environ, "RAY_AUTH_MODE": "token", "PATH": f"{BIN}:{os.environ['PATH']}"}
    env.pop("RAY_ADDRESS", None)
    # A token file must exist before `ray start`; the job client reads the same file.
    token_path = Path.home() / ".ray" / "auth_token"
    if not token_path.exists():
        _ray("get-auth-token", "--generate", env=env)

    gcs_port, dashboard_port, *agent_ports = _ports_outside_ephemeral_range(7)
    temp_dir = tmp_path_factory.mktemp("ray-head")
    # --block keeps the head tied to this process, so stopping it does not touch other Ray instances.
    head = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={gcs_port}",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard_port}", "--num-cpus=2",
         "--disable-usage-stats", f"--temp-dir={temp_dir}",
         # Ray's default agent ports may already be taken by the local Ray of other tests.
         f"--dashboard-agent-listen-port={agent_ports[0]}", f"--dashboard-agent-grpc-port={agent_ports[1]}",
         f"--runtime-env-agent-port={agent_ports[2]}", f"--metrics-export-port={agent_ports[3]}",
         f"--ray-client-server-port={agent_ports[4]}"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    address = f"http://127.0.0.1:{dashboard_port}"
    deadline = time.monotonic() + 120
    while _ray("job", "list", "--address", address, env=env, check=False).returncode != 0:
        if time.monotonic() > deadline or head.poll() is not None:
            head.kill()
            pytest.fail("the Ray head node did not come up within 120 s")
        time.sleep(2)

    yield {"address": address, "env": env, "gcs_address": f"127.0.0.1:{gcs_port}"}
    head.terminate()
    try:
        head.wait(timeout=60)
    except subprocess.TimeoutExpired:
        head.kill()


def test_job_client_without_token_is_rejected(head_node):
    env = {**head_node["env"], "RAY_AUTH_TOKEN": "not-the-token"}
    result = _ray("job", "list", "--address", head_node["address"], env=env, check=False)

    assert result.returncode != 0


@pytest.fixture(scope="module")
def submitted_job(head_node, ml100k_slice, tmp_path_factory):
    """The README's flow: submit with --no-wait, follow the log until the job ends, then ask its status."""
    out = tmp_path_factory.mktemp("submit") / "out"
    submission_id = "rayrec-train-test"
    command = [
        "job", "submit", "--address", head_node["address"], "--working-dir", str(REPO), "--no-wait",
        "--submission-id", submission_id, "--",
        "python", "jobs/train.py", "--config", "configs/ml-100k.yaml",
        "data.dataset=null", f"data.input_path={ml100k_slice}", f"data.output_dir={out}/prepared",
        "model.max_len=20", "model.hidden_size=16", "model.num_layers=1",
        "train.max_epochs=1", "train.batch_size=64",
        f"train.storage_path={out}/runs", f"train.bundle_dir={out}/bundle",
    ]
    deadline = time.monotonic() + 120
    while True:
        submit = _ray(*command, env=head_node["env"], timeout=120, check=False)
        # The head serves `job list` a little before its job agent accepts submissions.
        if "No available agent" not in submit.stderr or time.monotonic() > deadline:
            break
        time.sleep(3)
    logs = _ray("job", "logs", "--address", head_node["address"], "--follow", submission_id, env=head_node["env"],
                timeout=900, check=False)
    status = _ray("job", "status", "--address", head_node["address"], submission_id, env=head_node["env"],
                  check=False)
    return {"out": out, "submit": submit, "logs": logs, "status": status}


def test_submitted_training_job_writes_bundle(submitted_job):
    out, submit = submitted_job["out"], submitted_job["submit"]

    assert submit.returncode == 0, submit.stdout[-3000:] + submit.stderr[-3000:]
    assert "succeeded" in (submitted_job["status"].stdout + submitted_job["status"].stderr).lower(), \
        submitted_job["logs"].stdout[-3000:]
    for name in ("model.pt", "bundle.json", "vocab.parquet", "histories.parquet", "config.yaml"):
        assert (out / "bundle" / name).exists(), name
    assert list((out / "runs").rglob("state.pt"))


def test_job_log_names_bundle(submitted_job):
    logs = submitted_job["logs"]

    assert logs.returncode == 0, logs.stderr[-3000:]
    assert f"Bundle written to {submitted_job['out'] / 'bundle'}" in logs.stdout


def test_serve_deploys_bundle_on_head(head_node, submitted_job):
    """`rayrec serve --bundle` with RAY_ADDRESS set deploys on the head node; then SIGTERM shuts Serve down."""
    from conftest import free_port

    port = free_port()
    env = {**head_node["env"], "RAY_ADDRESS": head_node["gcs_address"], "PYTHONUNBUFFERED": "1"}
    server = subprocess.Popen([str(BIN / "rayrec"), "serve", "--bundle", str(submitted_job["out"] / "bundle"),
                               "--port", str(port)], cwd=REPO, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(server.stdout), daemon=True)
    reader.start()
    try:
        response = _post_when_serving(f"http://127.0.0.1:{port}", server, lines, timeout_s=180)
    finally:
        server.terminate()
        server.wait(timeout=120)
        reader.join(timeout=10)
    output = "".join(lines)

    assert response is not None, output[-3000:]
    assert response.status_code == 200, response.text
    assert len(response.json()["items"]) == 5
    assert f"Serving at http://127.0.0.1:{port}" in output


def _post_when_serving(url: str, server: subprocess.Popen, lines: list[str], timeout_s: float):
    """Wait for `rayrec serve` to print its URL (it then handles SIGTERM), then send one request."""
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and server.poll() is None:
        if any("Serving at" in line for line in lines):
            return httpx.post(f"{url}/recommend", json={"user_id": "1", "k": 5}, timeout=30)
        time.sleep(1)
    return None
