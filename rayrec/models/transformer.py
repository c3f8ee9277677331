"""Transformer layers and the model interface that SASRec and BERT4Rec share.

Both models embed item ids, add learned positions, run the same pre-LayerNorm blocks and
score items against the (tied) item embedding table. They differ only in the attention
mask, in how a training batch is built from raw sequences, and in which position ranks
the next item.

Shapes: B batch, T sequence length, C hidden size, N catalog size (item ids 1..N), P
positions with a target.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from rayrec.models.config import ModelConfig
from rayrec.models.losses import catalog_loss

PADDING_ID = 0


class SequenceBatch(NamedTuple):
    """A right-padded batch of item sequences."""

    item_ids: torch.Tensor  # [B, T] x int64, oldest first, 0 after the last real item
    target_ids: torch.Tensor | None = None  # [B, T] x int64, item to predict per position, 0 = no target


class SelfAttention(nn.Module):
    def __init__(self, config: ModelConfig, causal: bool):
        super().__init__()
        self.num_heads = config.num_heads
        self.causal = causal
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.proj = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)  # 3 x (B, T, C)
        q = q.view(B, T, self.num_heads, C // self.num_heads).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.num_heads, C // self.num_heads).transpose(1, 2)
        v = v.view(B, T, self.num_heads, C // self.num_heads).transpose(1, 2)

        # No dropout on attention weights: it forces the slow unfused kernel.
        if self.causal:
            # Right padding only follows real positions, so the causal mask also hides it.
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, nh, T, hs)
        else:
            key_mask = keep.squeeze(-1).bool()[:, None, None, :]  # (B, 1, 1, T)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.proj(y)


class Block(nn.Module):
    def __init__(self, config: ModelConfig, causal: bool):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.hidden_size)
        self.attn = SelfAttention(config, causal)
        self.ln_2 = nn.LayerNorm(config.hidden_size)
        self.mlp = nn.Sequential(
            nn.Linear(config.hidden_size, 4 * config.hidden_size),
            nn.GELU(),
            nn.Linear(4 * config.hidden_size, config.hidden_size),
            nn.Dropout(config.dropout),
        )
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        x = x + self.dropout(self.attn(self.ln_1(x), keep))
        x = x + self.mlp(self.ln_2(x))
        # Zero the padding positions so they carry nothing into the next block.
        return x * keep  # (B, T, C)


class SequenceRecommender(nn.Module):
    """Base of the sequence models: `forward(batch) -> (logits, loss)` and `score_last`.

    Subclasses set `causal`, `extra_ids` (ids after N, such as a mask id) and implement
    `training_batch` and `last_hidden`. The padding column of every
    logits tensor is -inf, so id 0 is never ranked or trained on.
    """

    causal: bool = True
    extra_ids: int = 0

    def __init__(self, config: ModelConfig, num_items: int):
        super().__init__()
        if num_items < 1:
            raise ValueError(f"num_items ({num_items}) must be at least 1.")
        self.config = config
        self.num_items = num_items
        self.item_emb = nn.Embedding(num_items + 1 + self.extra_ids, config.hidden_size, padding_idx=PADDING_ID)
        self.pos_emb = nn.Embedding(config.max_len, config.hidden_size)
        self.emb_dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList([Block(config, self.causal) for _ in range(config.num_layers)])
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

    @property
    def training_window(self) -> int:
        """Number of consecutive items that one training sequence holds."""
        return self.config.training_window

    def training_batch(self, item_ids: torch.Tensor) -> SequenceBatch:
        """Build inputs and targets from right-padded windows (B, training_window)."""
        raise NotImplementedError

    def last_hidden(self, item_ids: torch.Tensor) -> torch.Tensor:
        """Hidden state (B, C) that ranks the item after each right-padded history (B, T)."""
        raise NotImplementedError

    def encode(self, item_ids: torch.Tensor) -> torch.Tensor:
        """Return hidden states (B, T, C); padding positions are zero."""
        B, T = item_ids.shape
        if T > self.config.max_len:
            raise ValueError(f"sequence length {T} exceeds max_len {self.config.max_len}; truncate histories first.")
        # The layers' dtype: a bfloat16 copy for serving keeps only the item table in float32.
        dtype = self.pos_emb.weight.dtype
        keep = (item_ids != PADDING_ID).unsqueeze(-1).to(dtype)  # (B, T, 1)
        positions = torch.arange(T, device=item_ids.device)  # (T,)

        x = self.item_emb(item_ids).to(dtype) * math.sqrt(self.config.hidden_size) + self.pos_emb(positions)  # (B, T, C)
        x = self.emb_dropout(x) * keep
        for block in self.blocks:
            if self.config.activation_checkpointing and self.training:
                x = checkpoint(block, x, keep, use_reentrant=False)
            else:
                x = block(x, keep)
        return self.ln_f(x) * keep  # (B, T, C)

    def catalog_weights(self) -> torch.Tensor:
        """Embeddings of the padding row and the catalog (N + 1, C), without extra ids."""
        return self.item_emb.weight[: self.num_items + 1]

    def catalog_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Score every item id against hidden states (..., C) -> (..., N + 1)."""
        weights = self.catalog_weights()
        logits = hidden.to(weights.dtype) @ weights.T
        logits[..., PADDING_ID] = float("-inf")
        return logits

    def forward(self, batch: SequenceBatch) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Return logits and loss.

        With targets: the loss over the positions that have one, and full-catalog logits
        (P, N + 1) only when the loss is full cross-entropy (sampled losses never build them).
        Without targets: logits for every position (B, T, N + 1) and no loss.
        """
        hidden = self.encode(batch.item_ids)  # (B, T, C)
        if batch.target_ids is None:
            return self.catalog_logits(hidden), None

        has_target = batch.target_ids != PADDING_ID  # (B, T)
        hidden, targets = hidden[has_target], batch.target_ids[has_target]  # (P, C), (P,)
        loss = catalog_loss(self.config, hidden, targets, self.item_emb.weight, self.num_items)
        logits = self.catalog_logits(hidden) if self.config.loss == "cross_entropy" else None
        return logits, loss

    @torch.no_grad()
    def score_last(self, item_ids: torch.Tensor) -> torch.Tensor:
        """Logits (B, N + 1) for the next item after each right-padded history (B, T)."""
        return self.catalog_logits(self.last_hidden(item_ids))

    def _check_histories(self, item_ids: torch.Tensor) -> torch.Tensor:
        lengths = (item_ids != PADDING_ID).sum(dim=1)  # (B,)
        if bool((lengths == 0).any()):
            raise ValueError("every history needs at least one known item.")
        return lengths
