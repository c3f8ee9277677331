"""The per-worker training loop that Ray Train runs on each data-parallel worker.

Each epoch: train on this worker's shard of users, evaluate the validation shard, sum the
metric counts over all workers, checkpoint, and report to Ray Train. After the last epoch
every worker reloads the best weights and evaluates validation and test once more.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist

from rayrec.models.config import ModelConfig
from rayrec.models.factory import build_model
from rayrec.models.scoring import pad_histories
from rayrec.models.transformer import SequenceRecommender
from rayrec.training.config import TrainConfig
from rayrec.training.evaluate import ranking_sums_for_rows
from rayrec.training.metrics import reported_ks

logger = logging.getLogger(__name__)

CHECKPOINT_FILE = "state.pt"


@dataclass
class TrainState:
    """Progress that a resumed run needs besides the weights."""

    next_epoch: int = 0
    best_ndcg: float = -1.0
    best_epoch: int = -1
    epochs_without_improvement: int = 0
    # One entry per finished epoch (train_loss, validation metrics, train_time_s, epoch_time_s) for reports.
    history: list[dict[str, float]] = field(default_factory=list)
    # Epoch at which each restart from a checkpoint continued: worker failures and --resume.
    resumed_at: list[int] = field(default_factory=list)


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    model_config = ModelConfig(**loop_config["model"])
    config = TrainConfig(**loop_config["train"])
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    _setup_worker(rank, loop_config["torch_threads"], config.seed)

    model = ray.train.torch.prepare_model(build_model(model_config, loop_config["num_items"]))
    module = model.module if hasattr(model, "module") else model
    device = ray.train.torch.get_device()
    autocast_dtype = autocast_dtype_for(config.precision, device)
    per_worker_batch = config.batch_size // world_size
    k = config.eval_k
    ks = reported_ks(k)
    sequences = training_windows(read_shard("train", ["item_ids"])["item_ids"], module.training_window)

    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay, betas=(0.9, 0.98))
    # Every worker runs the same number of batches per epoch, the largest shard's count.
    batches_per_epoch = _max_over_workers(math.ceil(len(sequences) / per_worker_batch))
    optimizer_steps = math.ceil(batches_per_epoch / config.grad_accumulation_steps)
    scheduler = build_lr_scheduler(optimizer, config, total_steps=optimizer_steps * config.max_epochs)
    state, best_weights = _restore(module, optimizer, scheduler)
    if best_weights is None:
        best_weights = _copy_weights(module)
    splits = {split: read_shard(split, ["history", "target"]) for split in ("valid", "test")}
    logger.info("Rank %d shard: %d training windows, %d validation users, %d test users; %s, %s autocast",
                rank, len(sequences), len(splits["valid"]["target"]), len(splits["test"]["target"]),
                model_config.architecture, autocast_dtype or "no")

    for epoch in range(state.next_epoch, config.max_epochs):
        start = time.perf_counter()
        # Seeding per (seed, epoch, rank) makes a resumed epoch draw the same dropout and masks.
        torch.manual_seed(_epoch_seed(config.seed, epoch, rank))
        train_loss = _train_epoch(model, optimizer, scheduler, config, sequences, module, per_worker_batch,
                                  batches_per_epoch, epoch, device, autocast_dtype)
        train_time_s = time.perf_counter() - start
        valid = _evaluate(module, splits["valid"], ks, "valid_", config, rank)

        ndcg = valid[f"valid_ndcg@{k}"]
        if ndcg > state.best_ndcg:
            state.best_ndcg, state.best_epoch, state.epochs_without_improvement = ndcg, epoch, 0
            best_weights = _copy_weights(module)
        else:
            state.epochs_without_improvement += 1
        state.next_epoch = epoch + 1

        metrics = {"epoch": epoch, "train_loss": train_loss, **valid, "best_epoch": state.best_epoch,
                   f"best_valid_ndcg@{k}": state.best_ndcg, "epoch_time_s": time.perf_counter() - start}
        state.history.append({"epoch": epoch, "train_loss": train_loss, **valid, "train_time_s": train_time_s,
                              "epoch_time_s": metrics["epoch_time_s"]})
        logger.info(
            "epoch %d | loss %.4f | valid NDCG@%d %.4f HR@%d %.4f MRR@%d %.4f%s | best %.4f (epoch %d) | %.1f s",
            epoch, train_loss, k, ndcg, k, valid[f"valid_hr@{k}"], k, valid[f"valid_mrr@{k}"],
            _sampled_note(valid, "valid_", k), state.best_ndcg, state.best_epoch, metrics["epoch_time_s"],
        )
        _report(metrics, module, optimizer, scheduler, state, best_weights, rank)
        if state.epochs_without_improvement >= config.patience:
            logger.info("Stopping early: no validation NDCG@%d gain for %d epochs", k, config.patience)
            break

    module.load_state_dict(best_weights)
    final = {
        **_evaluate(module, splits["valid"], ks, "valid_", config, rank),
        **_evaluate(module, splits["test"], ks, "test_", config, rank),
        "best_epoch": state.best_epoch,
        "epochs_trained": state.next_epoch,
        "resumed_at_epochs": list(state.resumed_at),
        "final": True,
    }
    logger.info("Best epoch %d | test NDCG@%d %.4f HR@%d %.4f MRR@%d %.4f%s", state.best_epoch,
                k, final[f"test_ndcg@{k}"], k, final[f"test_hr@{k}"], k, final[f"test_mrr@{k}"],
                _sampled_note(final, "test_", k))
    # The final report carries a checkpoint too, so Ray Train's result contains these metrics.
    _report(final, module, optimizer, scheduler, state, best_weights, rank)


def autocast_dtype_for(precision: str, device: torch.device) -> torch.dtype | None:
    """Return the autocast dtype for `precision` on `device`, or None for plain fp32.

    `auto` picks bf16 only on a CUDA device that supports it: on CPUs bf16 autocast is slower
    than fp32 for these small matrices, and fp16 would need loss scaling.
    """
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def _epoch_seed(seed: int, epoch: int, rank: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0])


def _sampled_note(metrics: dict[str, float], prefix: str, k: int) -> str:
    key = f"{prefix}sampled_ndcg@{k}"
    return f" (sampled NDCG@{k} {metrics[key]:.4f})" if key in metrics else ""


def _setup_worker(rank: int, torch_threads: int, seed: int) -> None:
    # Rank 0 logs progress at info; the other ranks only log problems.
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("rayrec").setLevel(logging.INFO if rank == 0 else logging.WARNING)
    _quiet_ray_train_reports()
    torch.set_num_threads(max(1, min(torch_threads, os.cpu_count() or 1)))
    # The same seed on every rank gives identical initial weights.
    torch.manual_seed(seed)


def _quiet_ray_train_reports() -> None:
    """Keep only warnings from the Ray Train loggers that log every report and checkpoint at info.

    Ray Train 2.60 logs two such lines per epoch from every rank, which buries the progress lines.
    NOTE: these are Ray-internal module names; if they change, the lines come back and nothing breaks.
    """
    for name in ("ray.train.v2._internal.execution.context", "ray.train.v2._internal.execution.storage"):
        module = sys.modules.get(name)
        # context.py names its logger after its file path, storage.py after its module name.
        for logger_name in (name, getattr(module, "__file__", None)):
            if logger_name:
                logging.getLogger(logger_name).setLevel(logging.WARNING)


def build_lr_scheduler(optimizer, config: TrainConfig, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup over `warmup_steps`, then constant or cosine decay to zero at `total_steps`."""
    warmup = config.warmup_steps
    decay_steps = max(1, total_steps - warmup)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if config.lr_schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / decay_steps)
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _train_epoch(model, optimizer, scheduler, config: TrainConfig, sequences: list[np.ndarray],
                 module: SequenceRecommender, batch_size: int, num_batches: int, epoch: int, device,
                 autocast_dtype: torch.dtype | None) -> float:
    """Train one pass over this worker's sequences and return the mean loss over all workers.

    Every worker runs `num_batches` batches. A worker whose shard is smaller steps on a
    zero-weight batch, so the gradient all-reduces stay matched and nothing hangs.
    """
    model.train()
    rank = ray.train.get_context().get_world_rank()
    rng = np.random.default_rng([config.seed, epoch, rank])
    # The batch order is drawn from a seed shared by all workers, so their step-i batches have similar lengths.
    batches = matched_batch_order(length_bucketed_batches(sequences, batch_size, rng), num_batches,
                                  np.random.default_rng([config.seed, epoch]))
    accumulation = config.grad_accumulation_steps
    loss_sum = torch.zeros(2, dtype=torch.float64)  # [sum of losses, number of real batches]
    interval_start, sequences_in_interval = time.perf_counter(), 0

    for step in range(num_batches):
        if batches[step]:
            item_ids, weight = pad_histories(batches[step], module.training_window), 1.0
        else:
            item_ids, weight = torch.ones((1, 2), dtype=torch.int64), 0.0
        batch = module.training_batch(item_ids.to(device))
        is_update = (step + 1) % accumulation == 0 or step == num_batches - 1

        # Between optimizer steps DDP must not all-reduce; it does so on the step's last backward.
        sync = model.no_sync() if hasattr(model, "no_sync") and not is_update else contextlib.nullcontext()
        with sync:
            with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
                _, loss = model(batch)
            (loss * weight / accumulation).backward()
        if is_update:
            if config.grad_clip_norm > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()

        if weight:
            loss_sum += torch.tensor([loss.item(), 1.0], dtype=torch.float64)
            sequences_in_interval += item_ids.shape[0]
        if (step + 1) % config.log_every_n_steps == 0:
            elapsed = time.perf_counter() - interval_start
            logger.info("epoch %d step %d/%d | loss %.4f | %.1f ms/step | %.0f sequences/s (this worker)",
                        epoch, step + 1, num_batches, loss.item(), 1000 * elapsed / config.log_every_n_steps,
                        sequences_in_interval / max(elapsed, 1e-9))
            interval_start, sequences_in_interval = time.perf_counter(), 0

    _all_reduce(loss_sum)
    return float(loss_sum[0] / max(loss_sum[1], 1.0))


