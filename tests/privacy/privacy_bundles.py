"""A tiny bundle written with `write_bundle`, optionally with pseudonymised user ids."""

from pathlib import Path

import numpy as np
import pyarrow as pa

from rayrec.data.privacy import pseudonymize, schema_metadata
from rayrec.models.bundle import write_bundle
from rayrec.models.config import ModelConfig
from rayrec.models.factory import build_model

NUM_ITEMS = 12


def tiny_bundle(path: Path, key: bytes | None = None, users: tuple[str, ...] = ("alice-91",)) -> Path:
    """Write a bundle with random weights; each user's history is items 1..4."""
    config = ModelConfig(max_len=6, hidden_size=8, num_layers=1, num_heads=2, dropout=0.0)
    stored = [user if key is None else pseudonymize(key, user) for user in users]
    histories = pa.table({"user_id": stored, "item_ids": pa.array([[1, 2, 3, 4]] * len(users), pa.list_(pa.int32()))})
    if key is not None:
        histories = histories.replace_schema_metadata(schema_metadata(key))
    return write_bundle(
        path, state_dict=build_model(config, NUM_ITEMS).state_dict(), model_config=config, num_items=NUM_ITEMS,
        vocab=pa.table({"item_index": pa.array(np.arange(1, NUM_ITEMS + 1), pa.int32()),
                        "item_id": [f"item-{i}" for i in range(1, NUM_ITEMS + 1)]}),
        histories=histories,
        popularity=pa.table({"item_index": pa.array(np.arange(1, NUM_ITEMS + 1), pa.int32()),
                             "count": pa.array(np.arange(NUM_ITEMS, 0, -1), pa.int64())}),
        metrics={}, dataset="tiny",
    )
