"""Driver side of training: build the Ray Train run, fit it, and export the bundle."""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import ray
import ray.train
from ray.train.torch import TorchTrainer

from rayrec import storage
from rayrec.models.bundle import write_bundle
from rayrec.models.config import ModelConfig
from rayrec.training.config import TrainConfig
from rayrec.training.loop import load_best_weights, load_history, train_loop_per_worker
from rayrec.training.resources import plan_worker_resources

logger = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")
BLOCKS_PER_WORKER = 8


@dataclass
class _Prepared:
    """A prepared-data folder: its filesystem, the path inside it, and the location shown in messages."""

    filesystem: pafs.FileSystem
    path: str
    shown: str


@dataclass
class TrainOutput:
    bundle_dir: Path | str  # a local folder, or the URI the bundle was uploaded to
    metrics: dict[str, Any]
    run_dir: str
    wall_time_s: float
    history: list[dict[str, float]] = field(default_factory=list)  # per-epoch metrics, oldest first
    stage_times_s: dict[str, float] = field(default_factory=dict)  # "ray_train_fit", "export_bundle"


class UnevenShardDataConfig(ray.train.DataConfig):
    """Give every worker a shard of each split without dropping rows.

    Ray Train's default split makes shards equal by dropping up to num_workers - 1 rows.
    Evaluation must score every user, and the training loop handles unequal shards itself.
    """

    def configure(self, datasets, world_size, worker_handles, worker_node_ids, **kwargs):
        shards = [{} for _ in range(world_size)]
        for name, dataset in datasets.items():
            dataset = dataset.copy(dataset)
            dataset.context.execution_options = self._resolve_execution_options(name)
            locality = worker_node_ids if self._enable_shard_locality else None
            for rank, split in enumerate(dataset.streaming_split(world_size, equal=False, locality_hints=locality)):
                shards[rank][name] = split
        return shards


def train(
    prepared_dir: str | Path,
    model_config: ModelConfig,
    config: TrainConfig,
    dataset_name: str,
    resume: bool = False,
) -> TrainOutput:
    """Train the configured model on a prepared directory with Ray Train and write the bundle.

    Expects Ray to be initialized (`ray.init()` locally, or a job on a cluster). With `resume`,
    the run named `config.run_name`, or else the newest run under `config.storage_path` that
    has a checkpoint, continues at the epoch after its latest checkpoint.
    """
    start = time.perf_counter()
    prepared = _Prepared(*storage.resolve(prepared_dir), shown=storage.without_query(prepared_dir))
    _check_prepared(prepared)
    num_items = pq.read_metadata(f"{prepared.path}/vocab.parquet", filesystem=prepared.filesystem).num_rows

    cluster_cpus = ray.cluster_resources().get("CPU", 0.0)
    resources = plan_worker_resources(config, cluster_cpus)
    logger.info(
        "Training with %d workers x %g CPUs (%d torch threads each), %g of %g CPUs left for Ray Data",
        config.num_workers, resources.cpus_per_worker, resources.torch_threads, resources.free_cpus, cluster_cpus,
    )

    storage_filesystem, storage_path, storage_shown = _storage_location(config.storage_path)
    if resume:
        run_name = config.run_name or latest_run_name(config.storage_path)
        if run_name is None:
            raise FileNotFoundError(
                f"--resume found no run with a checkpoint under {storage_shown}; train once without --resume, "
                "or set train.run_name and train.storage_path to the run to continue."
            )
        logger.info("Resuming run %s from its latest checkpoint in %s", run_name, storage_shown)
    else:
        run_name = config.run_name or f"{model_config.architecture}-{dataset_name}-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}"
    # Ray Train continues a run whose folder under storage_path already has checkpoints.
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "model": dataclasses.asdict(model_config),
            "train": dataclasses.asdict(config),
            "num_items": num_items,
            "torch_threads": resources.torch_threads,
        },
        scaling_config=ray.train.ScalingConfig(
            num_workers=config.num_workers,
            use_gpu=config.use_gpu,
            resources_per_worker={"CPU": resources.cpus_per_worker},
        ),
        run_config=ray.train.RunConfig(
            name=run_name,
            storage_path=storage_path,
            storage_filesystem=storage_filesystem,
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            failure_config=ray.train.FailureConfig(max_failures=2),
        ),
        datasets={split: _read_split(prepared, split, config.num_workers) for split in SPLITS},
        dataset_config=UnevenShardDataConfig(),
    )
    fit_start = time.perf_counter()
    result = trainer.fit()
    fit_s = time.perf_counter() - fit_start
    if result.error is not None:
        raise RuntimeError(f"Training run {run_name} failed: {result.error}") from result.error

    metrics = {key: value for key, value in result.metrics.items() if key.startswith(("valid_", "test_"))}
    metrics.update(best_epoch=result.metrics["best_epoch"], epochs_trained=result.metrics["epochs_trained"],
                   resumed_at_epochs=result.metrics["resumed_at_epochs"])
    export_start = time.perf_counter()
    bundle_dir = export_bundle(
        prepared, config.bundle_dir, load_best_weights(result.checkpoint), model_config,
        num_items, metrics, dataset_name,
    )
    export_s = time.perf_counter() - export_start
    wall_time_s = time.perf_counter() - start
    logger.info("Training finished in %.1f s; bundle at %s", wall_time_s, storage.without_query(bundle_dir))
    return TrainOutput(bundle_dir=bundle_dir, metrics=metrics, run_dir=f"{storage_shown}/{run_name}", wall_time_s=wall_time_s,
                       history=load_history(result.checkpoint),
                       stage_times_s={"ray_train_fit": fit_s, "export_bundle": export_s})