def training_windows(sequences: list[np.ndarray], window: int) -> list[np.ndarray]:
    """Cut each training sequence into windows of up to `window` items, newest first.

    Consecutive windows share one item, so with SASRec's window (max_len + 1) every event
    after a user's first is a target exactly once. Without this, events older than the last
    max_len would never be trained on.
    """
    windows = []
    for sequence in sequences:
        end = len(sequence)
        while end > 1:
            windows.append(sequence[max(0, end - window):end])
            end -= window - 1
    return windows


def length_bucketed_batches(sequences: list[np.ndarray], batch_size: int, rng: np.random.Generator,
                            batches_per_bucket: int = 16) -> list[list[np.ndarray]]:
    """Shuffle, then group sequences of similar length so batches carry little padding.

    Sorting happens only inside buckets of `batches_per_bucket` batches, and the batch order
    is shuffled, so each epoch still visits the data in a random order.
    """
    order = rng.permutation(len(sequences))
    bucket = batch_size * batches_per_bucket
    batches = []
    for start in range(0, len(order), bucket):
        chunk = sorted(order[start:start + bucket], key=lambda i: len(sequences[i]))
        batches.extend([[sequences[i] for i in chunk[j:j + batch_size]] for j in range(0, len(chunk), batch_size)])
    return [batches[i] for i in rng.permutation(len(batches))]


