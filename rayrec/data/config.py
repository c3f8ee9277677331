"""Preprocessing config."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class PrepareConfig:
    """Input and output locations of preprocessing.

    The input is Parquet with the columns `user_id`, `item_id` and `timestamp` (int64
    seconds). Ids are read as strings. Set either `dataset` (a name from
    `rayrec datasets list`, fetched into `cache_dir`) or `input_path`.
    """

    dataset: str | None = "ml-100k"
    input_path: str | None = None
    output_dir: str = "outputs/ml-100k/prepared"
    cache_dir: str | None = None
    min_sequence_length: int = 3

    def __post_init__(self) -> None:
        if self.dataset is None and self.input_path is None:
            raise ValueError("set data.dataset (for example ml-100k) or data.input_path (Parquet file or directory).")
        if self.min_sequence_length < 3:
            raise ValueError(
                f"min_sequence_length ({self.min_sequence_length}) must be at least 3: leave-one-out "
                "needs one training item, one validation item and one test item per user."
            )
