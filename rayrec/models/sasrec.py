"""SASRec: self-attentive sequential recommendation.

Kang and McAuley, "Self-Attentive Sequential Recommendation", ICDM 2018. Each position
attends causally to earlier items and predicts the next one; item embeddings are shared
with the output layer.

Where this departs from the paper:
- Loss: full-softmax cross-entropy over the whole catalog at every position, not binary
  cross-entropy with one sampled negative. It converges in far fewer epochs.
- Layers: pre-LayerNorm blocks and GELU, attention through
  `torch.nn.functional.scaled_dot_product_attention`.
- Padding: sequences are right-padded. Positions count from the oldest kept item, so a
  history's scores do not depend on how much padding follows it.

Shapes: B batch, T sequence length, C hidden size, N catalog size (item ids 1..N).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from rayrec.models.config import ModelConfig

PADDING_ID = 0


class SequenceBatch(NamedTuple):
    """A right-padded batch of item sequences."""

    item_ids: torch.Tensor  # [B, T] x int64, oldest first, 0 after the last real item
    target_ids: torch.Tensor | None = None  # [B, T] x int64, next item per position, 0 = no target


class CausalSelfAttention(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.num_heads = config.num_heads
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.proj = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)  # 3 x (B, T, C)
        q = q.view(B, T, self.num_heads, C // self.num_heads).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.num_heads, C // self.num_heads).transpose(1, 2)
        v = v.view(B, T, self.num_heads, C // self.num_heads).transpose(1, 2)

        # Right padding makes the causal mask enough, because padding only follows real positions.
        # No dropout on attention weights: it forces the slow unfused kernel and costs a (B, nh, T, T) mask.
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.proj(y)


class Block(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.hidden_size)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.hidden_size)
        self.mlp = nn.Sequential(
            nn.Linear(config.hidden_size, 4 * config.hidden_size),
            nn.GELU(),
            nn.Linear(4 * config.hidden_size, config.hidden_size),
            nn.Dropout(config.dropout),
        )
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        x = x + self.dropout(self.attn(self.ln_1(x)))
        x = x + self.mlp(self.ln_2(x))
        # Zero the padding positions so they carry nothing into the next block.
        return x * keep  # (B, T, C)


class SASRec(nn.Module):
    """Causal Transformer over item sequences; `forward(batch) -> (logits, loss)`.

    Use `score_last` for ranking: it returns logits over the catalog for the item after each
    history. The padding column is set to -inf, so id 0 is never ranked or trained on.
    """

    def __init__(self, config: ModelConfig, num_items: int):
        super().__init__()
        if num_items < 1:
            raise ValueError(f"num_items ({num_items}) must be at least 1.")
        self.config = config
        self.num_items = num_items
        self.item_emb = nn.Embedding(num_items + 1, config.hidden_size, padding_idx=PADDING_ID)
        self.pos_emb = nn.Embedding(config.max_len, config.hidden_size)
        self.emb_dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList([Block(config) for _ in range(config.num_layers)])
        self.ln_f = nn.LayerNorm(config.hidden_size)
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
        if isinstance(module, nn.Embedding) and module.padding_idx is not None:
            with torch.no_grad():
                module.weight[module.padding_idx].zero_()

    def encode(self, item_ids: torch.Tensor) -> torch.Tensor:
        """Return hidden states (B, T, C); padding positions are zero."""
        B, T = item_ids.shape
        if T > self.config.max_len:
            raise ValueError(f"sequence length {T} exceeds max_len {self.config.max_len}; truncate histories first.")
        keep = (item_ids != PADDING_ID).unsqueeze(-1).to(self.item_emb.weight.dtype)  # (B, T, 1)
        positions = torch.arange(T, device=item_ids.device)  # (T,)

        x = self.item_emb(item_ids) * math.sqrt(self.config.hidden_size) + self.pos_emb(positions)  # (B, T, C)
        x = self.emb_dropout(x) * keep
        for block in self.blocks:
            x = block(x, keep)
        return self.ln_f(x) * keep  # (B, T, C)

    def catalog_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Score every item id against hidden states (..., C) -> (..., N + 1)."""
        logits = hidden @ self.item_emb.weight.T
        logits[..., PADDING_ID] = float("-inf")
        return logits

    def forward(self, batch: SequenceBatch) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Return logits at each target position (P, N + 1) and their mean cross-entropy.

        Without targets, return logits for every position (B, T, N + 1) and no loss.
        """
        hidden = self.encode(batch.item_ids)  # (B, T, C)
        if batch.target_ids is None:
            return self.catalog_logits(hidden), None

        # Scoring only positions with a target keeps the (P, N + 1) logits small.
        has_target = batch.target_ids != PADDING_ID  # (B, T)
        logits = self.catalog_logits(hidden[has_target])  # (P, N + 1)
        loss = F.cross_entropy(logits, batch.target_ids[has_target])
        return logits, loss

    @torch.no_grad()
    def score_last(self, item_ids: torch.Tensor) -> torch.Tensor:
        """Logits (B, N + 1) for the next item after each right-padded history (B, T)."""
        lengths = (item_ids != PADDING_ID).sum(dim=1)  # (B,)
        if bool((lengths == 0).any()):
            raise ValueError("every history needs at least one known item.")
        hidden = self.encode(item_ids)  # (B, T, C)
        last = hidden[torch.arange(item_ids.shape[0], device=item_ids.device), lengths - 1]  # (B, C)
        return self.catalog_logits(last)
