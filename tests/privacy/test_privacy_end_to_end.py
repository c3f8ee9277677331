"""One pseudonymised run through the CLI and real Serve on 127.0.0.1: outputs, logs, token, deletion.

The user and item ids are distinctive strings that no other test uses, so finding one in a
file or log means this run wrote it there.
"""

import json
import logging
import time
from pathlib import Path

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from rayrec.data.privacy import pseudonymize

pytestmark = pytest.mark.ray

SERVE_CONFIG = Path(__file__).resolve().parents[2] / "serve_configs" / "ml-100k.yaml"
KEY = b"privacy-test-key-5f0c2e7a9b1d"
TOKEN = "privacy-test-token-8d3e6a1c4f"
USERS = [f"zqx-person-{name}-4821" for name in ("ada", "grace", "linus", "barbara", "ken", "dennis", "margaret",
                                                  "edsger", "frances", "niklaus")]
ITEMS = [f"zqx-film-{index:02d}-77" for index in range(16)]
UNKNOWN_USER = "zqx-person-nobody-4821"


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(self.format(record))


def _write_log(path: Path) -> dict[str, list[str]]:
    rng = np.random.default_rng(7)
    histories = {user: [ITEMS[i] for i in rng.integers(0, len(ITEMS), size=int(rng.integers(6, 11)))] for user in USERS}
    rows = [(user, item, 1_000 + t) for user, items in histories.items() for t, item in enumerate(items)]
    pq.write_table(pa.table({"user_id": [r[0] for r in rows], "item_id": [r[1] for r in rows],
                             "timestamp": [r[2] for r in rows]}), path)
    return histories


def _run_config(root: Path, key_file: Path) -> Path:
    config = {
        "data": {"dataset": None, "input_path": str(root / "log.parquet"), "output_dir": str(root / "prepared"),
                 "pseudonymize_users": True, "user_id_key_file": str(key_file), "num_shards": 2},
        "model": {"max_len": 20, "hidden_size": 16, "num_layers": 1, "num_heads": 2, "dropout": 0.1},
        "train": {"num_workers": 1, "batch_size": 8, "max_epochs": 1, "patience": 1, "warmup_steps": 1,
                  "log_every_n_steps": 1, "storage_path": str(root / "runs"), "bundle_dir": str(root / "bundle")},
    }
    path = root / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _serve_config(root: Path, key_file: Path, token_file: Path, version: str | None = None) -> Path:
    config = yaml.safe_load(SERVE_CONFIG.read_text())
    app = config["applications"][0]
    app["args"].update({"user_id_key_file": str(key_file), "auth_token_file": str(token_file)})
    user_config = app["deployments"][0]["user_config"]
    user_config["bundle_path"] = str(root / "bundle")
    if version is not None:
        user_config["version"] = version  # a changed user_config makes the replica load the bundle again
    path = root / ("serve.yaml" if version is None else "serve-reload.yaml")
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def run(ray_local, tmp_path_factory):
    """Prepare and train through `rayrec train`, then serve the bundle with a token and the user id key."""
    from conftest import free_port
    from rayrec.cli import main
    from rayrec.serving.deploy import deploy, shutdown

    root = tmp_path_factory.mktemp("privacy")
    histories = _write_log(root / "log.parquet")
    key_file, token_file = root / "user-id.key", root / "api.token"
    key_file.write_bytes(KEY)
    token_file.write_text(TOKEN + "\n")
    records = _Records()
    root_logger, level = logging.getLogger(), logging.getLogger().level
    root_logger.addHandler(records)
    root_logger.setLevel(logging.DEBUG)
    port = free_port()
    try:
        assert main(["train", "--config", str(_run_config(root, key_file))]) == 0
        url = deploy(_serve_config(root, key_file, token_file), port=port)
        yield {"root": root, "url": url, "histories": histories, "records": records, "key_file": key_file,
               "token_file": token_file, "port": port}
    finally:
        shutdown()
        root_logger.removeHandler(records)
        root_logger.setLevel(level)


