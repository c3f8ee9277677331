"""Benchmark a run config: prepare and train wall time plus validation and test metrics.

    python benchmarks/train_accuracy.py --config configs/ml-100k.yaml --output outputs/bench/ml100k.json [overrides]
    python benchmarks/train_accuracy.py --config configs/beauty.yaml --output outputs/bench/beauty.json \\
        data.input_path=/path/to/amazon-beauty.txt

Starts a local Ray with every CPU of the machine, runs `prepare` then `train` exactly as
`rayrec train` does, and writes one JSON record with the machine, the timings and the metrics.
"""

import argparse
import json
import os
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

import ray

from rayrec.cli import dataset_label
from rayrec.config import load_config
from rayrec.data.prepare import prepare_from_config
from rayrec.training.resources import run_workers_at_normal_priority
from rayrec.training.trainer import train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/ml-100k.yaml", help="Run config YAML.")
    parser.add_argument("--output", default="outputs/bench/ml100k.json", help="Where to write the JSON record.")
    parser.add_argument("overrides", nargs="*", help="Config overrides, section.key=value.")
    args = parser.parse_args()

    config = load_config(args.config, args.overrides)
    # Time to a trained model includes starting Ray.
    total_start = time.perf_counter()
    run_workers_at_normal_priority()
    ray.init(include_dashboard=False)
    ray_start_s = time.perf_counter() - total_start

    start = time.perf_counter()
    stats = prepare_from_config(config.data)
    prepare_s = time.perf_counter() - start

    start = time.perf_counter()
    output = train(config.data.output_dir, config.model, config.train, dataset_label(config))
    train_s = time.perf_counter() - start

    record = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}",
        "ray_cpus": ray.cluster_resources().get("CPU"),
        "config": args.config,
        "overrides": args.overrides,
        "ray_start_s": round(ray_start_s, 1),
        "prepare_s": round(prepare_s, 1),
        "train_s": round(train_s, 1),
        "total_s": round(time.perf_counter() - total_start, 1),
        "epochs": [{key: value for key, value in row.items() if key in ("epoch", "train_loss", "valid_ndcg@10", "train_time_s", "epoch_time_s")}
                   for row in output.history],
        "users": stats.users,
        "items": stats.items,
        "metrics": output.metrics,
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
