"""Profile SASRec training steps and one validation pass in one process, to show where the time goes.

    python benchmarks/profile_epoch.py --prepared outputs/ml-100k/prepared --steps 200 --threads 1

Uses the training loop's own batching and the default model (hidden 128, 2 layers, max
length 50, full softmax), without Ray, and prints the operators with the most self CPU time
and the split between forward, backward, optimizer and evaluation.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pyarrow.parquet as pq
import torch
from torch.profiler import ProfilerActivity, profile, record_function

from rayrec.models.config import ModelConfig
from rayrec.models.factory import build_model
from rayrec.models.scoring import pad_histories
from rayrec.training.evaluate import ranking_sums_for_rows
from rayrec.training.loop import length_bucketed_batches, training_windows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prepared", required=True, help="Prepared data folder.")
    parser.add_argument("--steps", type=int, default=200, help="Training steps to profile.")
    parser.add_argument("--batch-size", type=int, default=16, help="Sequences per step (one worker's share of 32).")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads.")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    num_items = pq.read_metadata(f"{args.prepared}/vocab.parquet").num_rows
    config = ModelConfig()
    model = build_model(config, num_items)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sequences = training_windows(pq.read_table(f"{args.prepared}/train")["item_ids"].to_numpy(zero_copy_only=False),
                                 config.training_window)
    batches = length_bucketed_batches(sequences, args.batch_size, np.random.default_rng(0))[: args.steps]
    valid = pq.read_table(f"{args.prepared}/valid")
    histories = [np.asarray(history) for history in valid["history"].to_pylist()]
    targets = valid["target"].to_numpy()

    phases = {"forward": 0.0, "backward": 0.0, "optimizer": 0.0, "evaluate": 0.0}
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        model.train()
        for batch in batches:
            item_ids = pad_histories(batch, config.training_window)
            start = time.perf_counter()
            with record_function("forward"):
                _, loss = model(model.training_batch(item_ids))
            phases["forward"] += time.perf_counter() - start
            start = time.perf_counter()
            with record_function("backward"):
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
            phases["backward"] += time.perf_counter() - start
            start = time.perf_counter()
            with record_function("optimizer"):
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
            phases["optimizer"] += time.perf_counter() - start
        start = time.perf_counter()
        with record_function("evaluate"):
            ranking_sums_for_rows(model, histories, targets, (5, 10, 20))
        phases["evaluate"] += time.perf_counter() - start

    total = sum(phases.values())
    print(f"{len(batches)} steps of {args.batch_size} sequences, {args.threads} thread(s), validation of {len(targets)} users")
    for name, seconds in phases.items():
        print(f"{name:>10}: {seconds:7.2f} s  {100 * seconds / total:5.1f} %")
    print(f"{'per step':>10}: {1000 * (total - phases['evaluate']) / len(batches):7.2f} ms (training only)")
    print(profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


if __name__ == "__main__":
    main()