def _auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKEN}"}


def _secrets_found(data: bytes, where: str) -> list[str]:
    found = [f"{where}: raw user id {user}" for user in USERS + [UNKNOWN_USER] if user.encode() in data]
    if KEY in data:
        found.append(f"{where}: user id key")
    if TOKEN.encode() in data:
        found.append(f"{where}: API token")
    return found


def test_outputs_hold_no_raw_user_id(run):
    root = run["root"]
    files = [path for name in ("prepared", "runs", "bundle") for path in (root / name).rglob("*") if path.is_file()]

    assert any(path.name == "histories.parquet" for path in files)
    assert any(path.suffix == ".md" for path in files)  # the run report
    assert len([path for path in files if path.suffix == ".parquet"]) >= 8
    found = [line for path in files for line in _secrets_found(path.read_bytes(), str(path))]
    assert found == []

    metadata = json.loads((root / "bundle" / "bundle.json").read_text())
    assert metadata["user_ids"]["scheme"] == "hmac-sha256-128"
    stored = pq.read_table(root / "bundle" / "histories.parquet")["user_id"].to_pylist()
    assert sorted(stored) == sorted(pseudonymize(KEY, user) for user in USERS)


def test_missing_or_wrong_token_gets_401(run):
    url = run["url"]
    body = {"user_id": USERS[0], "k": 3}
    cases = {
        "missing": {},
        "wrong": {"Authorization": "Bearer not-the-token-at-all"},
        "other scheme": {"Authorization": f"Basic {TOKEN}"},
    }
    for name, headers in cases.items():
        response = httpx.post(f"{url}/recommend", json=body, headers=headers, timeout=30)
        assert response.status_code == 401, name
        assert response.json() == {"detail": "missing or invalid bearer token"}, name
        assert response.headers["www-authenticate"] == "Bearer", name

    assert httpx.get(f"{url}/model", timeout=30).status_code == 401
    assert httpx.get(f"{url}/openapi.json", timeout=30).status_code == 401
    batch = httpx.post(f"{url}/recommend/batch", json={"requests": [body]}, timeout=30)
    assert batch.status_code == 401
    assert httpx.get(f"{url}/model", headers=_auth(), timeout=30).status_code == 200


def test_healthz_open_without_token(run):
    response = httpx.get(f"{run['url']}/healthz", timeout=30)

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_raw_user_id_gets_personal_result(run):
    from rayrec.data.privacy import load_user_id_key, user_id_lookup
    from rayrec.models.bundle import load_bundle
    from rayrec.models.recommend import rank_queries, resolve_query

    bundle = load_bundle(run["root"] / "bundle")
    users = user_id_lookup(bundle.metadata["user_ids"], str(run["key_file"]), "test bundle")
    assert users.key == load_user_id_key(str(run["key_file"]))
    user = USERS[3]
    query = resolve_query(bundle, users.stored_id(user), None, 5)
    expected = [bundle.item_ids[index] for index, _ in rank_queries(bundle, [query])[0]]

    response = httpx.post(f"{run['url']}/recommend", json={"user_id": user, "k": 5}, headers=_auth(), timeout=30)

    assert response.status_code == 200
    body = response.json()
    assert body["fallback"] is False
    assert body["unknown_user"] is False
    assert [item["item_id"] for item in body["items"]] == expected
    assert not set(expected) & set(run["histories"][user])


def test_explain_over_http(run):
    history = run["histories"][USERS[1]][-4:]
    response = httpx.post(f"{run['url']}/recommend", json={"history": history, "k": 3, "explain": True},
                          headers=_auth(), timeout=30)

    assert response.status_code == 200
    items = response.json()["items"]
    assert len(items) == 3
    for item in items:
        assert 1 <= len(item["reasons"]) <= 3
        assert {reason["item_id"] for reason in item["reasons"]} <= set(history)
        weights = [reason["weight"] for reason in item["reasons"]]
        assert weights == sorted(weights, reverse=True)

    plain = httpx.post(f"{run['url']}/recommend", json={"history": history, "k": 3}, headers=_auth(), timeout=30)
    assert all(item["reasons"] is None for item in plain.json()["items"])


