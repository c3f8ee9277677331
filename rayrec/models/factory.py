"""Build the model that a config names."""

from __future__ import annotations

from rayrec.models.bert4rec import BERT4Rec
from rayrec.models.config import ModelConfig
from rayrec.models.sasrec import SASRec
from rayrec.models.transformer import SequenceRecommender

MODELS: dict[str, type[SequenceRecommender]] = {"sasrec": SASRec, "bert4rec": BERT4Rec}


def build_model(config: ModelConfig, num_items: int) -> SequenceRecommender:
    """Return a freshly initialised model of `config.architecture` for items 1..num_items."""
    return MODELS[config.architecture](config, num_items)
