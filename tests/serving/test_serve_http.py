"""Deploy the Serve app on 127.0.0.1 and send real HTTP requests."""

import asyncio
import json
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
    assert body["unknown_user"] is True
    assert [item["item_id"] for item in body["items"]] == [bundle.item_ids[i] for i in bundle.popular_items[:3]]


def test_known_users_flags(server):
    bundle = server["bundle"]
    max_len = bundle.model.config.max_len
    short = next(user for user, items in sorted(bundle.histories.items()) if len(items) <= max_len)
    long = next(user for user, items in sorted(bundle.histories.items()) if len(items) > max_len)
    short_body = httpx.post(f"{server['url']}/recommend", json={"user_id": short}).json()
    long_body = httpx.post(f"{server['url']}/recommend", json={"user_id": long}).json()

    assert short_body["unknown_user"] is False
    assert short_body["truncated"] is False
    assert long_body["unknown_user"] is False
    assert long_body["truncated"] is True


def test_long_history_truncated_and_flagged(server):
    bundle = server["bundle"]
    max_len = bundle.model.config.max_len
    history = [bundle.item_ids[1 + i % 40] for i in range(max_len + 5)]
    body = httpx.post(f"{server['url']}/recommend", json={"history": history, "k": 5}).json()

    assert body["truncated"] is True
    # Scores come from the most recent max_len items; seen items are excluded over the whole history.
    assert [item["item_id"] for item in body["items"]] == _offline_top_k(bundle, history=history, k=5)
    assert not set(history) & {item["item_id"] for item in body["items"]}


def test_exclude_and_allowed_items(server):
    bundle = server["bundle"]
    history = [bundle.item_ids[i] for i in (1, 2)]
    allowed = [bundle.item_ids[i] for i in (1, 3, 4, 5, 6)] + ["not-an-item"]
    body = httpx.post(f"{server['url']}/recommend", json={
        "history": history, "k": 10, "allowed_items": allowed, "exclude_items": [bundle.item_ids[4]],
    }).json()

    returned = [item["item_id"] for item in body["items"]]
    # Fewer than k remain: item 1 is seen, item 4 excluded, and the unknown id can never be returned.
    assert sorted(returned) == sorted(bundle.item_ids[i] for i in (3, 5, 6))
    scores = [item["score"] for item in body["items"]]
    assert scores == sorted(scores, reverse=True)


def test_allowed_items_apply_to_fallback(server):
    bundle = server["bundle"]
    allowed = [bundle.item_ids[i] for i in bundle.popular_items[5:8]]
    body = httpx.post(f"{server['url']}/recommend", json={"user_id": "nobody", "allowed_items": allowed}).json()

    assert body["fallback"] is True
    assert [item["item_id"] for item in body["items"]] == allowed


def test_batch_endpoint_matches_single_requests(server):
    bundle = server["bundle"]
    users = sorted(bundle.histories)[:5]
    requests = [{"user_id": user, "k": 4} for user in users] + [{"history": [bundle.item_ids[2]], "k": 3}]
    response = httpx.post(f"{server['url']}/recommend/batch", json={"requests": requests}, timeout=60)

    assert response.status_code == 200
    results = response.json()["results"]
    assert len(results) == len(requests)
    for user, result in zip(users, results):
        assert [item["item_id"] for item in result["items"]] == _offline_top_k(bundle, user_id=user, k=4)
    assert [item["item_id"] for item in results[-1]["items"]] == _offline_top_k(bundle, history=[bundle.item_ids[2]], k=3)


def test_bad_request_does_not_fail_its_batch(server):
    """Valid requests sent together with one null history all succeed; only the bad one gets 422."""
    bundle = server["bundle"]
    users = sorted(bundle.histories)[:8]

    async def send_all():
        async with httpx.AsyncClient(timeout=60) as client:
            good = [client.post(f"{server['url']}/recommend", json={"user_id": user, "k": 5}) for user in users]
            bad = client.post(f"{server['url']}/recommend", json={"history": [None], "k": 5})
            return await asyncio.gather(*good[:4], bad, *good[4:])

    responses = asyncio.run(send_all())
    statuses = [response.status_code for response in responses]
    assert statuses == [200] * 4 + [422] + [200] * 4
    for user, response in zip(users, responses[:4] + responses[5:]):
        assert [item["item_id"] for item in response.json()["items"]] == _offline_top_k(bundle, user_id=user, k=5)


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
    ({"history": [None]}, "history"),
    ({"user_id": None, "history": None}, "set user_id, history, or both"),
    ({"user_id": "1", "exclude_items": "1"}, "exclude_items"),
    ({"user_id": "1", "exclude_items": ["1"] * 10_001}, "exclude_items"),
    ({"user_id": "1", "allowed_items": []}, "allowed_items"),
    ({"user_id": "1", "allowed_items": ["1"] * 10_001}, "allowed_items"),
    ({"history": ["1"] * 10_001}, "history"),
])
def test_invalid_requests_get_4xx_naming_the_field(server, body, field):
    response = httpx.post(f"{server['url']}/recommend", json=body)

    assert response.status_code == 422
    assert field in response.text


def test_rejected_input_is_not_echoed(server):
    response = httpx.post(f"{server['url']}/recommend", json={"history": ["secret-item"] * 10_001})

    assert response.status_code == 422
    assert "secret-item" not in response.text


@pytest.mark.parametrize("body, field", [
    ({}, "requests"),
    ({"requests": []}, "requests"),
    ({"requests": [{"user_id": "1"}] * 257}, "requests"),
    ({"requests": [{"user_id": "1"}, {"history": None}]}, "set user_id, history, or both"),
    ({"requests": [{"user_id": "1", "k": -1}]}, "k"),
    ({"requests": {"user_id": "1"}}, "requests"),
])
def test_invalid_batches_get_4xx_naming_the_field(server, body, field):
    response = httpx.post(f"{server['url']}/recommend/batch", json=body)

    assert response.status_code == 422
    assert field in response.text