def export_bundle(prepared: _Prepared, bundle_dir: str, state_dict, model_config: ModelConfig, num_items: int,
                  metrics: dict[str, Any], dataset_name: str) -> Path:
    """Write the serving bundle: weights, vocabulary, full user histories and popularity."""
    filesystem, root = prepared.filesystem, prepared.path
    sequences = pq.read_table(f"{root}/sequences", columns=["user_id", "item_ids"], filesystem=filesystem)
    train_items = pq.read_table(f"{root}/train", columns=["item_ids"], filesystem=filesystem)["item_ids"]
    counts = pc.value_counts(pc.list_flatten(train_items))
    popularity = pa.table({
        "item_index": counts.field("values").cast(pa.int32()),
        "count": counts.field("counts"),
    }).sort_by([("count", "descending"), ("item_index", "ascending")])

    return write_bundle(
        bundle_dir,
        state_dict=state_dict,
        model_config=model_config,
        num_items=num_items,
        vocab=pq.read_table(f"{root}/vocab.parquet", filesystem=filesystem),
        histories=sequences,
        popularity=popularity,
        metrics=metrics,
        dataset=dataset_name,
    )


def _read_split(prepared: _Prepared, split: str, num_workers: int) -> ray.data.Dataset:
    # Shards are made of whole blocks; several equal blocks per worker keep the shards balanced.
    dataset = ray.data.read_parquet(f"{prepared.path}/{split}", filesystem=prepared.filesystem)
    return dataset.repartition(BLOCKS_PER_WORKER * num_workers)


def _check_prepared(prepared: _Prepared) -> None:
    names = ("vocab.parquet", *SPLITS, "sequences")
    infos = prepared.filesystem.get_file_info([f"{prepared.path}/{name}" for name in names])
    missing = [name for name, info in zip(names, infos) if info.type == pafs.FileType.NotFound]
    if missing:
        raise FileNotFoundError(
            f"{prepared.shown} is not a prepared dataset: missing {', '.join(missing)}. Run `rayrec prepare` first."
        )


def latest_run_name(storage_path: str) -> str | None:
    """Return the run under `storage_path` with the newest checkpoint, or None if there is none.

    Ray Train names checkpoint folders `checkpoint_<UTC time>`, so names sort by time; object
    stores keep no folder times.
    """
    filesystem, root = storage.resolve(storage_path)
    newest: tuple[str, str] | None = None
    runs = filesystem.get_file_info(pafs.FileSelector(root, allow_not_found=True))
    for run in runs:
        if run.type != pafs.FileType.Directory:
            continue
        entries = filesystem.get_file_info(pafs.FileSelector(run.path, allow_not_found=True))
        checkpoints = [entry.base_name for entry in entries
                       if entry.type == pafs.FileType.Directory and entry.base_name.startswith("checkpoint_")]
        if checkpoints and (newest is None or max(checkpoints) > newest[0]):
            newest = (max(checkpoints), run.base_name)
    return newest[1] if newest else None


def _storage_location(storage_path: str) -> tuple[pafs.FileSystem | None, str, str]:
    """Return Ray Train's storage filesystem and path, and the location to show in logs.

    Workers may not share the driver's working directory, so a local path becomes absolute.
    A URI's filesystem is passed explicitly, so its query options (endpoint, scheme) reach the workers.
    """
    if storage.is_uri(storage_path):
        filesystem, path = storage.resolve(storage_path)
        return filesystem, path, storage.without_query(storage_path).rstrip("/")
    local = str(Path(storage_path.removeprefix("file://")).expanduser().resolve())
    return None, local, local
