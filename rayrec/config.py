"""Typed run configuration: one YAML file with `data`, `model` and `train` sections.

Each section is a dataclass checked on construction. Loading rejects unknown keys and
wrong types with a message that names the key and lists the valid ones. Command-line
overrides use dotted keys, for example `train.max_epochs=5`.

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
    if len(keys) != 2:
        raise ConfigError(f"Override key {dotted!r} must have the form section.key, for example train.lr.")

    section, key = keys
    # YAML parsing gives overrides the same types as the file: 5 is an int, null is None.
    value = yaml.safe_load(value_text) if value_text.strip() else ""
    raw.setdefault(section, {})
    if not isinstance(raw[section], dict):
        raise ConfigError(f"Section {section!r} must be a mapping.")
    raw[section][key] = value


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