def test_oversized_body_is_413(server):
    from rayrec.serving.schemas import MAX_BODY_BYTES

    body = json.dumps({"history": ["x" * 1000] * (MAX_BODY_BYTES // 1000 + 1)}).encode()
    response = httpx.post(f"{server['url']}/recommend", content=body, headers={"content-type": "application/json"})

    assert response.status_code == 413
    assert str(MAX_BODY_BYTES) in response.json()["detail"]


@pytest.mark.parametrize("content, content_type", [
    (b"{not json", "application/json"),
    (b"", "application/json"),
    (b"[1, 2]", "application/json"),
    (b"null", "application/json"),
    (b"user_id=1", "application/x-www-form-urlencoded"),
    (b"\xff\xfe", "application/json"),
])
def test_malformed_bodies_are_4xx(server, content, content_type):
    for path in ("/recommend", "/recommend/batch"):
        response = httpx.post(f"{server['url']}{path}", content=content, headers={"content-type": content_type})
        assert 400 <= response.status_code < 500, (path, response.status_code, response.text)


def test_wrong_method_and_path_are_4xx(server):
    assert httpx.get(f"{server['url']}/recommend").status_code == 405
    assert httpx.post(f"{server['url']}/no-such-route", json={}).status_code == 404


def test_openapi_docs_served(server):
    assert httpx.get(f"{server['url']}/docs").status_code == 200
    paths = httpx.get(f"{server['url']}/openapi.json").json()["paths"]
    assert {"/recommend", "/recommend/batch", "/healthz", "/model"} <= set(paths)


def test_health_and_model_endpoints(server):
    assert httpx.get(f"{server['url']}/healthz").json() == {"status": "ok"}
    model = httpx.get(f"{server['url']}/model").json()
    assert model["version"] == server["bundle"].version
    assert model["dataset"] == server["bundle"].metadata["dataset"]
    assert model["created_at"] == server["bundle"].metadata["created_at"]
    assert "test_ndcg@10" in model["metrics"]
    assert model["last_load_error"] is None


def test_no_bad_request_gets_5xx(server):
    """A sweep over odd bodies, including every bad case above: none may reach a 5xx."""
    bodies = [b"", b"{}", b"[]", b"0", b"\"x\"", b'{"user_id": {}}', b'{"history": [[]]}', b'{"history": [{}]}',
              b'{"k": 1e309, "user_id": "1"}', b'{"user_id": "1", "k": 9999999999999999999999}',
              b'{"user_id": "' + b"a" * 100_000 + b'"}', b'{"history": ["1"], "exclude_seen": null}']
    for path in ("/recommend", "/recommend/batch"):
        for body in bodies:
            response = httpx.post(f"{server['url']}{path}", content=body, headers={"content-type": "application/json"})
            assert response.status_code < 500, (path, body[:40], response.status_code)


def test_prometheus_metrics_exported(server):
    """Ray's metrics agent on this node exports the app's counters in Prometheus text format."""
    import time

    import ray

    user = sorted(server["bundle"].histories)[0]
    httpx.post(f"{server['url']}/recommend", json={"user_id": user})
    httpx.post(f"{server['url']}/recommend", json={"user_id": "nobody", "history": ["not-an-item"]})
    httpx.post(f"{server['url']}/recommend", json={"k": 0})

    port = ray.nodes()[0]["MetricsExportPort"]
    expected = ['ray_rayrec_http_requests_total', 'status="200"', 'status="422"', "ray_rayrec_http_latency_ms_bucket",
                "ray_rayrec_batch_size_bucket", "ray_rayrec_fallbacks_total", 'kind="item"',
                f'version="{server["bundle"].version}"']
    deadline = time.monotonic() + 60
    while True:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        missing = [name for name in expected if name not in text]
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert not missing, f"not exported after 60 s: {missing}"


def test_bench_serve_measures_levels(server, tmp_path, capsys):
    from rayrec.cli import main

    output, plot = tmp_path / "load.json", tmp_path / "latency.png"
    code = main(["bench", "serve", "--url", server["url"], "--bundle", str(server["bundle"].path),
                 "--concurrency", "1", "4", "--max-requests", "20", "--max-seconds", "10",
                 "--output", str(output), "--plot", str(plot)])

    assert code == 0
    levels = json.loads(output.read_text())
    assert [level["concurrency"] for level in levels] == [1, 4]
    assert all(level["errors"] == 0 and level["requests"] == 20 for level in levels)
    assert plot.read_bytes().startswith(b"\x89PNG")
    assert "p99 ms" in capsys.readouterr().out


@pytest.mark.parametrize("url", ["http://10.0.0.1:8000", "http://example.com", "http://169.254.169.254"])
def test_bench_serve_rejects_non_loopback(url, tmp_path, capsys):
    from rayrec.cli import main

    assert main(["bench", "serve", "--url", url, "--bundle", str(tmp_path)]) == 2
    assert "loopback" in capsys.readouterr().err


def test_readme_curl_examples_succeed(server):
    """Every `curl ... -d '{...}'` example in README.md gets a 200 from the real app."""
    import re
    import shlex

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text().replace("\\\n", " ")
    examples = [shlex.split(line) for line in readme.splitlines() if line.lstrip().startswith("curl ")]
    assert len(examples) >= 3
    for args in examples:
        path = re.sub(r"^[^/]*", "", args[args.index("-s") + 1])
        body = json.loads(args[args.index("-d") + 1])
        response = httpx.post(f"{server['url']}{path}", json=body, timeout=60)
        assert response.status_code == 200, (path, response.text)
