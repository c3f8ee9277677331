"""Extra latency of `explain: true`: one request's ranking with and without leave-one-out reasons.

    python benchmarks/explain_latency.py --bundle outputs/ml-100k/bundle --prepared outputs/ml-100k/prepared

Each round takes one test history, ranks the top k (`rank_queries`, as a replica does for a
batch of one), and then also computes the reasons (`explain_ranking`), timing both in the same
round with one torch thread. The script reports medians, the 95th percentiles and the ratio
of ranking with reasons to ranking alone; it does not include HTTP or batching time.
"""

import argparse
import json
import os
import platform
import time
from datetime import datetime, timezone

import numpy as np
import pyarrow.parquet as pq
import torch

from rayrec.models.bundle import load_bundle
from rayrec.models.explain import MAX_EXPLAINED_HISTORY, explain_ranking
from rayrec.models.recommend import Query, rank_queries


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", required=True, help="Bundle directory.")
    parser.add_argument("--prepared", required=True, help="Prepared data directory with a test split.")
    parser.add_argument("-k", type=int, default=10, help="Items per request (default: 10).")
    parser.add_argument("--rounds", type=int, default=300, help="Timed requests (default: 300).")
    parser.add_argument("--output", help="Also write the results as JSON to this file (default: none).")
    args = parser.parse_args()

    torch.set_num_threads(1)
    bundle = load_bundle(args.bundle)
    histories = [np.asarray(h, dtype=np.int64) for h in pq.read_table(f"{args.prepared}/test")["history"].to_pylist()]
    histories = [history for history in histories if len(history) >= 2]
    rng = np.random.default_rng(0)

    plain_ms, explained_ms, lengths = [], [], []
    for _ in range(args.rounds):
        history = histories[int(rng.integers(len(histories)))]
        query = Query(history=history, k=args.k, exclude=history)

        start = time.perf_counter()
        ranked = rank_queries(bundle, [query])[0]
        ranked_at = time.perf_counter()
        explain_ranking(bundle.model, history, ranked, bundle.item_ids, bundle.model.config.max_len)
        done = time.perf_counter()

        plain_ms.append((ranked_at - start) * 1000)
        explained_ms.append((done - start) * 1000)
        lengths.append(min(len(history), MAX_EXPLAINED_HISTORY))

    results = {
        "bundle": args.bundle, "k": args.k, "rounds": args.rounds, "torch_threads": 1,
        "max_len": bundle.model.config.max_len, "explained_positions_median": float(np.median(lengths)),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}",
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        "rank_ms": {"p50": round(float(np.median(plain_ms)), 3), "p95": round(float(np.percentile(plain_ms, 95)), 3)},
        "rank_and_explain_ms": {"p50": round(float(np.median(explained_ms)), 3),
                                "p95": round(float(np.percentile(explained_ms, 95)), 3)},
    }
    results["p50_ratio"] = round(results["rank_and_explain_ms"]["p50"] / results["rank_ms"]["p50"], 2)
    print(json.dumps(results, indent=2))
    if args.output:
        with open(args.output, "w") as file:
            file.write(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
