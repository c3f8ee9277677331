"""Preprocessing config: input format, column mapping, cleaning, split and output."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Literal

FORMATS = (
    "auto", "parquet", "csv", "jsonl", "movielens-100k", "movielens-dat", "movielens-csv",
    "recbole", "sequence-lines", "pair-lines",
)
Format = Literal[
    "auto", "parquet", "csv", "jsonl", "movielens-100k", "movielens-dat", "movielens-csv",
    "recbole", "sequence-lines", "pair-lines",
]


@dataclass
class ColumnMapping:
    """Names of the input columns that hold each field; `rating` and `event_type` are optional."""

    user: str = "user_id"
    item: str = "item_id"
    timestamp: str = "timestamp"
    rating: str | None = None
    event_type: str | None = None


@dataclass
class PrepareConfig:
    """Input, cleaning, split and output settings of preprocessing.

    Ids are always read as strings, so leading zeros survive and no type is guessed from
    the first rows. Timestamps are int64 in the input's unit: integer seconds, integer
    milliseconds, or ISO-8601 strings parsed to milliseconds since the epoch (UTC when
    the string has no offset). Set either `dataset` (a name from `rayrec datasets list`,
    fetched into `cache_dir`) or `input_path` (a file, a directory or a glob, local or any
    pyarrow filesystem URI such as s3://bucket/logs/).
    """

    dataset: str | None = "ml-100k"
    input_path: str | None = None
    output_dir: str = "outputs/ml-100k/prepared"
    cache_dir: str | None = None

    format: Format = "auto"
    delimiter: str | None = None
    has_header: bool = True
    column_names: list[str] | None = None
    columns: ColumnMapping = field(default_factory=ColumnMapping)
    timestamp_format: Literal["seconds", "milliseconds", "iso8601"] = "seconds"
    on_invalid: Literal["error", "skip"] = "error"

    min_rating: float | None = None
    event_types: list[str] | None = None
    drop_duplicates: bool = False
    drop_consecutive_repeats: bool = False
    k_core: int | None = None
    min_sequence_length: int = 3
    max_len: int | None = None

    split: Literal["leave_one_out", "temporal"] = "leave_one_out"
    valid_cutoff: int | str | None = None
    test_cutoff: int | str | None = None
    num_shards: int = 8

    # With pseudonymize_users, every user id is written as HMAC-SHA256(key, id) (see
    # rayrec/data/privacy.py). The key comes from user_id_key_file or $RAYREC_USER_ID_KEY.
    pseudonymize_users: bool = False
    user_id_key_file: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.columns, dict):
            self.columns = ColumnMapping(**self.columns)
        if self.dataset is None and self.input_path is None:
            raise ValueError("set data.dataset (for example ml-100k) or data.input_path (a file, directory or glob).")
        self._check_split()

        if self.min_rating is not None and self.columns.rating is None:
            raise ValueError("data.min_rating needs data.columns.rating, the input column with the rating.")
        if self.event_types is not None and self.columns.event_type is None:
            raise ValueError("data.event_types needs data.columns.event_type, the input column with the event type.")
        if self.k_core is not None and self.k_core < 1:
            raise ValueError(f"data.k_core ({self.k_core}) must be at least 1, or null to turn k-core filtering off.")
        if self.max_len is not None and self.max_len < 1:
            raise ValueError(f"data.max_len ({self.max_len}) must be at least 1, or null to keep whole histories.")
        if self.user_id_key_file is not None and not self.pseudonymize_users:
            raise ValueError("data.user_id_key_file is set but data.pseudonymize_users is false; set "
                             "data.pseudonymize_users: true to hash user ids, or remove the key file setting.")
        if self.num_shards < 1:
            raise ValueError(f"data.num_shards ({self.num_shards}) must be at least 1.")
        if self.delimiter is not None and self.delimiter in ("", "\n", "\r"):
            raise ValueError(f"data.delimiter {self.delimiter!r} is invalid; use for example ',', '\\t' or '::'.")
        if not self.has_header and not self.column_names and self.format in ("csv", "auto"):
            raise ValueError("data.has_header is false, so set data.column_names to name the CSV columns in order.")

    def _check_split(self) -> None:
        if self.split == "leave_one_out":
            if self.min_sequence_length < 3:
                raise ValueError(
                    f"min_sequence_length ({self.min_sequence_length}) must be at least 3: leave-one-out "
                    "needs one training item, one validation item and one test item per user."
                )
            return

        if self.valid_cutoff is None or self.test_cutoff is None:
            raise ValueError("data.split temporal needs data.valid_cutoff and data.test_cutoff (timestamps or ISO-8601 strings).")
        if self.min_sequence_length < 2:
            raise ValueError(f"min_sequence_length ({self.min_sequence_length}) must be at least 2 for the temporal split.")
        if self.cutoff("valid_cutoff") >= self.cutoff("test_cutoff"):
            raise ValueError(
                f"data.valid_cutoff ({self.valid_cutoff}) must be earlier than data.test_cutoff ({self.test_cutoff})."
            )

    def cutoff(self, name: Literal["valid_cutoff", "test_cutoff"]) -> int:
        """Return a cutoff in the unit of the timestamps: an int as given, an ISO-8601 string converted."""
        value = getattr(self, name)
        if isinstance(value, int):
            return value
        try:
            moment = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"data.{name} {value!r} is neither an integer timestamp nor an ISO-8601 string.") from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=timezone.utc)
        seconds = moment.timestamp()
        return int(seconds) if self.timestamp_format == "seconds" else int(round(seconds * 1000))
