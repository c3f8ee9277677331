"""Typed run configuration: one YAML file with `data`, `model` and `train` sections.

Each section is a dataclass checked on construction. Loading rejects unknown keys and
wrong types with a message that names the key and lists the valid ones. Command-line
overrides use dotted keys, for example `train.max_epochs=5` or `data.columns.user=uid`.
`FIELD_DOCS` describes every key; `python -m rayrec.docs` turns it into
docs/configuration.md.

This module imports no torch, so Ray Data workers and the CLI stay light.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from rayrec.data.config import PrepareConfig
from rayrec.models.config import ModelConfig
from rayrec.training.config import TrainConfig


class ConfigError(ValueError):
    """Invalid configuration file, key or value."""


@dataclass
class RunConfig:
    """Everything one end-to-end run needs: preprocessing, model and training."""

    data: PrepareConfig = field(default_factory=PrepareConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> None:
        """Write the resolved config as YAML, so every output records how it was made."""
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Load a run config from YAML (or defaults when `path` is None) and apply overrides."""
    raw: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        try:
            raw = yaml.safe_load(Path(path).read_text()) or {}
        except FileNotFoundError:
            raise ConfigError(f"Config file not found: {path}") from None
        except yaml.YAMLError as err:
            raise ConfigError(f"Config file {path} is not valid YAML: {err}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"Config file {path} must contain a mapping with sections data, model, train.")

    for override in overrides or []:
        _apply_override(raw, override)
    if overrides:
        source = f"{source} with command-line overrides"

    return from_dict(RunConfig, raw, source)


def _apply_override(raw: dict[str, Any], override: str) -> None:
    if "=" not in override:
        raise ConfigError(f"Override {override!r} must look like section.key=value, for example train.max_epochs=5.")
    dotted, value_text = override.split("=", 1)
    keys = dotted.strip().split(".")
    if len(keys) < 2 or not all(keys):
        raise ConfigError(f"Override key {dotted!r} must have the form section.key, for example train.lr.")

    # YAML parsing gives overrides the same types as the file: 5 is an int, null is None.
    try:
        value = yaml.safe_load(value_text) if value_text.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"Override {override!r}: the value is not valid YAML ({err}); quote it.") from None
    mapping = raw
    for depth, key in enumerate(keys[:-1]):
        if mapping.get(key) is None:
            mapping[key] = {}  # an absent section, or one left empty in the YAML file
        mapping = mapping[key]
        if not isinstance(mapping, dict):
            raise ConfigError(f"Override {override!r}: {'.'.join(keys[:depth + 1])} is not a section or mapping.")
    mapping[keys[-1]] = value


def from_dict(cls: type, values: dict[str, Any], where: str) -> Any:
    """Build dataclass `cls` from a mapping, checking keys and value types."""
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: expected a mapping for {cls.__name__}, got {type(values).__name__}.")

    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(unknown)} in {cls.__name__}. "
            f"Valid keys: {', '.join(sorted(fields))}."
        )

    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in values.items():
        kwargs[name] = _check_type(hints[name], value, f"{where}: {name}")
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except ValueError as err:
        raise ConfigError(f"{where}: {err}") from None


def _check_type(hint: Any, value: Any, where: str) -> Any:
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value or {}, where)

    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _check_type(option, value, where)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if errors else f"{where}: invalid value {value!r}.")

    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}.")
        (item_hint,) = typing.get_args(hint)
        return [_check_type(item_hint, item, f"{where}[{i}]") for i, item in enumerate(value)]

    if origin is typing.Literal:
        choices = typing.get_args(hint)
        if value not in choices:
            raise ConfigError(f"{where}: invalid value {value!r}; choose one of {', '.join(map(str, choices))}.")
        return value

    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is bool and not isinstance(value, bool):
        raise ConfigError(f"{where}: expected true or false, got {value!r}.")
    if hint in (int, float) and isinstance(value, bool):
        raise ConfigError(f"{where}: expected a number, got {value!r}.")
    if hint in (int, float, str) and not isinstance(value, hint):
        raise ConfigError(f"{where}: expected {hint.__name__}, got {json.dumps(value, default=str)}.")
    return value


