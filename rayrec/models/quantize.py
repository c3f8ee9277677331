"""Lower-precision copies of a model for inference: dynamic int8 on CPU, bfloat16 anywhere.

`int8`: `torch.ao.quantization.quantize_dynamic` stores each nn.Linear weight as int8 and
quantizes activations per batch at run time. Embeddings, LayerNorm and the catalog scoring (a
matmul with the item embedding table) stay float32. Any model works, whatever Linear layers it has.

`bf16`: the Transformer layers' weights and activations in bfloat16, for GPU replicas (and
CPUs with bf16 matmul support). The item table, and with it the catalog scoring, stays float32,
because bfloat16 logits carry about 3 significant digits and their ties would reorder the top-k.
Unlike int8, bf16 has no per-batch activation scale.

NOTE: torch 2.13 marks `torch.ao.quantization` as deprecated in favour of torchao; it still
works there, and torchao would be a new dependency.
"""

from __future__ import annotations

import copy
import logging
import warnings
from typing import Literal

import torch
from torch import nn

logger = logging.getLogger(__name__)

Quantize = Literal["none", "int8", "bf16"]
QUANTIZE_MODES = ("none", "int8", "bf16")


def quantize_model(model: nn.Module, mode: Quantize) -> nn.Module:
    """Return `model` itself for `none`, or a copy in int8 (model on CPU) or in bfloat16."""
    if mode not in QUANTIZE_MODES:
        raise ValueError(f"quantize {mode!r} is invalid; use one of {', '.join(QUANTIZE_MODES)}.")
    if mode == "none":
        return model
    if mode == "bf16":
        return _to_bfloat16(model)

    device = next(model.parameters()).device
    if device.type != "cpu":
        raise ValueError(f"quantize int8 runs on CPU only, but the model is on {device}; "
                         "set quantize to none or device to cpu.")
    linear_layers = sum(isinstance(module, nn.Linear) for module in model.modules())
    if linear_layers == 0:
        raise ValueError(f"quantize int8 found no nn.Linear layer in {type(model).__name__}; set quantize to none.")

    with warnings.catch_warnings():
        # torch 2.13 warns on every quantized weight that these tensor types are deprecated; the NOTE above covers it.
        warnings.filterwarnings("ignore", message=".*quantize_per_tensor", category=UserWarning)
        quantized = torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)
    quantized.eval()
    logger.info("Quantized %d nn.Linear layer(s) of %s to int8", linear_layers, type(model).__name__)
    return quantized


def _to_bfloat16(model: nn.Module) -> nn.Module:
    # A copy, so the caller's float32 model stays as it was (nn.Module.to casts in place).
    converted = copy.deepcopy(model).to(torch.bfloat16).eval()
    item_table = getattr(converted, "item_emb", None)
    if isinstance(item_table, nn.Embedding):
        item_table.float()
    logger.info("Cast %s to bfloat16", type(model).__name__)
    return converted
