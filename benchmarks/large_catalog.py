"""Train steps on a synthetic 1M-item catalog: sampled softmax fits in memory, full softmax does not.

    python benchmarks/large_catalog.py --items 1000000 --budget-gib 12 --output outputs/bench/large_catalog.json

Each loss runs in its own process, so one run's memory does not affect the next. The parent
samples the child's resident memory every 50 ms and kills it above `--budget-gib`; a child
that the allocator refuses reports the error. Model: SASRec, hidden 64, 2 layers, max length
50, batch 256 sequences, plain PyTorch (no Ray).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import psutil

GIB = 1024**3
RUNS = {
    "sampled_softmax (uniform, 1024 negatives)": ["model.loss=sampled_softmax", "model.num_negatives=1024"],
    "sampled_softmax (in-batch)": ["model.loss=sampled_softmax", "model.negatives=in_batch"],
    "cross_entropy (full softmax)": ["model.loss=cross_entropy"],
}


def child(items: int, steps: int, overrides: list[str]) -> None:
    import torch

    from rayrec.models.config import ModelConfig
    from rayrec.models.factory import build_model

    settings = dict(override.split("=", 1) for override in overrides)
    config = ModelConfig(max_len=50, hidden_size=64, num_layers=2, num_heads=2, dropout=0.2,
                         loss=settings["model.loss"], negatives=settings.get("model.negatives", "uniform"),
                         num_negatives=int(settings.get("model.num_negatives", 256)))
    torch.manual_seed(0)
    model = build_model(config, items)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    start = time.perf_counter()
    for _ in range(steps):
        sequences = torch.randint(1, items + 1, (256, config.training_window))
        _, loss = model(model.training_batch(sequences))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    print(json.dumps({"loss": loss.item(), "s_per_step": (time.perf_counter() - start) / steps}))


def run(items: int, steps: int, overrides: list[str], budget_bytes: int) -> dict:
    command = [sys.executable, __file__, "--child", "--items", str(items), "--steps", str(steps), *overrides]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    watched = psutil.Process(process.pid)
    peak, killed = 0, False
    while process.poll() is None:
        try:
            peak = max(peak, watched.memory_info().rss)
        except psutil.NoSuchProcess:
            break
        if peak > budget_bytes:
            process.kill()
            killed = True
            break
        time.sleep(0.05)
    stdout, stderr = process.communicate()
    record = {"peak_rss_gib": round(peak / GIB, 2), "returncode": process.returncode}
    if killed:
        record["outcome"] = f"killed above the {budget_bytes / GIB:.0f} GiB budget"
    elif process.returncode != 0:
        record["outcome"] = "failed: " + (stderr.strip().splitlines() or ["no message"])[-1][:200]
    else:
        record.update(json.loads(stdout.strip().splitlines()[-1]))
        record["outcome"] = "trained"
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=1_000_000, help="Catalog size, in items.")
    parser.add_argument("--steps", type=int, default=5, help="Optimizer steps per run.")
    parser.add_argument("--budget-gib", type=float, default=12.0, help="Resident memory above which a run is killed, in GiB.")
    parser.add_argument("--output", default="outputs/bench/large_catalog.json", help="Where to write the JSON record.")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.items, args.steps, args.overrides)
        return

    results = {}
    for name, overrides in RUNS.items():
        results[name] = run(args.items, args.steps, overrides, int(args.budget_gib * GIB))
        print(name, results[name], flush=True)
    record = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {psutil.virtual_memory().total / GIB:.0f} GiB",
        "items": args.items, "steps": args.steps, "budget_gib": args.budget_gib, "results": results,
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