# One description per config key, with its unit; docs/configuration.md is generated from
# these and the dataclass defaults, and a test fails when a key has no description here.
FIELD_DOCS: dict[str, str] = {
    "data.dataset": "Name of a dataset that `rayrec datasets list` shows; fetched into `cache_dir`. Set null to read `input_path`.",
    "data.input_path": "Interaction log to read: a file, a directory or a glob, local or a pyarrow filesystem URI such as s3://bucket/logs/.",
    "data.output_dir": "Folder for the prepared splits, vocabulary, stats.json and config.yaml; replaced if it exists.",
    "data.cache_dir": "Folder for fetched datasets; null means $RAYREC_CACHE_DIR or ~/.cache/rayrec.",
    "data.format": "Input format; auto picks one from the file name.",
    "data.delimiter": "Field separator of delimited text input, for example ',', '\\t' or '::'; null uses the format's own.",
    "data.has_header": "Whether delimited text input starts with a header line of column names.",
    "data.column_names": "Column names in order, for delimited text input without a header line.",
    "data.columns": "Names of the input columns that hold each field (see the data.columns keys).",
    "data.columns.user": "Input column with the user id.",
    "data.columns.item": "Input column with the item id.",
    "data.columns.timestamp": "Input column with the event time.",
    "data.columns.rating": "Input column with a rating; needed by data.min_rating.",
    "data.columns.event_type": "Input column with the event type; needed by data.event_types.",
    "data.timestamp_format": "Unit of the timestamps: integer seconds, integer milliseconds, or ISO-8601 strings (read as milliseconds).",
    "data.on_invalid": "What an invalid row does: error stops with the file and line, skip drops it and counts it in stats.json.",
    "data.min_rating": "Keep only events whose rating is at least this; null keeps all.",
    "data.event_types": "Keep only events of these types; null keeps all.",
    "data.drop_duplicates": "Drop exact repeats of an event: same user, item, timestamp, and rating and event type where mapped.",
    "data.drop_consecutive_repeats": "Drop an event whose item equals the user's previous item.",
    "data.k_core": "Repeatedly drop users and items with fewer than this many events; null turns it off.",
    "data.min_sequence_length": "Users with fewer events are dropped and counted; leave-one-out needs at least 3.",
    "data.max_len": "Keep only each user's most recent events, in events; null keeps whole histories.",
    "data.split": "leave_one_out: last event is the test target, second to last the validation target. temporal: split by the cutoffs.",
    "data.valid_cutoff": "Temporal split: events from this time on (integer in the timestamp unit, or ISO-8601) are validation.",
    "data.test_cutoff": "Temporal split: events from this time on are test; must be later than valid_cutoff.",
    "data.num_shards": "Number of Parquet files written per split.",
    "data.pseudonymize_users": "Write every user id as HMAC-SHA256 of the id with a secret key (32 hex characters), never the raw id.",
    "data.user_id_key_file": "File with the secret key for pseudonymize_users; null reads the key from $RAYREC_USER_ID_KEY.",
    "model.architecture": "sasrec: causal, predicts the next item at every position. bert4rec: bidirectional, fills in masked items.",
    "model.max_len": "Longest history the model reads, in items; longer training sequences are cut into windows of this length.",
    "model.hidden_size": "Width of item embeddings and Transformer layers; must be divisible by num_heads.",
    "model.num_layers": "Number of Transformer blocks.",
    "model.num_heads": "Attention heads per block.",
    "model.dropout": "Dropout probability in [0, 1) on the embeddings and on the attention and feed-forward outputs.",
    "model.loss": "cross_entropy: softmax over the whole catalog. sampled_softmax: against sampled items, for large catalogs. bce: one negative.",
    "model.negatives": "Negatives of sampled_softmax: uniform draws num_negatives items; in_batch uses the batch's other targets.",
    "model.num_negatives": "Items drawn per batch for sampled_softmax with uniform negatives.",
    "model.mask_prob": "bert4rec: probability that a training item is replaced by the mask id.",
    "model.mask_last_item": "bert4rec: also mask the last item of every training sequence, as ranking does after the history.",
    "model.activation_checkpointing": "Recompute block activations in the backward pass: less memory for long sequences, more compute.",
    "train.num_workers": "Ray Train data-parallel workers (DDP processes).",
    "train.use_gpu": "Give each worker one GPU and train with nccl; false trains on CPUs with gloo.",
    "train.cpus_per_worker": "CPUs each worker reserves in Ray; null shares the cluster's CPUs, less data_cpus, between the workers.",
    "train.data_cpus": "CPUs always left free for Ray Data to read and feed the workers; must be positive.",
    "train.batch_size": "Global batch size in sequences per optimizer step, split evenly over the workers.",
    "train.lr": "Peak learning rate of AdamW, reached after warmup_steps.",
    "train.lr_schedule": "constant keeps the peak learning rate after warmup; cosine decays it to zero over max_epochs.",
    "train.warmup_steps": "Optimizer steps of linear learning-rate warmup.",
    "train.weight_decay": "AdamW weight decay.",
    "train.grad_clip_norm": "Clip the gradient norm to this value; 0 turns clipping off.",
    "train.grad_accumulation_steps": "Batches whose gradients are summed per optimizer step.",
    "train.precision": "auto: bf16 autocast on a GPU that supports it, fp32 otherwise. fp32 or bf16 force one.",
    "train.max_epochs": "Most epochs to train, in passes over the training split.",
    "train.patience": "Stop after this many epochs without a better validation NDCG@eval_k.",
    "train.eval_k": "Cutoff K of the evaluation metrics NDCG@K, HR@K and MRR@K, in items.",
    "train.eval_sampled_negatives": "0 turns sampled metrics off; N > 0 also ranks each target against N unseen items, reported beside full ranking.",
    "train.seed": "Random seed for weights, dropout and batch order.",
    "train.log_every_n_steps": "Log one progress line (loss, ms/step, sequences/s) every this many steps on rank 0.",
    "train.storage_path": "Folder or URI (s3://, gs://) for checkpoints, the run's report and config.yaml; one subfolder per run.",
    "train.run_name": "Subfolder of storage_path for this run; null means <architecture>-<dataset>-<UTC time>.",
    "train.bundle_dir": "Folder for the serving bundle (weights, vocabulary, histories, popularity, config.yaml).",
}


def config_fields(cls: type = RunConfig, prefix: str = "") -> list[tuple[str, dataclasses.Field, Any]]:
    """Every key of a config class, depth first, as (dotted key, field, type hint)."""
    rows = []
    hints = typing.get_type_hints(cls)
    for item in dataclasses.fields(cls):
        key = f"{prefix}{item.name}"
        hint = hints[item.name]
        if dataclasses.is_dataclass(hint) and not prefix:
            rows += config_fields(hint, f"{key}.")
            continue
        rows.append((key, item, hint))
        if dataclasses.is_dataclass(hint):
            rows += config_fields(hint, f"{key}.")
    return rows
