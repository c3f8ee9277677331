"""Training throughput for several worker counts on one prepared dataset, for `rayrec bench train`.

Each worker count gets its own short Ray Train run with the same model and data. By default
the global batch size stays the same. With `batch_per_worker`, each worker keeps the configured
batch instead (weak scaling), so each gradient all-reduce serves more sequences. Speed is compared
as a ratio against the first worker count, measured in the same process minutes apart,
because absolute timings on shared machines are noisy.
"""

from __future__ import annotations

import dataclasses
import logging
import statistics
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import ray

from rayrec.models.config import ModelConfig
from rayrec.training.config import TrainConfig
from rayrec.training.loop import training_windows
from rayrec.training.resources import plan_worker_resources
from rayrec.training.trainer import train

logger = logging.getLogger(__name__)


def count_training_sequences(prepared_dir: str | Path, window: int) -> int:
    """Training windows per epoch: what one epoch feeds the model, summed over all workers."""
    item_lists = pq.read_table(Path(prepared_dir) / "train", columns=["item_ids"])["item_ids"].to_pylist()
    return len(training_windows([np.asarray(items) for items in item_lists], window))


def measure_training_throughput(
    prepared_dir: str | Path,
    model_config: ModelConfig,
    train_config: TrainConfig,
    work_dir: str | Path,
    worker_counts: tuple[int, ...] = (1, 2),
    epochs: int = 2,
    batch_per_worker: bool = False,
) -> list[dict[str, Any]]:
    """Train `epochs` epochs per worker count and return one record per count.

    The first epoch of each run is left out of the means when there is more than one, because
    it includes start-up costs such as Ray Data's first read.
    """
    sequences = count_training_sequences(prepared_dir, model_config.training_window)
    # A new run name per call: reusing one would resume the finished run and report its old timings.
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    records = []
    for workers in worker_counts:
        batch_size = train_config.batch_size * workers if batch_per_worker else train_config.batch_size
        config = dataclasses.replace(
            train_config, num_workers=workers, batch_size=batch_size, max_epochs=epochs, patience=epochs + 1,
            storage_path=str(Path(work_dir, f"{workers}-workers", "runs").resolve()),
            bundle_dir=str(Path(work_dir, f"{workers}-workers", "bundle")), run_name=f"bench-{workers}-workers-{stamp}",
        )
        logger.info("Throughput run with %d workers, %d epochs", workers, epochs)
        plan = plan_worker_resources(config, ray.cluster_resources().get("CPU", 0.0))
        output = train(prepared_dir, model_config, config, "bench")

        timed = output.history[1:] if len(output.history) > 1 else output.history
        train_s = statistics.mean(row["train_time_s"] for row in timed)
        records.append({
            "workers": workers,
            "torch_threads_per_worker": plan.torch_threads,
            "global_batch_size": batch_size,
            "epochs_timed": len(timed),
            "sequences_per_epoch": sequences,
            "train_s_per_epoch": train_s,
            "epoch_s": statistics.mean(row["epoch_time_s"] for row in timed),
            "sequences_per_s": sequences / train_s,
        })

    baseline = records[0]["sequences_per_s"]
    for record in records:
        record["speedup"] = record["sequences_per_s"] / baseline
    return records


def format_throughput(records: list[dict[str, Any]]) -> str:
    lines = ["workers  torch threads each  global batch  sequences/s  train s/epoch  epoch s (with validation)  "
             f"speed-up vs {records[0]['workers']} worker(s)"]
    for record in records:
        lines.append(f"{record['workers']:>7}  {record['torch_threads_per_worker']:>18}  {record['global_batch_size']:>12}  "
                     f"{record['sequences_per_s']:>11.0f}  "
                     f"{record['train_s_per_epoch']:>13.2f}  {record['epoch_s']:>25.2f}  {record['speedup']:.2f}x")
    return "\n".join(lines)
