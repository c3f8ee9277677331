"""Size Ray resources so training workers can never starve Ray Data of CPUs.

If the workers reserve every CPU, Ray Data has none left to read the training shards and
the run hangs without an error. So a run keeps `data_cpus` free, and fails fast when the
requested workers do not fit.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

from rayrec.training.config import TrainConfig


WORKER_NICENESS_ENV = "RAY_worker_niceness"


def run_workers_at_normal_priority() -> None:
    """Make a Ray started by this process run its workers at niceness 0, unless the user set a value.

    Ray starts workers at niceness 15, below its own daemons. In data-parallel training every
    preemption of one worker also stalls the others at the next gradient all-reduce. On 2 vCPUs,
    2 workers reached 1.3x the throughput of 1 worker at niceness 15 and 1.5x at 0. A cluster
    already started with `ray start` keeps the niceness it was started with.
    """
    os.environ.setdefault(WORKER_NICENESS_ENV, "0")


@dataclass(frozen=True)
class WorkerResources:
    cpus_per_worker: float
    torch_threads: int
    free_cpus: float


def plan_worker_resources(config: TrainConfig, cluster_cpus: float) -> WorkerResources:
    """Choose the CPUs each training worker reserves on a cluster with `cluster_cpus` CPUs."""
    available = cluster_cpus - config.data_cpus
    if available <= 0:
        raise ValueError(
            f"The cluster has {cluster_cpus:g} CPUs and train.data_cpus keeps {config.data_cpus:g} free for "
            "Ray Data, which leaves none for training. Add CPUs or lower train.data_cpus."
        )

    if config.cpus_per_worker is None:
        # Fractions of a CPU are fine: the threads below, not the reservation, decide the real use.
        cpus_per_worker = min(4.0, available / config.num_workers)
    else:
        cpus_per_worker = config.cpus_per_worker

    reserved = cpus_per_worker * config.num_workers
    if reserved > available + 1e-9:
        raise ValueError(
            f"{config.num_workers} training workers x {cpus_per_worker:g} CPUs = {reserved:g} CPUs, but only "
            f"{available:g} of the cluster's {cluster_cpus:g} CPUs are free after train.data_cpus "
            f"({config.data_cpus:g}) for Ray Data. Lower train.num_workers or train.cpus_per_worker."
        )

    threads = max(1, math.floor(cluster_cpus / config.num_workers)) if config.cpus_per_worker is None else max(
        1, math.floor(cpus_per_worker)
    )
    return WorkerResources(cpus_per_worker=cpus_per_worker, torch_threads=threads, free_cpus=cluster_cpus - reserved)
