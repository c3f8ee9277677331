"""Ceiling for data-parallel speed-up on this machine, without Ray: independent processes and plain DDP.

    python benchmarks/cpu_scaling.py --processes 1 2 --steps 300 --output outputs/bench/cpu_scaling.json

Each process trains SASRec (the default model: hidden 128, 2 layers, max length 50,
full-softmax cross-entropy over 1,682 items, 16 sequences per step) on random item ids with
one torch thread, for a fixed number of steps. In the `independent` mode nothing is shared between the
processes, so the ratio of their total steps per second to one process's is the most that
2 Ray Train workers could reach here. In the `ddp` mode the processes form a gloo process
group on 127.0.0.1 and train one DistributedDataParallel model, as Ray Train's workers do,
which adds the gradient all-reduce and its waits. The runs alternate between the settings,
so that drift on a shared machine hits all of them.
"""

import argparse
import json
import multiprocessing
import os
import socket
import platform
import statistics
import time
from datetime import datetime, timezone

import torch

from rayrec.models.config import ModelConfig
from rayrec.models.factory import build_model

NUM_ITEMS = 1682
BATCH = 16


def steps_per_second(steps: int, rank: int, world_size: int, port: int | None) -> float:
    """Train `steps` steps after 5 warm-up steps and return optimizer steps per second.

    With a `port`, the process joins a gloo group of `world_size` and trains through DDP.
    """
    torch.set_num_threads(1)
    torch.manual_seed(rank)
    config = ModelConfig()
    model = build_model(config, NUM_ITEMS).train()
    trained = model
    if port is not None:
        torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                             world_size=world_size)
        trained = torch.nn.parallel.DistributedDataParallel(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    windows = torch.randint(1, NUM_ITEMS + 1, (BATCH, config.training_window))

    def step() -> None:
        _, loss = trained(model.training_batch(windows))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(5):
        step()
    # A fixed step count, not a fixed time: every DDP rank must join every all-reduce.
    start = time.perf_counter()
    for _ in range(steps):
        step()
    rate = steps / (time.perf_counter() - start)
    if port is not None:
        torch.distributed.destroy_process_group()
    return rate


def run_concurrently(processes: int, steps: int, ddp: bool) -> float:
    """Return the total steps per second of `processes` processes started together."""
    port = None
    if ddp and processes > 1:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
    context = multiprocessing.get_context("spawn")
    with context.Pool(processes) as pool:
        rates = pool.starmap(steps_per_second, [(steps, rank, processes, port) for rank in range(processes)])
    return sum(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2], help="Process counts (default: 1 2).")
    parser.add_argument("--steps", type=int, default=300, help="Timed optimizer steps per process and run (default: 300).")
    parser.add_argument("--rounds", type=int, default=2, help="Runs per process count, alternating (default: 2).")
    parser.add_argument("--output", help="Also write the results as JSON to this file (default: none).")
    args = parser.parse_args()

    settings = [(count, "independent") for count in args.processes]
    settings += [(count, "ddp") for count in args.processes if count > 1]
    totals = {setting: [] for setting in settings}
    for _ in range(args.rounds):
        for count, mode in settings:
            totals[(count, mode)].append(run_concurrently(count, args.steps, ddp=mode == "ddp"))

    baseline = statistics.median(totals[settings[0]])
    results = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}",
        "steps_per_process": args.steps,
        "runs": [{"processes": count, "mode": mode, "steps_per_s": [round(rate, 2) for rate in rates],
                  "speedup": round(statistics.median(rates) / baseline, 3)} for (count, mode), rates in totals.items()],
    }
    print(json.dumps(results, indent=2))
    if args.output:
        with open(args.output, "w") as file:
            file.write(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
