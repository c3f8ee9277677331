"""Operations on a live deployment: model swap under load, a killed replica, autoscaling.

Each test deploys its own copy of the shipped Serve config on 127.0.0.1, sends bounded
closed-loop traffic from a few async clients and shuts Serve down at the end.
"""

import asyncio
import copy
import json
import shutil
import threading
import time
from pathlib import Path

import httpx
import pytest
import yaml

pytestmark = pytest.mark.ray

SERVE_CONFIG = Path(__file__).resolve().parents[2] / "serve_configs" / "ml-100k.yaml"


@pytest.fixture
def serve_config(tmp_path, trained):
    """Write a variant of the shipped Serve config; returns (write(recommender_changes) -> path, port)."""
    from conftest import free_port

    port = free_port()

    def write(**recommender_changes) -> Path:
        config = copy.deepcopy(yaml.safe_load(SERVE_CONFIG.read_text()))
        config["http_options"]["port"] = port
        recommender = next(d for d in config["applications"][0]["deployments"] if d["name"] == "Recommender")
        recommender["user_config"]["bundle_path"] = str(trained["output"].bundle_dir)
        for key, value in recommender_changes.items():
            if value is None:
                recommender.pop(key, None)
            else:
                recommender[key] = value
        path = tmp_path / "serve.yaml"
        path.write_text(yaml.safe_dump(config))
        return path

    yield write, port

    from rayrec.serving.deploy import shutdown

    shutdown()


class Traffic:
    """Closed-loop clients sending `POST /recommend` until stopped or until `max_s` has passed."""

    def __init__(self, url: str, users: list[str], clients: int, max_s: float):
        self.url, self.users, self.clients, self.max_s = url, users, clients, max_s
        self.results: list[tuple[float, int, str | None]] = []  # (time, status or 0 for no response, version)
        self.stop = threading.Event()

    async def _client(self, client: httpx.AsyncClient, offset: int) -> None:
        deadline = time.monotonic() + self.max_s
        i = offset
        while not self.stop.is_set() and time.monotonic() < deadline:
            user = self.users[i % len(self.users)]
            i += self.clients
            try:
                response = await client.post(f"{self.url}/recommend", json={"user_id": user, "k": 5})
                version = response.json().get("model_version") if response.status_code == 200 else None
                self.results.append((time.monotonic(), response.status_code, version))
            except httpx.HTTPError:
                self.results.append((time.monotonic(), 0, None))

    async def run(self) -> None:
        async with httpx.AsyncClient(timeout=30) as client:
            await asyncio.gather(*[self._client(client, i) for i in range(self.clients)])


def _wait_for(condition, timeout_s: float, what: str, interval_s: float = 0.5):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def _copy_bundle(source: Path, target: Path, version: str) -> Path:
    shutil.copytree(source, target)
    metadata = json.loads((target / "bundle.json").read_text())
    metadata["version"] = version
    (target / "bundle.json").write_text(json.dumps(metadata))
    return target


def _running_replicas() -> int:
    from ray import serve

    deployment = serve.status().applications["rayrec"].deployments["Recommender"]
    return deployment.replica_states.get("RUNNING", 0)


def test_model_swap_under_load(serve_config, trained, tmp_path):
    from rayrec.serving.deploy import deploy

    write, _ = serve_config
    source = Path(trained["output"].bundle_dir)
    first = _copy_bundle(source, tmp_path / "first", "v-first")
    second = _copy_bundle(source, tmp_path / "second", "v-second")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "bundle.json").write_text("{not json")
    config = write()
    url = deploy(config, bundle_path=str(first))
    traffic = Traffic(url, _users(source), clients=6, max_s=120)

    def operate():
        try:
            time.sleep(2)
            deploy(config, bundle_path=str(second))
            _wait_for(lambda: httpx.get(f"{url}/model").json()["version"] == "v-second", 60, "the swap to v-second")
            time.sleep(2)
            deploy(config, bundle_path=str(broken))
            _wait_for(lambda: httpx.get(f"{url}/model").json()["last_load_error"], 60, "the failed load to be reported")
            time.sleep(2)
        finally:
            traffic.stop.set()

    operator = threading.Thread(target=operate)
    operator.start()
    asyncio.run(traffic.run())
    operator.join(timeout=180)

    statuses = [status for _, status, _ in traffic.results]
    versions = [version for _, _, version in sorted(traffic.results)]
    assert statuses and set(statuses) == {200}, f"non-200 answers during the swaps: {sorted(set(statuses))}"
    assert versions[0] == "v-first"
    assert versions[-1] == "v-second"  # the broken bundle never replaced the working one
    switch = versions.index("v-second")
    assert set(versions[switch:]) == {"v-second"}, "a request reached the old model after the swap"

    model = httpx.get(f"{url}/model").json()
    assert model["version"] == "v-second"
    assert str(broken) in model["last_load_error"]["bundle_path"]


