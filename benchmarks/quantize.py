"""Accuracy and CPU speed of a bundle's model in float32, dynamic int8 and bfloat16.

    python benchmarks/quantize.py --bundle outputs/ml-100k/bundle --prepared outputs/ml-100k/prepared

Accuracy: full-ranking NDCG@10 and HR@10 on a split (each user's earlier items excluded,
as in `rayrec evaluate`), for each model, and the standard error of each per-user NDCG@10
difference from float32, which is paired because the models rank the same users.

Consistency: the share of users whose top-10 order is the same when scored alone and in a
batch of 32, as a serving replica batches concurrent requests.

Speed: `score_last` over batches of test histories with one torch thread, as a serving
replica runs it. The models alternate in each round, so drift on a shared machine hits all
of them. The script reports medians and the ratios to float32 measured in the same run.
bf16 is meant for GPU replicas, so its CPU timing depends on the CPU's bf16 matmul support.
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
from rayrec.models.quantize import quantize_model
from rayrec.models.scoring import mask_items, pad_histories, top_k
from rayrec.training.metrics import target_ranks

EVAL_BATCH = 256


def per_user_ndcg_hr(model, histories: list[np.ndarray], targets: np.ndarray, max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Return NDCG@10 and HR@10 per user, with the target ranked against all items."""
    ndcg, hr = [], []
    for start in range(0, len(targets), EVAL_BATCH):
        batch = histories[start:start + EVAL_BATCH]
        batch_targets = torch.as_tensor(targets[start:start + EVAL_BATCH], dtype=torch.int64)
        logits = model.score_last(pad_histories(batch, max_len)).float()
        mask_items(logits, [h[h != t] for h, t in zip(batch, batch_targets.tolist())])
        ranks = target_ranks(logits, batch_targets).double()
        ndcg.append(torch.where(ranks < 10, 1.0 / torch.log2(ranks + 2.0), torch.zeros_like(ranks)).numpy())
        hr.append((ranks < 10).double().numpy())
    return np.concatenate(ndcg), np.concatenate(hr)


def batch_consistency(model, histories: list[np.ndarray], batch_size: int, max_len: int) -> float:
    """Return the share of users whose top-10 order is the same scored alone and inside a batch."""
    def top10(rows: list[np.ndarray]) -> list[list[int]]:
        logits = model.score_last(pad_histories(rows, max_len)).float()
        mask_items(logits, rows)
        return [[item for item, _ in row] for row in top_k(logits, 10)]

    alone = [top10([history])[0] for history in histories]
    batched = [row for start in range(0, len(histories), batch_size) for row in top10(histories[start:start + batch_size])]
    return float(np.mean([a == b for a, b in zip(alone, batched)]))


def time_batches(models: dict, histories: list[np.ndarray], batch_size: int, rounds: int, max_len: int) -> dict:
    """Return the median milliseconds per score_last batch of each model, alternating models per round."""
    rng = np.random.default_rng(0)
    samples = {name: [] for name in models}
    for _ in range(rounds):
        rows = rng.choice(len(histories), size=batch_size, replace=False)
        item_ids = pad_histories([histories[i] for i in rows], max_len)
        for name, model in models.items():
            start = time.perf_counter()
            model.score_last(item_ids)
            samples[name].append((time.perf_counter() - start) * 1000)
    return {name: float(np.median(times)) for name, times in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", required=True, help="Bundle directory.")
    parser.add_argument("--prepared", required=True, help="Prepared data directory with the split.")
    parser.add_argument("--split", default="test", choices=["valid", "test"], help="Split (default: test).")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32], help="Rows per timed batch (default: 1 32).")
    parser.add_argument("--rounds", type=int, default=200, help="Timed batches per model and size (default: 200).")
    parser.add_argument("--consistency-users", type=int, default=320,
                        help="Users whose top-10 is compared alone and in batches of 32 (default: 320).")
    parser.add_argument("--output", help="Also write the results as JSON to this file (default: none).")
    args = parser.parse_args()

    torch.set_num_threads(1)
    bundle = load_bundle(args.bundle)
    max_len = bundle.model.config.max_len
    models = {"float32": bundle.model, "int8": quantize_model(bundle.model, "int8"), "bf16": quantize_model(bundle.model, "bf16")}
    table = pq.read_table(f"{args.prepared}/{args.split}", columns=["history", "target"])
    histories = [np.asarray(h, dtype=np.int64) for h in table["history"].to_pylist()]
    targets = table["target"].to_numpy().astype(np.int64)

    results = {"bundle": args.bundle, "split": args.split, "users": len(targets), "torch_threads": 1,
               "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}",
               "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"), "accuracy": {}, "latency_ms": {}}
    per_user = {name: per_user_ndcg_hr(model, histories, targets, max_len) for name, model in models.items()}
    for name, (ndcg, hr) in per_user.items():
        results["accuracy"][name] = {"ndcg@10": round(float(ndcg.mean()), 4), "hr@10": round(float(hr.mean()), 4)}
    for name in ("int8", "bf16"):
        difference = per_user[name][0] - per_user["float32"][0]
        results["accuracy"][f"{name}_ndcg@10_difference"] = round(float(difference.mean()), 4)
        results["accuracy"][f"{name}_ndcg@10_difference_stderr"] = round(float(difference.std(ddof=1) / len(difference) ** 0.5), 4)

    # Dynamic int8 quantizes activations with one scale per batch, so other rows can change a user's scores.
    sample = histories[:args.consistency_users]
    results["top10_same_order_alone_and_in_batch_of_32"] = {
        name: round(batch_consistency(model, sample, 32, max_len), 3) for name, model in models.items()}
    results["consistency_users"] = len(sample)

    for batch_size in args.batch_sizes:
        medians = time_batches(models, histories, batch_size, args.rounds, max_len)
        results["latency_ms"][f"batch_{batch_size}"] = {
            **{name: round(ms, 3) for name, ms in medians.items()},
            **{f"{name}_over_float32": round(medians[name] / medians["float32"], 3) for name in ("int8", "bf16")},
            **{f"{name}_rows_per_s": round(batch_size / ms * 1000, 1) for name, ms in medians.items()},
        }
    print(json.dumps(results, indent=2))
    if args.output:
        with open(args.output, "w") as file:
            file.write(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