def matched_batch_order(batches: list[list[np.ndarray]], num_batches: int,
                        shared_rng: np.random.Generator) -> list[list[np.ndarray]]:
    """Order one worker's batches so that every worker's step-i batch costs about the same.

    A DDP step lasts as long as its slowest worker. Each worker sorts its batches by padded
    size and pads the list with empty batches up to `num_batches`. A permutation drawn from
    `shared_rng`, the same on every worker, then sends batches of the same size rank to the
    same step, and the order still changes every epoch.
    """
    by_size = sorted(batches, key=lambda batch: len(batch) * max(len(sequence) for sequence in batch), reverse=True)
    by_size += [[] for _ in range(num_batches - len(batches))]
    return [by_size[i] for i in shared_rng.permutation(num_batches)]


def read_shard(split: str, columns: list[str]) -> dict[str, list]:
    """Read this worker's whole shard of `split` from Ray Data into memory.

    NOTE: shards are read once per run and kept in worker memory. That suits sequence data of
    a few million users per worker, but larger data would need streaming every epoch.
    """
    rows: dict[str, list] = {column: [] for column in columns}
    shard = ray.train.get_dataset_shard(split)
    for batch in shard.iter_batches(batch_size=4096, batch_format="numpy"):
        for column in columns:
            rows[column].extend(np.asarray(value) for value in batch[column])
    return rows


