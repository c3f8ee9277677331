"""BERT4Rec: bidirectional Transformer trained by filling in masked items.

Sun et al., "BERT4Rec: Sequential Recommendation with Bidirectional Encoder Representations
from Transformer", CIKM 2019. Training replaces each real item with the mask id (N + 1) with
probability `mask_prob` and predicts the original item at those positions; with
`mask_last_item` the last item of every sequence is masked too. Ranking appends the mask id
after the history and scores the catalog at that position.

It shares the layers, the padding rules and the losses of SASRec (`transformer.py`); the
attention sees the whole sequence, with padding keys masked.
"""

from __future__ import annotations

import torch

from rayrec.models.transformer import PADDING_ID, SequenceBatch, SequenceRecommender


class BERT4Rec(SequenceRecommender):
    """Bidirectional Transformer that ranks items at a mask appended to the history."""

    causal = False
    extra_ids = 1

    @property
    def mask_id(self) -> int:
        return self.num_items + 1

    def training_batch(self, item_ids: torch.Tensor) -> SequenceBatch:
        real = item_ids != PADDING_ID  # (B, T)
        masked = (torch.rand(item_ids.shape, device=item_ids.device) < self.config.mask_prob) & real

        # Every sequence gets at least one target: rows without a masked item mask their last
        # item. With mask_last_item every row masks its last item.
        lengths = real.sum(dim=1)  # (B,)
        mask_last = lengths > 0
        if not self.config.mask_last_item:
            mask_last &= ~masked.any(dim=1)
        rows = torch.nonzero(mask_last).squeeze(1)
        masked[rows, lengths[rows] - 1] = True

        inputs = item_ids.masked_fill(masked, self.mask_id)
        targets = item_ids.masked_fill(~masked, PADDING_ID)
        return SequenceBatch(item_ids=inputs, target_ids=targets)

    def last_hidden(self, item_ids: torch.Tensor) -> torch.Tensor:
        lengths = self._check_histories(item_ids)
        B, T = item_ids.shape
        rows = torch.arange(B, device=item_ids.device)

        # Append the mask after each history; a history that fills max_len drops its oldest item.
        padded = torch.cat([item_ids, torch.full((B, 1), PADDING_ID, dtype=item_ids.dtype, device=item_ids.device)], 1)
        padded[rows, lengths] = self.mask_id
        mask_positions = lengths.clone()
        if T + 1 > self.config.max_len:
            full = lengths + 1 > self.config.max_len
            padded[full, :-1] = padded[full, 1:].clone()
            mask_positions[full] -= 1
            padded = padded[:, : self.config.max_len]

        hidden = self.encode(padded)  # (B, T', C)
        return hidden[rows, mask_positions]  # (B, C)
