"""Offline top-k for every user of a bundle (or a given list of users), written to Parquet with Ray Data.

Each Ray Data actor loads the bundle once and ranks a batch of users with
`rayrec.models.recommend.resolve_query` and `rank_queries`, the code that `rayrec recommend`
and `POST /recommend` use, so a user's row equals the top-k the server returns for
`{"user_id": ..., "k": k}` with the same `exclude_seen`.

Output: Parquet files under `output`, one row per user:
    user_id   string
    item_ids  list<string>: raw item ids, best first
    scores    list<float64>: the model's logits for those items (1 / popularity rank for fallback rows)
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import ray
import torch

from rayrec import storage
from rayrec.models.bundle import BUNDLE_FILES, load_bundle
from rayrec.models.recommend import rank_queries, resolve_query

logger = logging.getLogger(__name__)

OUTPUT_SCHEMA = pa.schema([
    ("user_id", pa.string()),
    ("item_ids", pa.list_(pa.string())),
    ("scores", pa.list_(pa.float64())),
])
UNKNOWN_USERS_SHOWN = 10


@dataclass
class BatchRecommendConfig:
    """One offline top-k run.

    `users_path` is a text file with one user id per line, or a Parquet file with a
    `user_id` column; unset means every user stored in the bundle. `num_cpus` is per actor,
    and each actor scores with that many torch threads.
    """

    bundle: str
    output: str
    k: int = 10
    users_path: str | None = None
    exclude_seen: bool = True
    batch_size: int = 256
    num_actors: int = 1
    num_cpus: float = 1.0

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError(f"k ({self.k}) must be at least 1.")
        for name in ("batch_size", "num_actors"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} ({getattr(self, name)}) must be at least 1.")
        if self.num_cpus <= 0:
            raise ValueError(f"num_cpus ({self.num_cpus}) must be positive.")


@dataclass
class BatchRecommendStats:
    """Counts of one run: users_in == rows_written + unknown_users."""

    users_in: int
    rows_written: int
    unknown_users: int
    unknown_user_examples: list[str] = field(default_factory=list)
    model_version: str = ""
    wall_time_s: float = 0.0


class TopKScorer:
    """Ray Data callable class: loads the bundle once per actor and ranks batches of users."""

    def __init__(self, bundle: str, k: int, exclude_seen: bool, torch_threads: int) -> None:
        torch.set_num_threads(torch_threads)
        self.bundle = load_bundle(bundle)
        self.k = k
        self.exclude_seen = exclude_seen

    def __call__(self, batch: pa.Table) -> pa.Table:
        users = batch["user_id"].to_pylist()
        queries = [resolve_query(self.bundle, user, None, self.k, exclude_seen=self.exclude_seen) for user in users]
        ranked = rank_queries(self.bundle, queries)

        item_ids = [[self.bundle.item_ids[index] for index, _ in row] for row in ranked]
        scores = [[float(score) for _, score in row] for row in ranked]
        return pa.table({"user_id": users, "item_ids": item_ids, "scores": scores}, schema=OUTPUT_SCHEMA)


def batch_recommend(config: BatchRecommendConfig) -> BatchRecommendStats:
    """Write the top-k of every requested user to `config.output`; unknown users are counted, not scored.

    Expects Ray to be initialized. `config.output` is replaced if it exists.
    """
    start = time.perf_counter()
    check_bundle(config.bundle)
    known = _bundle_users(config.bundle)
    requested = known if config.users_path is None else read_user_ids(config.users_path)
    known_set = set(known)
    users = [user for user in requested if user in known_set]
    unknown = [user for user in requested if user not in known_set]
    if unknown:
        logger.warning("%d of %d requested users are not in the bundle and get no row, for example %s",
                       len(unknown), len(requested), unknown[:UNKNOWN_USERS_SHOWN])
    logger.info("Batch recommend: %d users in, top-%d from %s to %s", len(requested), config.k,
                storage.without_query(config.bundle), storage.without_query(config.output))

    _check_cpus(config)
    filesystem, output_path = storage.replace_dir(config.output)
    rows_written = _score_and_write(users, config, filesystem, output_path) if users else 0
    if rows_written != len(users):
        raise RuntimeError(f"Batch recommend wrote {rows_written} rows for {len(users)} known users. "
                           "This is a rayrec bug; please report it.")

    stats = BatchRecommendStats(
        users_in=len(requested),
        rows_written=rows_written,
        unknown_users=len(unknown),
        unknown_user_examples=unknown[:UNKNOWN_USERS_SHOWN],
        model_version=_bundle_version(config.bundle),
        wall_time_s=round(time.perf_counter() - start, 2),
    )
    logger.info("Batch recommend: %d users in, %d rows out, %d unknown users, %.1f s",
                stats.users_in, stats.rows_written, stats.unknown_users, stats.wall_time_s)
    return stats


def _score_and_write(users: list[str], config: BatchRecommendConfig, filesystem: pafs.FileSystem,
                     output_path: str) -> int:
    # Enough blocks to keep every actor busy, but never more blocks than users. Slicing here
    # makes the blocks without a shuffle, whose tasks would need CPUs that the actors hold.
    num_blocks = max(1, min(len(users), config.num_actors * 4))
    table = pa.table({"user_id": pa.array(users, pa.string())})
    bounds = np.linspace(0, len(users), num_blocks + 1).astype(int)
    dataset = ray.data.from_arrow([table.slice(start, end - start) for start, end in zip(bounds[:-1], bounds[1:])])
    ranked = dataset.map_batches(
        TopKScorer,
        fn_constructor_kwargs={"bundle": config.bundle, "k": config.k, "exclude_seen": config.exclude_seen,
                               "torch_threads": max(1, int(config.num_cpus))},
        batch_size=config.batch_size,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=config.num_actors),
        num_cpus=config.num_cpus,
    )
    ranked.write_parquet(output_path, filesystem=filesystem)
    return _count_rows(filesystem, output_path)


def _count_rows(filesystem: pafs.FileSystem, output_path: str) -> int:
    selector = pafs.FileSelector(output_path, recursive=True)
    files = [info.path for info in filesystem.get_file_info(selector) if info.path.endswith(".parquet")]
    return sum(pq.read_metadata(path, filesystem=filesystem).num_rows for path in files)


def _check_cpus(config: BatchRecommendConfig) -> None:
    cluster_cpus = ray.cluster_resources().get("CPU", 0.0)
    requested = config.num_actors * config.num_cpus
    if requested > cluster_cpus:
        raise ValueError(f"{config.num_actors} scoring actors x {config.num_cpus:g} CPUs = {requested:g} CPUs, but the "
                         f"Ray cluster has {cluster_cpus:g}; lower --actors or --cpus-per-actor.")


def read_user_ids(path: str) -> list[str]:
    """Read user ids from a Parquet file (`user_id` column) or a text file with one id per line."""
    if not storage.exists(path):
        raise FileNotFoundError(f"Users file not found: {storage.without_query(path)}. Pass a text file with one "
                                "user id per line or a Parquet file with a user_id column.")
    filesystem, local = storage.resolve(path)
    if storage.without_query(path).endswith(".parquet"):
        schema = pq.read_schema(local, filesystem=filesystem)
        if "user_id" not in schema.names:
            raise ValueError(f"{storage.without_query(path)}: no user_id column (columns: {schema.names}).")
        return [str(user) for user in pq.read_table(local, columns=["user_id"], filesystem=filesystem)["user_id"].to_pylist()]

    users = []
    for number, line in enumerate(storage.read_text(path).splitlines(), start=1):
        user = line.strip()
        if not user:
            raise ValueError(f"{storage.without_query(path)}, line {number}: empty user id. Remove the blank line.")
        users.append(user)
    return users


def check_bundle(bundle: str) -> None:
    """Raise FileNotFoundError naming the missing files unless `bundle` contains every bundle file."""
    filesystem, path = storage.resolve(bundle)
    infos = filesystem.get_file_info([f"{path}/{name}" for name in BUNDLE_FILES])
    missing = [name for name, info in zip(BUNDLE_FILES, infos) if info.type != pafs.FileType.File]
    if missing:
        raise FileNotFoundError(f"{storage.without_query(bundle)} is not a rayrec bundle: missing {', '.join(missing)}. "
                                "Pass the bundle directory or URI that `rayrec train` wrote (train.bundle_dir).")


def _bundle_users(bundle: str) -> list[str]:
    filesystem, path = storage.resolve(bundle)
    return pq.read_table(f"{path}/histories.parquet", columns=["user_id"], filesystem=filesystem)["user_id"].to_pylist()


def _bundle_version(bundle: str) -> str:
    return json.loads(storage.read_text(storage.join(bundle, "bundle.json")))["version"]

