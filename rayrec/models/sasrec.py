"""SASRec: self-attentive sequential recommendation.

Kang and McAuley, "Self-Attentive Sequential Recommendation", ICDM 2018. Each position
attends causally to earlier items and predicts the next one; item embeddings are shared
with the output layer.

Where this departs from the paper:
- Loss: full-softmax cross-entropy over the whole catalog at every position by default,
  not binary cross-entropy with one sampled negative (`loss: bce` keeps that recipe). It
  converges in far fewer epochs.
- Layers: pre-LayerNorm blocks and GELU, attention through
  `torch.nn.functional.scaled_dot_product_attention`.
- Padding: sequences are right-padded. Positions count from the oldest kept item, so a
  history's scores do not depend on how much padding follows it.
"""

from __future__ import annotations

import torch

from rayrec.models.transformer import PADDING_ID, SequenceBatch, SequenceRecommender

__all__ = ["PADDING_ID", "SASRec", "SequenceBatch"]


class SASRec(SequenceRecommender):
    """Causal Transformer that predicts the next item at every position."""

    causal = True

    def training_batch(self, item_ids: torch.Tensor) -> SequenceBatch:
        return SequenceBatch(item_ids=item_ids[:, :-1], target_ids=item_ids[:, 1:])

    def last_hidden(self, item_ids: torch.Tensor) -> torch.Tensor:
        lengths = self._check_histories(item_ids)
        hidden = self.encode(item_ids)  # (B, T, C)
        return hidden[torch.arange(item_ids.shape[0], device=item_ids.device), lengths - 1]  # (B, C)
