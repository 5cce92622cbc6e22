"""Held-out loss: token-weighted, padding masked, on a fixed set of windows.

The loss of a set of sequences is the sum of per-token losses over every target token that is not
``ignore_index``, divided by the number of such tokens. (Averaging per-batch means instead would weight
a short, padded batch as much as a full one: the mistake of the LLM360 perplexity script.)
Works for our :class:`~overtrain.model.LlamaLM` and for any transformers causal LM.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from overtrain.precision import autocast_context

IGNORE_INDEX = -100


@dataclass(frozen=True)
class LossResult:
    """Mean loss in nats per target token, its perplexity, and how many tokens it covers."""

    loss: float
    tokens: int

    @property
    def perplexity(self) -> float:
        return math.exp(min(self.loss, 700.0))


def logits_of(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """(B, T, V) logits from our model or a transformers model (which returns an output object)."""
    if attention_mask is None:
        output = model(input_ids)
    else:
        output = model(input_ids, attention_mask=attention_mask)
    return output if isinstance(output, torch.Tensor) else output.logits


def summed_token_loss(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Sum of cross-entropies (fp32) over non-ignored targets, and their count."""
    losses = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX, reduction="sum")
    return losses, int((targets != IGNORE_INDEX).sum())


@torch.no_grad()
def mean_token_loss(
    model: torch.nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    *,
    batch_size: int = 16,
    dtype: str = "auto",
    attention_mask: torch.Tensor | None = None,
) -> LossResult:
    """Token-weighted mean loss of ``model`` on (N, T) inputs/targets (targets = IGNORE_INDEX are skipped)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total_loss, total_tokens = 0.0, 0
    try:
        for start in range(0, inputs.shape[0], batch_size):
            rows = slice(start, start + batch_size)
            mask = None if attention_mask is None else attention_mask[rows].to(device)
            with autocast_context(device, dtype):
                logits = logits_of(model, inputs[rows].to(device), mask)
            loss_sum, count = summed_token_loss(logits, targets[rows].to(device))
            total_loss += float(loss_sum)
            total_tokens += count
    finally:
        model.train(was_training)
    return LossResult(total_loss / max(total_tokens, 1), total_tokens)
