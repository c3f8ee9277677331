"""Prometheus metrics of the Serve application, exported through Ray's metrics agent.

Ray prefixes each name with `ray_` and adds the deployment, replica and application tags.
The metric objects are created on first use, inside the replica process that records them.
"""

from __future__ import annotations

from functools import cache

from ray.serve.metrics import Counter, Gauge, Histogram

LATENCY_BOUNDARIES_MS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000]
BATCH_SIZE_BOUNDARIES = [1, 2, 4, 8, 16, 32, 64, 128, 256]


@cache
def http_requests() -> Counter:
    return Counter("rayrec_http_requests", description="HTTP requests by route and status code.",
                   tag_keys=("path", "status"))


@cache
def http_latency_ms() -> Histogram:
    return Histogram("rayrec_http_latency_ms", description="HTTP request latency in milliseconds, by route.",
                     boundaries=LATENCY_BOUNDARIES_MS, tag_keys=("path",))


@cache
def batch_size() -> Histogram:
    return Histogram("rayrec_batch_size", description="Queries scored in one forward pass.",
                     boundaries=BATCH_SIZE_BOUNDARIES)


@cache
def fallbacks() -> Counter:
    return Counter("rayrec_fallbacks", description="Requests without a known history, for which the most popular items were returned.")


@cache
def unknown_ids() -> Counter:
    return Counter("rayrec_unknown_ids", description="Unknown user ids and history item ids, by kind.",
                   tag_keys=("kind",))


@cache
def model_version() -> Gauge:
    return Gauge("rayrec_model_version", description="1 for the bundle version a replica serves, 0 for replaced ones.",
                 tag_keys=("version",))


@cache
def bundle_load_failures() -> Counter:
    return Counter("rayrec_bundle_load_failures", description="Bundles that failed to load; the old model kept serving.")
