"""Peak training memory at max length 200 and 1000, with and without activation checkpointing.

    python benchmarks/activation_memory.py --output outputs/bench/activation_memory.json

Each setting runs 3 SASRec training steps (hidden 128, 2 layers, batch 32 sequences, 12,101
items like Amazon Beauty, sampled softmax with 256 negatives so that catalog logits do not hide
the layers' activations, fp32 on CPU) in its own process, so the reported peak
resident memory belongs to that setting alone. The parent samples the child every 20 ms.
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


def child(max_len: int, checkpointing: bool) -> None:
    import torch

    from rayrec.models.config import ModelConfig
    from rayrec.models.factory import build_model

    torch.set_num_threads(1)
    torch.manual_seed(0)
    config = ModelConfig(max_len=max_len, hidden_size=128, num_layers=2, num_heads=2, dropout=0.2,
                         loss="sampled_softmax", num_negatives=256, activation_checkpointing=checkpointing)
    model = build_model(config, 12_101).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    start = time.perf_counter()
    for _ in range(3):
        sequences = torch.randint(1, 12_102, (32, config.training_window))
        _, loss = model(model.training_batch(sequences))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    print(json.dumps({"s_per_step": (time.perf_counter() - start) / 3}))


def measure(max_len: int, checkpointing: bool) -> dict:
    command = [sys.executable, __file__, "--child", str(max_len), str(int(checkpointing))]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    watched = psutil.Process(process.pid)
    peak = 0
    while process.poll() is None:
        try:
            peak = max(peak, watched.memory_info().rss)
        except psutil.NoSuchProcess:
            break
        time.sleep(0.02)
    stdout, _ = process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"max_len {max_len}, checkpointing {checkpointing}: the child failed")
    return {"max_len": max_len, "activation_checkpointing": checkpointing, "peak_rss_gib": round(peak / GIB, 2),
            **json.loads(stdout.strip().splitlines()[-1])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="outputs/bench/activation_memory.json", help="Where to write the JSON record.")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(int(args.child[0]), bool(int(args.child[1])))
        return

    results = []
    for max_len in (200, 1000):
        for checkpointing in (False, True):
            results.append(measure(max_len, checkpointing))
            print(results[-1], flush=True)
    record = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {psutil.virtual_memory().total / GIB:.0f} GiB",
        "results": results,
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
