"""Serving load benchmark: Ray Serve against a batched-loop ceiling and a plain FastAPI server.

    python benchmarks/serve_load.py --ml100k-bundle outputs/ml-100k/bundle --output outputs/bench/serve

For each bundle (the given ml-100k bundle and a production-sized synthetic one: 100,000
items, hidden size 128, max length 200, trained for a few steps) it measures, in one run:

- ceiling: `rank_queries` on batches of 32 requests in a plain loop (no HTTP at all),
- plain: `benchmarks/plain_fastapi_server.py` (uvicorn, one request at a time),
- serve: rayrec's Serve app with the given Serve config,

each at closed-loop concurrency 1, 8, 32 and 128 against 127.0.0.1, bounded in requests and
seconds. Then it kills a Recommender replica under load and counts the failed requests.
Results go to OUTPUT/results.json and latency histograms to OUTPUT/latency-BUNDLE.png.
"""

import argparse
import copy
import json
import os
import platform
import socket
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import httpx
import numpy as np
import pyarrow as pa
import torch
import yaml

from rayrec.models.bundle import load_bundle, write_bundle
from rayrec.models.config import ModelConfig
from rayrec.models.recommend import rank_queries, resolve_query
from rayrec.models.sasrec import SASRec
from rayrec.serving.loadtest import history_bodies, plot_latency, run_load

REPO = Path(__file__).resolve().parent.parent
CONCURRENCY = (1, 8, 32, 128)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ml100k-bundle", default="outputs/ml-100k/bundle", help="Bundle trained on ml-100k.")
    parser.add_argument("--serve-config", default=str(REPO / "serve_configs" / "ml-100k.yaml"),
                        help="Serve config to benchmark; its bundle path is replaced per bundle.")
    parser.add_argument("--output", default="outputs/bench/serve", help="Folder for results.json and the latency histograms.")
    parser.add_argument("--max-requests", type=int, default=3000, help="Request bound per load level.")
    parser.add_argument("--max-seconds", type=float, default=15.0, help="Time bound per load level, in seconds.")
    parser.add_argument("--only", choices=["ml-100k", "production"], help="Benchmark one bundle only.")
    parser.add_argument("--skip-plain", action="store_true", help="Skip the plain FastAPI baseline.")
    args = parser.parse_args()

    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    bundles = {"ml-100k": Path(args.ml100k_bundle).resolve()}
    if args.only != "ml-100k":
        bundles["production"] = make_production_bundle(output / "production-bundle")
    if args.only == "production":
        bundles.pop("ml-100k")

    record = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}",
        "serve_config": args.serve_config,
        "bounds": {"max_requests": args.max_requests, "max_seconds": args.max_seconds},
        "bundles": {},
    }
    for name, bundle_dir in bundles.items():
        bodies = history_bodies(load_bundle(bundle_dir))
        results = {"ceiling": ceiling(bundle_dir, bodies)}
        if not args.skip_plain:
            results["plain"] = load_plain_server(bundle_dir, bodies, args)
        results["serve"], results["fault"] = load_serve(bundle_dir, bodies, args)
        record["bundles"][name] = {key: value for key, value in results.items()}
        print(json.dumps({name: _summaries(results)}, indent=2), flush=True)

    (output / "results.json").write_text(json.dumps(_summaries_record(record), indent=2) + "\n")
    plot_record(record, output)
    print(f"Wrote {output / 'results.json'} and the latency-*.png histograms")


