"""Effect of matching batch sizes across DDP workers, on real training windows and without Ray.

    python benchmarks/batch_matching.py --prepared outputs/ml-100k/prepared --output outputs/bench/batch_matching.json

Process r of N takes every N-th user of a prepared dataset, starting at user r, and cuts the
sequences into training windows as `rayrec train` does. It then trains the default model (one
torch thread, 32 sequences per step, gradient clipping, AdamW) for `--epochs` epochs, and the
first epoch is not timed. Three settings, alternating for `--rounds` rounds so that drift on a shared machine hits all
of them:
- `1 process`: the whole dataset, the baseline;
- `2 processes, DDP, own order`: each process shuffles its length-bucketed batches on its own,
  so at a given step one worker may get long windows and the other short ones;
- `2 processes, DDP, matched order`: the batch order of `rayrec.training.loop.matched_batch_order`.
"""

import argparse
import json
import math
import multiprocessing
import os
import platform
import socket
import statistics
import time
from datetime import datetime, timezone

import numpy as np
import pyarrow.parquet as pq
import torch

from rayrec.models.config import ModelConfig
from rayrec.models.factory import build_model
from rayrec.models.scoring import pad_histories
from rayrec.training.loop import length_bucketed_batches, matched_batch_order, training_windows

BATCH_PER_PROCESS = 32


def shard_windows(prepared: str, rank: int, world_size: int, window: int) -> list[np.ndarray]:
    item_lists = pq.read_table(f"{prepared}/train", columns=["item_ids"])["item_ids"].to_pylist()
    return training_windows([np.asarray(items) for items in item_lists[rank::world_size]], window)


def epoch_batches(windows: list[np.ndarray], num_batches: int, epoch: int, rank: int,
                  matched: bool) -> list[list[np.ndarray]]:
    batches = length_bucketed_batches(windows, BATCH_PER_PROCESS, np.random.default_rng([0, epoch, rank]))
    if matched:
        return matched_batch_order(batches, num_batches, np.random.default_rng([0, epoch]))
    return batches + [[] for _ in range(num_batches - len(batches))]


def sequences_per_second(prepared: str, rank: int, world_size: int, port: int, matched: bool, epochs: int) -> float:
    """Train `epochs` epochs on this process's shard and return its sequences per second after the first."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    config = ModelConfig()
    num_items = pq.read_metadata(f"{prepared}/vocab.parquet").num_rows
    windows = shard_windows(prepared, rank, world_size, config.training_window)
    # Every rank must run the same number of steps, the largest shard's count.
    num_batches = max(math.ceil(len(shard_windows(prepared, r, world_size, config.training_window)) / BATCH_PER_PROCESS)
                      for r in range(world_size))

    model = build_model(config, num_items).train()
    trained = model
    if world_size > 1:
        torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                             world_size=world_size)
        trained = torch.nn.parallel.DistributedDataParallel(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)

    timed_s, timed_sequences = 0.0, 0
    for epoch in range(epochs):
        start = time.perf_counter()
        for batch in epoch_batches(windows, num_batches, epoch, rank, matched):
            item_ids = pad_histories(batch, config.training_window) if batch else torch.ones((1, 2), dtype=torch.int64)
            _, loss = trained(model.training_batch(item_ids))
            (loss * (1.0 if batch else 0.0)).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if epoch:
                timed_sequences += len(batch)
        if epoch:
            timed_s += time.perf_counter() - start

    if world_size > 1:
        torch.distributed.destroy_process_group()
    return timed_sequences / timed_s


def run_setting(prepared: str, processes: int, matched: bool, epochs: int) -> float:
    """Return the total sequences per second of `processes` processes started together."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    context = multiprocessing.get_context("spawn")
    with context.Pool(processes) as pool:
        rates = pool.starmap(sequences_per_second,
                             [(prepared, rank, processes, port, matched, epochs) for rank in range(processes)])
    return sum(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prepared", required=True, help="A prepared dataset folder (`rayrec prepare` output).")
    parser.add_argument("--epochs", type=int, default=3, help="Epochs per run, the first not timed (default: 3).")
    parser.add_argument("--rounds", type=int, default=2, help="Runs per setting, alternating (default: 2).")
    parser.add_argument("--output", help="Also write the results as JSON to this file (default: none).")
    args = parser.parse_args()

    settings = {"1 process": (1, False), "2 processes, DDP, own order": (2, False),
                "2 processes, DDP, matched order": (2, True)}
    rates: dict[str, list[float]] = {name: [] for name in settings}
    for _ in range(args.rounds):
        for name, (processes, matched) in settings.items():
            rates[name].append(run_setting(args.prepared, processes, matched, args.epochs))

    baseline = statistics.median(rates["1 process"])
    results = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}",
        "prepared": args.prepared,
        "sequences_per_step_per_process": BATCH_PER_PROCESS,
        "runs": [{"setting": name, "sequences_per_s": [round(rate, 1) for rate in values],
                  "speedup": round(statistics.median(values) / baseline, 3)} for name, values in rates.items()],
    }
    print(json.dumps(results, indent=2))
    if args.output:
        with open(args.output, "w") as file:
            file.write(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
