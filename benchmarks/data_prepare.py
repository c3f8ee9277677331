"""Benchmark preprocessing of an ML-20M-shaped synthetic log: rayrec on Ray Data against pandas.

Both implementations run the same steps: read Parquet, build the sorted item vocabulary,
order each user's events by time, build sequences and the leave-one-out split, and write
Parquet. The pandas baseline is a straightforward single-process script. Each runs in its
own child process while this script samples memory every 0.2 s. Memory is the summed PSS
(proportional set size, so shared object-store pages count once) of the child and all its
descendants, which for rayrec are every Ray process the run starts.

    python benchmarks/data_prepare.py --rows 20000000 --data-dir /tmp/rayrec-bench/ml20m
    python benchmarks/data_prepare.py --rows 200000000 --files 200 --skip pandas \
        --data-dir /tmp/rayrec-bench/ml200m --num-shards 64 --object-store-gb 4

Prints one JSON line per implementation and a ratio line (rayrec / pandas).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent


def main() -> int:
    args = parse_args()
    if args.role:
        return run_role(args)

    data_dir = Path(args.data_dir)
    ensure_data(args, data_dir)
    results = {}
    for name in ("pandas", "rayrec"):
        if name in args.skip:
            continue
        results[name] = measure(name, args, data_dir)
        print(json.dumps(results[name]), flush=True)

    if len(results) == 2:
        ratio = {
            "wall_ratio_rayrec_over_pandas": round(results["rayrec"]["wall_s"] / results["pandas"]["wall_s"], 3),
            "memory_ratio_rayrec_over_pandas": round(results["rayrec"]["peak_pss_gb"] / results["pandas"]["peak_pss_gb"], 3),
        }
        print(json.dumps(ratio), flush=True)
    return 0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=20_000_000, help="Events in the synthetic log.")
    parser.add_argument("--users", type=int, default=138_000, help="Users in the synthetic log.")
    parser.add_argument("--items", type=int, default=27_000, help="Items in the synthetic log.")
    parser.add_argument("--files", type=int, default=20, help="Parquet files the log is written as.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the synthetic log.")
    parser.add_argument("--data-dir", required=True, help="Folder for the log (reused when its spec matches) and outputs.")
    parser.add_argument("--skip", nargs="*", default=[], choices=["pandas", "rayrec"], help="Implementations to skip.")
    parser.add_argument("--num-shards", type=int, default=16, help="data.num_shards for rayrec.")
    parser.add_argument("--num-cpus", type=int, default=None, help="CPUs for the local Ray (default: all).")
    parser.add_argument("--object-store-gb", type=float, default=None, help="Ray object store size in GB (default: Ray's).")
    parser.add_argument("--shuffle", choices=["default", "sort"], default="default",
                        help="Ray Data shuffle strategy: default (shuffle_v2 in Ray 2.60) or sort_shuffle_pull_based.")
    parser.add_argument("--max-memory-gb", type=float, default=None,
                        help="Stop a run whose summed PSS goes above this many GB and report it as stopped.")
    parser.add_argument("--role", choices=["pandas", "rayrec"], help=argparse.SUPPRESS)
    return parser.parse_args()


def ensure_data(args: argparse.Namespace, data_dir: Path) -> None:
    from rayrec.data.synthetic import SyntheticSpec, generate

    spec = SyntheticSpec(rows=args.rows, users=args.users, items=args.items, files=args.files, seed=args.seed)
    marker = data_dir / "log-spec.json"
    if marker.exists() and json.loads(marker.read_text()) == spec.__dict__:
        return
    start = time.perf_counter()
    generate(spec, data_dir / "log")
    marker.write_text(json.dumps(spec.__dict__))
    print(json.dumps({"generated_rows": args.rows, "generate_s": round(time.perf_counter() - start, 1)}), flush=True)


def measure(name: str, args: argparse.Namespace, data_dir: Path) -> dict:
    command = [sys.executable, __file__, "--role", name, *sys.argv[1:]]
    start = time.perf_counter()
    child = psutil.Popen(command, stdout=subprocess.PIPE, text=True)
    peak = 0
    while child.poll() is None:
        peak = max(peak, tree_pss(child))
        if args.max_memory_gb and peak > args.max_memory_gb * 1e9:
            stop_tree(child)
            return {"implementation": name, "rows": args.rows, "stopped": f"PSS above {args.max_memory_gb} GB",
                    "wall_s": round(time.perf_counter() - start, 1), "peak_pss_gb": round(peak / 1e9, 2)}
        time.sleep(0.2)
    wall = time.perf_counter() - start
    output = child.stdout.read().strip().splitlines()
    if child.returncode != 0:
        raise SystemExit(f"{name} run failed with exit code {child.returncode}")
    details = json.loads(output[-1]) if output else {}
    return {"implementation": name, "rows": args.rows, "wall_s": round(wall, 1),
            "peak_pss_gb": round(peak / 1e9, 2), **details}


def stop_tree(process: psutil.Process) -> None:
    members = [process, *process.children(recursive=True)]
    for member in members:
        try:
            member.kill()
        except psutil.NoSuchProcess:
            continue


def tree_pss(process: psutil.Process) -> int:
    total = 0
    try:
        members = [process, *process.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    for member in members:
        try:
            total += member.memory_full_info().pss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return total


def run_role(args: argparse.Namespace) -> int:
    data_dir = Path(args.data_dir)
    output = data_dir / f"out-{args.role}"
    start = time.perf_counter()
    details = run_pandas(data_dir / "log", output) if args.role == "pandas" else run_rayrec(args, data_dir / "log", output)
    details["inner_wall_s"] = round(time.perf_counter() - start, 1)
    print(json.dumps(details), flush=True)
    return 0


def run_rayrec(args: argparse.Namespace, log_dir: Path, output: Path) -> dict:
    import ray

    from rayrec.data.config import PrepareConfig
    from rayrec.data.prepare import list_input_files, prepare

    object_store = int(args.object_store_gb * 1e9) if args.object_store_gb else None
    ray.init(num_cpus=args.num_cpus, object_store_memory=object_store, include_dashboard=False, log_to_driver=False)
    if args.shuffle == "sort":
        from ray.data.context import ShuffleStrategy

        ray.data.DataContext.get_current().shuffle_strategy = ShuffleStrategy.SORT_SHUFFLE_PULL_BASED
    config = PrepareConfig(dataset=None, input_path=str(log_dir), output_dir=str(output), num_shards=args.num_shards)
    stats = prepare(config, list_input_files(str(log_dir)))
    ray.shutdown()
    return {"users": stats.users, "items": stats.items, "interactions": stats.interactions,
            "prepare_s": stats.wall_time_s, "num_shards": args.num_shards, "shuffle": args.shuffle}


def run_pandas(log_dir: Path, output: Path) -> dict:
    """Run the same steps as a plain single-process pandas script (the baseline)."""
    import shutil

    import numpy as np
    import pandas as pd

    if output.exists():
        shutil.rmtree(output)
    output.mkdir(parents=True)
    frame = pd.read_parquet(log_dir, columns=["user_id", "item_id", "timestamp"])
    frame = frame.dropna()

    items = np.sort(frame["item_id"].unique())
    pd.DataFrame({"item_index": np.arange(1, len(items) + 1, dtype=np.int32), "item_id": items}).to_parquet(
        output / "vocab.parquet", index=False)
    frame["item_index"] = (np.searchsorted(items, frame["item_id"].to_numpy()) + 1).astype(np.int32)

    frame = frame.sort_values(["user_id", "timestamp"], kind="stable")
    sequences = frame.groupby("user_id", sort=True).agg(item_ids=("item_index", list), timestamps=("timestamp", list))
    sequences = sequences[sequences["item_ids"].map(len) >= 3].reset_index()
    sequences.to_parquet(output / "sequences.parquet", index=False)

    items_lists = sequences["item_ids"]
    pd.DataFrame({"user_id": sequences["user_id"], "item_ids": items_lists.map(lambda s: s[:-2])}).to_parquet(
        output / "train.parquet", index=False)
    pd.DataFrame({"user_id": sequences["user_id"], "history": items_lists.map(lambda s: s[:-2]),
                  "target": items_lists.map(lambda s: s[-2])}).to_parquet(output / "valid.parquet", index=False)
    pd.DataFrame({"user_id": sequences["user_id"], "history": items_lists.map(lambda s: s[:-1]),
                  "target": items_lists.map(lambda s: s[-1])}).to_parquet(output / "test.parquet", index=False)
    return {"users": len(sequences), "items": len(items), "interactions": int(items_lists.map(len).sum())}


if __name__ == "__main__":
    sys.exit(main())