def make_production_bundle(path: Path, num_items: int = 100_000, num_users: int = 5_000, steps: int = 20) -> Path:
    """Train a 100k-item SASRec for a few steps on random sequences; its weights only need to be realistic in shape."""
    if (path / "bundle.json").exists():
        return path.resolve()
    rng = np.random.default_rng(0)
    config = ModelConfig(max_len=200, hidden_size=128, num_layers=2, num_heads=2, dropout=0.1)
    model = SASRec(config, num_items)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)

    popularity = rng.zipf(1.2, size=num_items * 4) % num_items + 1
    lengths = np.clip(rng.lognormal(3.5, 1.0, size=num_users).astype(int), 3, 400)
    histories = [popularity[rng.integers(0, len(popularity), size=n)].astype(np.int32) for n in lengths]

    model.train()
    for _ in range(steps):
        rows = rng.integers(0, num_users, size=32)
        batch = [histories[r][-(config.max_len + 1):] for r in rows]
        inputs = torch.zeros((32, config.max_len), dtype=torch.int64)
        targets = torch.zeros(32, dtype=torch.int64)
        lengths_now = []
        for i, history in enumerate(batch):
            inputs[i, : len(history) - 1] = torch.from_numpy(history[:-1].astype(np.int64))
            targets[i] = int(history[-1])
            lengths_now.append(len(history) - 1)
        hidden = model.encode(inputs)[torch.arange(32), torch.tensor(lengths_now) - 1]
        loss = torch.nn.functional.cross_entropy(model.catalog_logits(hidden), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()

    counts = np.bincount(np.concatenate(histories), minlength=num_items + 1)[1:]
    order = np.argsort(-counts, kind="stable")
    write_bundle(
        path,
        state_dict=model.state_dict(),
        model_config=config,
        num_items=num_items,
        vocab=pa.table({"item_index": pa.array(np.arange(1, num_items + 1, dtype=np.int32)),
                        "item_id": pa.array([f"item-{i:06d}" for i in range(1, num_items + 1)])}),
        histories=pa.table({"user_id": pa.array([f"user-{u}" for u in range(num_users)]),
                            "item_ids": pa.array([h.tolist() for h in histories], type=pa.list_(pa.int32()))}),
        popularity=pa.table({"item_index": pa.array((order + 1).astype(np.int32)),
                             "count": pa.array(counts[order].astype(np.int64))}),
        metrics={},
        dataset="synthetic-100k-items",
    )
    return path.resolve()


def ceiling(bundle_dir: Path, bodies: list[dict], batch_size: int = 32, seconds: float = 10.0) -> dict:
    """Requests per second of resolve + batched forward + top-k in a plain loop."""
    bundle = load_bundle(bundle_dir)
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        batch = [bodies[(done + i) % len(bodies)] for i in range(batch_size)]
        queries = [resolve_query(bundle, None, body["history"], body["k"]) for body in batch]
        rank_queries(bundle, queries)
        done += batch_size
    wall = time.perf_counter() - start
    return {"batch_size": batch_size, "torch_threads": torch.get_num_threads(), "requests": done,
            "throughput_rps": round(done / wall, 1)}


def load_plain_server(bundle_dir: Path, bodies: list[dict], args) -> list:
    port = _free_port()
    server = subprocess.Popen([sys.executable, str(REPO / "benchmarks" / "plain_fastapi_server.py"), str(bundle_dir),
                               str(port)])
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_healthy(url, server)
        return _load_levels(url, bodies, args)
    finally:
        server.terminate()
        server.wait(timeout=30)


def load_serve(bundle_dir: Path, bodies: list[dict], args) -> tuple[list, dict]:
    import ray

    from rayrec.serving.deploy import deploy, shutdown

    config = yaml.safe_load(Path(args.serve_config).read_text())
    config["http_options"]["port"] = _free_port()
    path = Path(args.output) / "serve.yaml"
    path.write_text(yaml.safe_dump(config))

    ray.init(include_dashboard=False, log_to_driver=False)
    try:
        url = deploy(path, bundle_path=str(bundle_dir))
        levels = _load_levels(url, bodies, args)
        fault = kill_replica_under_load(url, bodies, args)
    finally:
        shutdown()
        ray.shutdown()
    return levels, fault


def kill_replica_under_load(url: str, bodies: list[dict], args) -> dict:
    """Kill one Recommender replica 3 s into a load run at concurrency 32 and count the failures."""
    import ray

    def kill() -> None:
        time.sleep(3)
        names = sorted(actor["name"] for actor in ray.util.list_named_actors(all_namespaces=True)
                       if actor["name"].startswith("SERVE_REPLICA") and "Recommender" in actor["name"])
        ray.kill(ray.get_actor(names[0], namespace="serve"), no_restart=True)

    killer = threading.Thread(target=kill)
    killer.start()
    result = run_load(url, bodies, 32, max_requests=10**9, max_seconds=20)
    killer.join()
    healthy_after = httpx.get(f"{url}/healthz", timeout=30).status_code == 200
    return {**result.summary(), "healthy_after": healthy_after}


def _load_levels(url: str, bodies: list[dict], args) -> list:
    run_load(url, bodies, 8, max_requests=200, max_seconds=10)  # warm-up, not recorded
    return [run_load(url, bodies, c, args.max_requests, args.max_seconds) for c in CONCURRENCY]


def _wait_healthy(url: str, process: subprocess.Popen, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the baseline server exited with {process.returncode}")
        try:
            if httpx.get(f"{url}/healthz", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"the baseline server at {url} was not healthy after {timeout_s} s")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _summaries(results: dict) -> dict:
    return {key: [level.summary() for level in value] if isinstance(value, list) else value
            for key, value in results.items()}


def _summaries_record(record: dict) -> dict:
    record = copy.copy(record)
    record["bundles"] = {name: _summaries(results) for name, results in record["bundles"].items()}
    return record


def plot_record(record: dict, output: Path) -> None:
    """Latency histograms at concurrency 32, Serve beside plain FastAPI, one PNG per bundle."""
    for name, results in record["bundles"].items():
        levels = {system: next((level for level in results.get(system) or [] if level.concurrency == 32), None)
                  for system in ("serve", "plain")}
        plot_latency({system: level for system, level in levels.items() if level}, str(output / f"latency-{name}.png"))


if __name__ == "__main__":
    main()
