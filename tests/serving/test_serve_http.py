"""Deploy the Serve app on 127.0.0.1 and send real HTTP requests."""

import shutil
from pathlib import Path

import httpx
import pytest

from rayrec.models.bundle import load_bundle
from rayrec.models.recommend import rank_queries, resolve_query

pytestmark = pytest.mark.ray

SERVE_CONFIG = Path(__file__).resolve().parents[2] / "serve_configs" / "ml-100k.yaml"


@pytest.fixture(scope="module")
def server(trained):
    from conftest import free_port
    from rayrec.serving.deploy import deploy, shutdown

    bundle_dir = trained["output"].bundle_dir
    url = deploy(SERVE_CONFIG, bundle_path=str(bundle_dir), port=free_port())
    assert url.startswith("http://127.0.0.1:")
    yield {"url": url, "bundle": load_bundle(bundle_dir)}
    shutdown()


def _offline_top_k(bundle, user_id=None, history=None, k=10):
    query = resolve_query(bundle, user_id, history, k)
    return [bundle.item_ids[index] for index, _ in rank_queries(bundle, [query])[0]]


def test_user_id_matches_offline_top_k(server):
    bundle = server["bundle"]
    user = sorted(bundle.histories)[0]
    response = httpx.post(f"{server['url']}/recommend", json={"user_id": user, "k": 10})

    assert response.status_code == 200
    body = response.json()
    assert [item["item_id"] for item in body["items"]] == _offline_top_k(bundle, user_id=user)
    assert body["model_version"] == bundle.version
    assert body["fallback"] is False
    seen = {bundle.item_ids[i] for i in bundle.histories[user]}
    assert not seen & {item["item_id"] for item in body["items"]}


def test_history_matches_offline_top_k(server):
    bundle = server["bundle"]
    history = [bundle.item_ids[i] for i in (1, 5, 9, 2)]
    response = httpx.post(f"{server['url']}/recommend", json={"history": history, "k": 7})

    assert response.status_code == 200
    items = [item["item_id"] for item in response.json()["items"]]
    assert items == _offline_top_k(bundle, history=history, k=7)
    assert not set(history) & set(items)
    assert "" not in items  # the padding placeholder is never returned


def test_integer_ids_mean_their_text(server):
    bundle = server["bundle"]
    numeric = [item for item in bundle.item_ids[1:] if item.isdigit()][:3]
    as_text = httpx.post(f"{server['url']}/recommend", json={"history": numeric, "k": 5}).json()
    as_int = httpx.post(f"{server['url']}/recommend", json={"history": [int(i) for i in numeric], "k": 5}).json()

    assert as_int["items"] == as_text["items"]


def test_concurrent_requests_are_batched_correctly(server):
    bundle = server["bundle"]
    users = sorted(bundle.histories)[:12]

    async def send_all():
        async with httpx.AsyncClient(timeout=60) as client:
            import asyncio

            return await asyncio.gather(*[
                client.post(f"{server['url']}/recommend", json={"user_id": user, "k": 5}) for user in users
            ])

    import asyncio

    responses = asyncio.run(send_all())
    for user, response in zip(users, responses):
        assert response.status_code == 200
        assert [item["item_id"] for item in response.json()["items"]] == _offline_top_k(bundle, user_id=user, k=5)


def test_unknown_user_gets_popular_fallback(server):
    bundle = server["bundle"]
    response = httpx.post(f"{server['url']}/recommend", json={"user_id": "no-such-user", "k": 3})

    assert response.status_code == 200
    body = response.json()
    assert body["fallback"] is True
    assert [item["item_id"] for item in body["items"]] == [bundle.item_ids[i] for i in bundle.popular_items[:3]]


def test_unknown_history_items_reported(server):
    bundle = server["bundle"]
    response = httpx.post(f"{server['url']}/recommend", json={"history": [bundle.item_ids[1], "not-an-item"]})

    body = response.json()
    assert body["unknown_items"] == ["not-an-item"]
    assert body["fallback"] is False


@pytest.mark.parametrize("body, field", [
    ({"k": 5}, "set user_id, history, or both"),
    ({"history": []}, "history"),
    ({"history": None}, "set user_id, history, or both"),
    ({"user_id": "1", "k": 0}, "k"),
    ({"user_id": "1", "k": 1001}, "k"),
    ({"user_id": "1", "k": "ten"}, "k"),
    ({"user_id": "1", "k": "5"}, "k"),
    ({"user_id": "1", "exclude_seen": "yes"}, "exclude_seen"),
    ({"user_id": ["1"]}, "user_id"),
    ({"history": [1.5]}, "history"),
    ({"history": [True]}, "history"),
    ({"user_id": "1", "extra": 1}, "extra"),
])
def test_invalid_requests_get_4xx_naming_the_field(server, body, field):
    response = httpx.post(f"{server['url']}/recommend", json=body)

    assert response.status_code == 422
    assert field in response.text


def test_malformed_json_is_4xx(server):
    response = httpx.post(f"{server['url']}/recommend", content=b"{not json",
                          headers={"content-type": "application/json"})
    assert 400 <= response.status_code < 500


def test_health_and_model_endpoints(server):
    assert httpx.get(f"{server['url']}/healthz").json() == {"status": "ok"}
    model = httpx.get(f"{server['url']}/model").json()
    assert model["version"] == server["bundle"].version
    assert "test_ndcg@10" in model["metrics"]


def test_bad_bundle_path_rejected_before_deploy(tmp_path):
    from rayrec.serving.app import AppArgs

    with pytest.raises(ValueError, match="no rayrec bundle at"):
        AppArgs(bundle_path=str(tmp_path))


def test_serve_config_overrides(tmp_path, trained):
    from rayrec.serving.deploy import load_serve_config

    config = load_serve_config(SERVE_CONFIG, bundle_path=str(trained["output"].bundle_dir), port=8123)
    assert config.http_options.host == "127.0.0.1"
    assert config.http_options.port == 8123
    assert Path(config.applications[0].args["bundle_path"]).is_absolute()
