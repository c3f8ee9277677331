"""Closed-loop HTTP load generator for `POST /recommend`, bounded in requests and seconds.

It sends traffic only to loopback addresses: load tests of a remote deployment belong in
the tools of the team that runs it, not in a library default.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import asdict, dataclass
from urllib.parse import urlparse

import aiohttp
import numpy as np

logger = logging.getLogger(__name__)

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")


@dataclass
class LoadResult:
    """Outcome of one load level."""

    concurrency: int
    requests: int
    errors: int
    wall_s: float
    throughput_rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    latencies_ms: list[float]  # successful requests only, for histograms

    def summary(self) -> dict:
        return {key: value for key, value in asdict(self).items() if key != "latencies_ms"}


def check_loopback(url: str) -> None:
    """Raise ValueError unless `url` points at this machine."""
    host = urlparse(url).hostname or ""
    if host not in LOOPBACK_HOSTS and f"[{host}]" not in LOOPBACK_HOSTS:
        raise ValueError(f"load tests only send traffic to loopback addresses (127.0.0.1, localhost); got {host!r}.")


def run_load(url: str, bodies: list[dict], concurrency: int, max_requests: int, max_seconds: float,
             path: str = "/recommend") -> LoadResult:
    """Send `bodies` round-robin from `concurrency` closed-loop clients until either bound is reached."""
    check_loopback(url)
    if concurrency < 1 or max_requests < 1 or max_seconds <= 0:
        raise ValueError("concurrency, max_requests and max_seconds must be positive.")
    payloads = [json.dumps(body).encode() for body in bodies]
    return asyncio.run(_run(url.rstrip("/") + path, payloads, concurrency, max_requests, max_seconds))


async def _run(url: str, payloads: list[bytes], concurrency: int, max_requests: int, max_seconds: float) -> LoadResult:
    latencies: list[float] = []
    errors = 0
    sent = 0
    start = time.perf_counter()
    deadline = start + max_seconds

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal errors, sent
        while sent < max_requests and time.perf_counter() < deadline:
            payload = payloads[sent % len(payloads)]
            sent += 1
            began = time.perf_counter()
            try:
                async with session.post(url, data=payload, headers={"content-type": "application/json"}) as response:
                    await response.read()
                    ok = response.status == 200
            except (aiohttp.ClientError, asyncio.TimeoutError):
                ok = False
            if ok:
                latencies.append((time.perf_counter() - began) * 1000)
            else:
                errors += 1

    timeout = aiohttp.ClientTimeout(total=max(30.0, max_seconds))
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        await asyncio.gather(*[client(session) for _ in range(concurrency)])

    wall = time.perf_counter() - start
    done = len(latencies) + errors
    points = np.percentile(latencies, [50, 95, 99]) if latencies else [float("nan")] * 3
    result = LoadResult(concurrency=concurrency, requests=done, errors=errors, wall_s=round(wall, 2),
                        throughput_rps=round(len(latencies) / wall, 1), p50_ms=round(float(points[0]), 1),
                        p95_ms=round(float(points[1]), 1), p99_ms=round(float(points[2]), 1), latencies_ms=latencies)
    logger.info("Load at concurrency %d: %s", concurrency, result.summary())
    return result


def history_bodies(bundle, count: int = 2000, k: int = 10, seed: int = 0) -> list[dict]:
    """Request bodies with real stored histories sent as raw item ids, as a client holding them would."""
    rng = np.random.default_rng(seed)
    users = sorted(bundle.histories)
    max_len = bundle.model.config.max_len
    bodies = []
    for user in rng.choice(users, size=count):
        history = bundle.histories[user][-max_len:]
        bodies.append({"history": [bundle.item_ids[i] for i in history], "k": k})
    return bodies


def plot_latency(results: dict[str, LoadResult], path: str) -> None:
    """Write one latency histogram per labelled result to a PNG file."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4))
    for label, result in results.items():
        if result.latencies_ms:
            axis.hist(result.latencies_ms, bins=60, alpha=0.5, label=f"{label}: {result.throughput_rps} req/s")
    axis.set_xlabel("latency (ms)")
    axis.set_ylabel("requests")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