def test_logs_hold_no_ids_or_histories(run, ray_local):
    url = run["url"]
    requests = [
        {"user_id": USERS[0], "k": 4},
        {"user_id": UNKNOWN_USER, "k": 4},
        {"history": run["histories"][USERS[2]], "k": 4, "explain": True},
        {"user_id": USERS[4], "history": [], "k": 0},  # invalid: an empty history and k below 1
    ]
    statuses = [httpx.post(f"{url}/recommend", json=body, headers=_auth(), timeout=30).status_code for body in requests]
    bad = httpx.post(f"{url}/recommend", json=requests[3], headers=_auth(), timeout=30)
    assert statuses == [200, 200, 200, 422]
    assert not _secrets_found(bad.content, "422 body")
    assert USERS[4] not in bad.text

    time.sleep(2)  # Ray flushes worker output to its log files asynchronously
    # NOTE: Ray 2.60 exposes the session folder of a running cluster only through this private API.
    session_dir = Path(ray_local._private.worker._global_node.get_session_dir_path())
    log_files = [path for path in (session_dir / "logs").rglob("*") if path.is_file()]
    assert any("serve" in path.parts for path in log_files)
    assert any(path.name.startswith("worker-") for path in log_files)
    texts = {str(path): path.read_bytes() for path in log_files}
    texts["driver log records"] = "\n".join(run["records"].lines).encode()
    assert len(run["records"].lines) > 10  # the driver's prepare and train lines were captured

    found = [line for where, data in texts.items() for line in _secrets_found(data, where)]
    found += [f"{where}: item id {item}" for where, data in texts.items() for item in ITEMS if item.encode() in data]
    assert found == []


def test_delete_user_gets_fallback(run, capsys):
    from rayrec.cli import main
    from rayrec.models.bundle import load_bundle
    from rayrec.serving.deploy import deploy

    root, user = run["root"], USERS[5]
    assert main(["delete-user", "--user-id", user, "--bundle", str(root / "bundle"),
                 "--user-id-key-file", str(run["key_file"])]) == 0
    report = json.loads(capsys.readouterr().out.split("\n}\n")[0] + "}")
    assert report == {"removed_rows": {"histories.parquet": 1}, "total_removed_rows": 1}

    assert main(["recommend", "--bundle", str(root / "bundle"), "--user-id", user, "-k", "3",
                 "--user-id-key-file", str(run["key_file"])]) == 0
    offline = json.loads(capsys.readouterr().out)
    assert offline["fallback"] is True
    assert offline["unknown_user"] is True

    # A changed user_config makes the running replica load the edited bundle.
    version = load_bundle(root / "bundle").version
    deploy(_serve_config(root, run["key_file"], run["token_file"], version=version), port=run["port"])
    deadline, body = time.monotonic() + 60, None
    while time.monotonic() < deadline:
        body = httpx.post(f"{run['url']}/recommend", json={"user_id": user, "k": 3}, headers=_auth(), timeout=30).json()
        if body["fallback"]:
            break
        time.sleep(1)
    assert body["fallback"] is True
    assert body["unknown_user"] is True
    other = httpx.post(f"{run['url']}/recommend", json={"user_id": USERS[6], "k": 3}, headers=_auth(), timeout=30)
    assert other.json()["fallback"] is False

    assert main(["delete-user", "--user-id", user, "--bundle", str(root / "bundle"),
                 "--user-id-key-file", str(run["key_file"])]) == 2
    assert "the user was not found in 1 file(s)" in capsys.readouterr().err
