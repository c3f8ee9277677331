"""Model config; imports no torch so configs load anywhere."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ModelConfig:
    """SASRec architecture. The catalog size comes from the prepared vocabulary."""

    max_len: int = 50
    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 2
    dropout: float = 0.5

    def __post_init__(self) -> None:
        for name in ("max_len", "hidden_size", "num_layers", "num_heads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} ({getattr(self, name)}) must be at least 1.")
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be divisible by num_heads ({self.num_heads})."
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout ({self.dropout}) must be in [0, 1).")