def _evaluate(module: SequenceRecommender, rows: dict[str, list], ks: tuple[int, ...], prefix: str,
              config: TrainConfig, rank: int) -> dict[str, float]:
    """Full-ranking metrics over every user of a split, with counts summed over all workers."""
    sums = ranking_sums_for_rows(module, rows["history"], rows["target"], ks,
                                 sampled_negatives=config.eval_sampled_negatives, seed=config.seed + rank)
    for values in sums.tensors():
        _all_reduce(values)
    sums.recommended = (sums.recommended > 0).to(torch.float64)
    return sums.metrics(prefix)


def _max_over_workers(value: int) -> int:
    tensor = torch.tensor([float(value)], dtype=torch.float64)
    _all_reduce(tensor, dist.ReduceOp.MAX if dist.is_available() else None)
    return int(tensor.item())


def _all_reduce(values: torch.Tensor, op=None) -> None:
    """All-reduce a CPU tensor in place (sum by default); nccl needs it on the GPU for the call."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    device = ray.train.torch.get_device()
    on_device = values.to(device)
    dist.all_reduce(on_device, op=op if op is not None else dist.ReduceOp.SUM)
    values.copy_(on_device.cpu())


def _copy_weights(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().cpu().clone() for name, tensor in module.state_dict().items()}


def _report(metrics, module, optimizer, scheduler, state: TrainState, best_weights, rank: int) -> None:
    """Report epoch metrics; rank 0 attaches a checkpoint with everything a resume needs."""
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = None
        if rank == 0:
            torch.save({
                "model": _copy_weights(module),
                "best_model": best_weights,
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "train_state": asdict(state),
                "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            }, Path(folder) / CHECKPOINT_FILE)
            checkpoint = ray.train.Checkpoint.from_directory(folder)
        ray.train.report(metrics, checkpoint=checkpoint)


def _restore(module: torch.nn.Module, optimizer, scheduler) -> tuple[TrainState, dict[str, torch.Tensor] | None]:
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return TrainState(), None

    with checkpoint.as_directory() as folder:
        saved = torch.load(Path(folder) / CHECKPOINT_FILE, map_location="cpu", weights_only=True)
    module.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    torch.set_rng_state(saved["torch_rng"])
    if saved.get("cuda_rng") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(saved["cuda_rng"])
    state = TrainState(**saved["train_state"])
    state.resumed_at.append(state.next_epoch)
    logger.info("Resumed from checkpoint at epoch %d (best epoch %d)", state.next_epoch, state.best_epoch)
    return state, saved["best_model"]


def load_best_weights(checkpoint: ray.train.Checkpoint) -> dict[str, torch.Tensor]:
    """Read the best model weights from a checkpoint written by this loop."""
    with checkpoint.as_directory() as folder:
        saved = torch.load(Path(folder) / CHECKPOINT_FILE, map_location="cpu", weights_only=True)
    return saved["best_model"]


def load_history(checkpoint: ray.train.Checkpoint) -> list[dict[str, float]]:
    """Read the per-epoch metrics (`TrainState.history`) from a checkpoint written by this loop."""
    with checkpoint.as_directory() as folder:
        saved = torch.load(Path(folder) / CHECKPOINT_FILE, map_location="cpu", weights_only=True)
    return saved["train_state"].get("history", [])
