"""Model config; imports no torch so configs load anywhere."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

ARCHITECTURES = ("sasrec", "bert4rec")
LOSSES = ("cross_entropy", "sampled_softmax", "bce")
NEGATIVE_SAMPLERS = ("uniform", "in_batch")


@dataclass
class ModelConfig:
    """Transformer architecture and training loss. The catalog size comes from the prepared vocabulary.

    `architecture`: `sasrec` attends causally and predicts the next item at every position;
    `bert4rec` attends both ways, learns to fill in items replaced by a mask id (each with
    probability `mask_prob`), and ranks by filling a mask appended after the history.
    `loss`: `cross_entropy` is a softmax over the whole catalog. `sampled_softmax` scores each
    target against `num_negatives` items drawn uniformly (`negatives: uniform`) or against the
    other targets of the batch (`negatives: in_batch`); either way the log of each item's
    sampling probability is subtracted from its logit (logQ correction). `bce` is binary
    cross-entropy with one uniform negative per target, the recipe of the original SASRec paper.
    """

    architecture: Literal["sasrec", "bert4rec"] = "sasrec"
    max_len: int = 50
    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 2
    dropout: float = 0.5
    loss: Literal["cross_entropy", "sampled_softmax", "bce"] = "cross_entropy"
    negatives: Literal["uniform", "in_batch"] = "uniform"
    num_negatives: int = 256
    mask_prob: float = 0.2
    # bert4rec: also mask each training sequence's last item, the same task as ranking (a mask after the history).
    mask_last_item: bool = False
    # Recompute each block's activations in the backward pass: less memory for long sequences, about 30 % more compute.
    activation_checkpointing: bool = False

    @property
    def training_window(self) -> int:
        """Items per training sequence: SASRec's targets are its inputs shifted by one, so it needs max_len + 1."""
        return self.max_len + 1 if self.architecture == "sasrec" else self.max_len

    def __post_init__(self) -> None:
        for name in ("max_len", "hidden_size", "num_layers", "num_heads", "num_negatives"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} ({getattr(self, name)}) must be at least 1.")
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be divisible by num_heads ({self.num_heads})."
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout ({self.dropout}) must be in [0, 1).")
        if not 0.0 < self.mask_prob < 1.0:
            raise ValueError(f"mask_prob ({self.mask_prob}) must be in (0, 1).")
        for name, valid in (("architecture", ARCHITECTURES), ("loss", LOSSES), ("negatives", NEGATIVE_SAMPLERS)):
            if getattr(self, name) not in valid:
                raise ValueError(f"{name} ({getattr(self, name)!r}) must be one of: {', '.join(valid)}.")
        if self.architecture == "bert4rec" and self.max_len < 2:
            raise ValueError("max_len must be at least 2 for bert4rec: one history item and the mask.")