def _users(bundle_dir: Path) -> list[str]:
    import pyarrow.parquet as pq

    return pq.read_table(bundle_dir / "histories.parquet", columns=["user_id"])["user_id"].to_pylist()[:50]


def _replica_names() -> list[str]:
    import ray

    return sorted(actor["name"] for actor in ray.util.list_named_actors(all_namespaces=True)
                  if actor["name"].startswith("SERVE_REPLICA") and "Recommender" in actor["name"])


def test_killed_replica_is_replaced(serve_config, trained):
    import ray

    from rayrec.serving.deploy import deploy

    write, _ = serve_config
    config = write(num_replicas=2, ray_actor_options={"num_cpus": 0.5})
    url = deploy(config)
    _wait_for(lambda: _running_replicas() == 2, 60, "2 running replicas")
    traffic = Traffic(url, _users(Path(trained["output"].bundle_dir)), clients=4, max_s=90)

    killed_at = {}

    def kill_one():
        try:
            time.sleep(3)
            victim = _replica_names()[0]
            killed_at["time"] = time.monotonic()
            ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)

            def replaced() -> bool:
                names = _replica_names()
                return victim not in names and len(names) == 2 and _running_replicas() == 2

            _wait_for(replaced, 90, "the replacement replica")
            killed_at["replaced"] = time.monotonic()
            time.sleep(4)
        finally:
            traffic.stop.set()

    operator = threading.Thread(target=kill_one)
    operator.start()
    asyncio.run(traffic.run())
    operator.join(timeout=120)

    errors = [result for result in traffic.results if result[1] != 200]
    after = [status for at, status, _ in traffic.results if at > killed_at["replaced"] + 1]
    print(f"killed replica: {len(traffic.results)} requests, {len(errors)} errors, replaced after "
          f"{killed_at['replaced'] - killed_at['time']:.1f} s")
    assert not operator.is_alive()
    assert len(errors) <= 20, f"{len(errors)} failed requests out of {len(traffic.results)}"
    assert after and set(after) == {200}, "requests still failing after the replacement replica was running"
    assert httpx.get(f"{url}/healthz").status_code == 200


def test_replicas_scale_up_and_down(serve_config, trained):
    from rayrec.serving.deploy import deploy

    write, _ = serve_config
    config = write(num_replicas=None, max_ongoing_requests=32, ray_actor_options={"num_cpus": 0.5}, autoscaling_config={
        "min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 2,
        "upscale_delay_s": 1, "downscale_delay_s": 2, "look_back_period_s": 2, "metrics_interval_s": 0.5,
    })
    url = deploy(config)
    assert _running_replicas() == 1
    traffic = Traffic(url, _users(Path(trained["output"].bundle_dir)), clients=12, max_s=60)
    peak = {"replicas": 1}

    def watch():
        try:
            peak["replicas"] = _wait_for(lambda: _running_replicas() >= 2 and _running_replicas(), 55,
                                         "a second replica under load")
        finally:
            traffic.stop.set()

    watcher = threading.Thread(target=watch)
    watcher.start()
    asyncio.run(traffic.run())
    watcher.join(timeout=70)

    assert peak["replicas"] == 2
    assert {status for _, status, _ in traffic.results} == {200}
    _wait_for(lambda: _running_replicas() == 1, 90, "the scale-down to 1 replica after the load stopped")
