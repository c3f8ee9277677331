"""The model bundle: the one directory that training writes and serving loads.

Layout:
    model.pt           state_dict of the best SASRec or BERT4Rec, loaded with weights_only=True
    bundle.json        model config, catalog size, version, dataset, creation time, metrics, and
                       `user_ids`: null, or the pseudonym scheme and key fingerprint (never the key)
    vocab.parquet      item_index (1..N) and raw item_id (string)
    histories.parquet  user_id and item_ids (list<int32>, oldest first): each user's full history
    popularity.parquet item_index and count over the training split, most popular first
"""

from __future__ import annotations

import dataclasses
import json
import logging
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import torch

from rayrec.data.privacy import user_id_info
from rayrec.models.config import ModelConfig
from rayrec.models.factory import build_model
from rayrec.models.transformer import SequenceRecommender

logger = logging.getLogger(__name__)

BUNDLE_FILES = ("model.pt", "bundle.json", "vocab.parquet", "histories.parquet", "popularity.parquet")


@dataclass
class Bundle:
    """A loaded bundle, ready to score."""

    path: Path | str  # the directory, or the URI the files were downloaded from
    model: SequenceRecommender
    metadata: dict[str, Any]
    item_ids: list[str]  # raw item id by item_index; entry 0 is the padding placeholder
    item_index: dict[str, int]
    histories: dict[str, np.ndarray]  # user_id -> item indices, oldest first
    popular_items: np.ndarray  # item indices, most popular first

    @property
    def version(self) -> str:
        return self.metadata["version"]


def write_bundle(
    path: str | Path,
    *,
    state_dict: dict[str, torch.Tensor],
    model_config: ModelConfig,
    num_items: int,
    vocab: pa.Table,
    histories: pa.Table,
    popularity: pa.Table,
    metrics: dict[str, float],
    dataset: str,
) -> Path | str:
    """Write a bundle directory, or upload one to a pyarrow filesystem URI, and return where it went.

    A URI (`s3://bucket/bundle`, with pyarrow's query options) gets the files of a temporary
    local bundle, bundle.json last, so a reader that finds bundle.json finds every other file.
    """
    location = str(path)
    if "://" in location and not location.startswith("file://"):
        with tempfile.TemporaryDirectory(prefix="rayrec-bundle-") as local:
            write_bundle(local, state_dict=state_dict, model_config=model_config, num_items=num_items, vocab=vocab,
                         histories=histories, popularity=popularity, metrics=metrics, dataset=dataset)
            _upload_bundle(Path(local), location)
        return location

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    created_at = datetime.now(timezone.utc)

    torch.save(state_dict, path / "model.pt")
    pq.write_table(vocab, path / "vocab.parquet")
    pq.write_table(histories, path / "histories.parquet")
    pq.write_table(popularity, path / "popularity.parquet")
    metadata = {
        "version": f"{dataset}-{created_at.strftime('%Y%m%dT%H%M%SZ')}",
        "created_at": created_at.isoformat(),
        "dataset": dataset,
        "model": "sasrec",
        "model_config": dataclasses.asdict(model_config),
        "num_items": num_items,
        "metrics": metrics,
        "user_ids": user_id_info(histories.schema),
    }
    (path / "bundle.json").write_text(json.dumps(metadata, indent=2) + "\n")
    logger.info("Wrote bundle %s to %s", metadata["version"], path)
    return path


def _upload_bundle(local: Path, uri: str) -> None:
    # NOTE: files are replaced one at a time, so a replica loading from the same URI during an
    # upload can read old and new files together; upload each new bundle to a new URI.
    filesystem, root = pafs.FileSystem.from_uri(uri)
    root = root.rstrip("/")
    filesystem.create_dir(root, recursive=True)
    for name in sorted(BUNDLE_FILES, key=lambda name: name == "bundle.json"):
        pafs.copy_files(str(local / name), f"{root}/{name}", source_filesystem=pafs.LocalFileSystem(),
                        destination_filesystem=filesystem)
    logger.info("Uploaded the bundle to %s", uri.split("?")[0])


def load_bundle(path: str | Path) -> Bundle:
    """Load a bundle written by `write_bundle` from a directory or a pyarrow filesystem URI.

    A URI (`s3://bucket/bundle`, `gs://...`, with pyarrow's query options such as
    `?endpoint_override=...`) is copied to a temporary directory, read, and deleted again.
    Credentials come from the filesystem's standard sources. The model is in eval mode on CPU.
    """
    location = str(path)
    if "://" in location and not location.startswith("file://"):
        with tempfile.TemporaryDirectory(prefix="rayrec-bundle-") as local:
            _download_bundle(location, Path(local))
            bundle = _load_local_bundle(Path(local))
        bundle.path = location
        return bundle
    return _load_local_bundle(Path(location.removeprefix("file://")).expanduser())


def _download_bundle(uri: str, target: Path) -> None:
    filesystem, root = pafs.FileSystem.from_uri(uri)
    root = root.rstrip("/")
    infos = filesystem.get_file_info([f"{root}/{name}" for name in BUNDLE_FILES])
    missing = [name for name, info in zip(BUNDLE_FILES, infos) if info.type != pafs.FileType.File]
    if missing:
        raise FileNotFoundError(f"{uri.split('?')[0]} is not a rayrec bundle: missing {', '.join(missing)}.")
    for name in BUNDLE_FILES:
        pafs.copy_files(f"{root}/{name}", str(target / name), source_filesystem=filesystem,
                        destination_filesystem=pafs.LocalFileSystem())
    logger.info("Downloaded bundle files from %s", uri.split("?")[0])


def _load_local_bundle(path: Path) -> Bundle:
    missing = [name for name in BUNDLE_FILES if not (path / name).exists()]
    if missing:
        raise FileNotFoundError(
            f"{path} is not a rayrec bundle: missing {', '.join(missing)}. Train one with `rayrec train`."
        )

    metadata = json.loads((path / "bundle.json").read_text())
    model = build_model(ModelConfig(**metadata["model_config"]), metadata["num_items"])
    model.load_state_dict(torch.load(path / "model.pt", map_location="cpu", weights_only=True))
    model.eval()

    vocab = pq.read_table(path / "vocab.parquet")
    item_ids = [""] + vocab["item_id"].to_pylist()
    if vocab["item_index"].to_pylist() != list(range(1, len(item_ids))):
        raise ValueError(f"{path / 'vocab.parquet'}: item_index must run 1..N in order.")

    histories_table = pq.read_table(path / "histories.parquet")
    # Bundles written before pseudonymisation existed have no `user_ids`; their schema says the same.
    metadata["user_ids"] = user_id_info(histories_table.schema)
    histories = {
        user: np.asarray(items, dtype=np.int64)
        for user, items in zip(histories_table["user_id"].to_pylist(), histories_table["item_ids"].to_pylist())
    }
    popular = pq.read_table(path / "popularity.parquet")["item_index"].to_numpy().astype(np.int64)

    return Bundle(
        path=path,
        model=model,
        metadata=metadata,
        item_ids=item_ids,
        item_index={item: index for index, item in enumerate(item_ids) if index},
        histories=histories,
        popular_items=popular,
    )
