"""Training config; imports no torch so configs load anywhere."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass
class TrainConfig:
    """Ray Train scaling, optimizer, early stopping and output locations.

    `batch_size` is global: each of the `num_workers` workers takes an equal part of it.
    `lr_schedule: cosine` decays the learning rate to zero over `max_epochs`, after a linear
    warmup of `warmup_steps` optimizer steps; `constant` only applies the warmup.
    `grad_accumulation_steps` sums gradients over that many batches per optimizer step, so
    the effective batch is `batch_size` x `grad_accumulation_steps` sequences.
    `precision: auto` trains in bf16 autocast on GPUs that support it and in fp32 otherwise.
    `eval_sampled_negatives` > 0 adds sampled metrics (target against that many unseen items)
    beside the full-ranking ones; they are never used to pick the best epoch.
    `cpus_per_worker` unset means: share the cluster's CPUs between the workers but leave
    `data_cpus` free, so Ray Data can always read and feed the workers.
    """

    num_workers: int = 2
    use_gpu: bool = False
    cpus_per_worker: float | None = None
    data_cpus: float = 1.0
    batch_size: int = 128
    lr: float = 4e-3
    lr_schedule: Literal["constant", "cosine"] = "cosine"
    warmup_steps: int = 100
    weight_decay: float = 0.0
    grad_clip_norm: float = 1.0
    grad_accumulation_steps: int = 1
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    max_epochs: int = 40
    patience: int = 15
    eval_k: int = 10
    eval_sampled_negatives: int = 0
    seed: int = 42
    log_every_n_steps: int = 50
    storage_path: str = "outputs/ml-100k/runs"
    run_name: str | None = None
    bundle_dir: str = "outputs/ml-100k/bundle"

    def __post_init__(self) -> None:
        if self.num_workers < 1:
            raise ValueError(f"num_workers ({self.num_workers}) must be at least 1.")
        if self.batch_size < self.num_workers:
            raise ValueError(
                f"batch_size ({self.batch_size}) is global and must be at least num_workers ({self.num_workers})."
            )
        for name in ("lr", "max_epochs", "patience", "eval_k", "log_every_n_steps", "grad_accumulation_steps"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} ({getattr(self, name)}) must be positive.")
        if self.cpus_per_worker is not None and self.cpus_per_worker <= 0:
            raise ValueError(f"cpus_per_worker ({self.cpus_per_worker}) must be positive, or unset for automatic sizing.")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps ({self.warmup_steps}) must not be negative.")
        if self.lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"lr_schedule ({self.lr_schedule!r}) must be constant or cosine.")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f"precision ({self.precision!r}) must be auto, fp32 or bf16.")
        if self.eval_sampled_negatives < 0:
            raise ValueError(f"eval_sampled_negatives ({self.eval_sampled_negatives}) must be 0 (off) or positive.")
        if self.data_cpus <= 0:
            raise ValueError(
                f"data_cpus ({self.data_cpus}) must be positive: with no CPU kept free, training workers can "
                "take every CPU and Ray Data can no longer feed them."
            )
