"""Turning task examples into token batches with the loss on completion tokens only.

An example becomes ``tokens(prompt) + tokens(completion) + <|endoftext|>``; targets are the next tokens
of the completion and the end-of-text token, every other position is ``IGNORE_INDEX``. Prompt and
completion are tokenized separately so the boundary between them is exact. Sequences longer than
``max_len`` lose tokens from the start of the prompt (the completion is what is measured).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from overtrain.errors import OvertrainError
from overtrain.model.loss import IGNORE_INDEX, logits_of
from overtrain.precision import autocast_context


@dataclass(frozen=True)
class EncodedExample:
    input_ids: list[int]
    """Prompt and completion tokens, without the final target token."""
    target_ids: list[int]
    """Next-token targets, IGNORE_INDEX on prompt positions."""


def encode_example(tokenizer, prompt: str, completion: str, end_of_text_id: int, max_len: int) -> EncodedExample:
    prompt_ids = tokenizer.encode(prompt).ids
    completion_ids = tokenizer.encode(completion).ids + [end_of_text_id]
    if len(completion_ids) >= max_len:
        completion_ids = completion_ids[: max_len - 1]
    prompt_ids = prompt_ids[-(max_len + 1 - len(completion_ids)) :] if prompt_ids else [end_of_text_id]
    sequence = prompt_ids + completion_ids  # length <= max_len + 1
    targets = [IGNORE_INDEX] * (len(prompt_ids) - 1) + completion_ids
    return EncodedExample(sequence[:-1], targets)


def pad_batch(examples: Sequence[EncodedExample], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T) inputs right-padded with ``pad_id`` and (B, T) targets padded with IGNORE_INDEX."""
    length = max(len(example.input_ids) for example in examples)
    inputs = torch.full((len(examples), length), pad_id, dtype=torch.long)
    targets = torch.full((len(examples), length), IGNORE_INDEX, dtype=torch.long)
    for row, example in enumerate(examples):
        inputs[row, : len(example.input_ids)] = torch.tensor(example.input_ids)
        targets[row, : len(example.target_ids)] = torch.tensor(example.target_ids)
    return inputs, targets


def sample_rows(count: int, batch_size: int, seed: int, step: int) -> np.ndarray:
    """Indices of the examples in fine-tuning batch ``step``: a pure function of (seed, step)."""
    return np.random.default_rng([seed, step, 7]).integers(0, count, size=batch_size)


@torch.no_grad()
def completion_losses(model: torch.nn.Module, encoded: Sequence[EncodedExample], pad_id: int, batch_size: int, dtype: str) -> torch.Tensor:
    """Summed completion loss (nats) of each example, and via ``/ tokens`` the mean; shape (N, 2): sum, count."""
    model.eval()
    device = next(model.parameters()).device
    rows = []
    for start in range(0, len(encoded), batch_size):
        inputs, targets = pad_batch(encoded[start : start + batch_size], pad_id)
        with autocast_context(device, dtype):
            logits = logits_of(model, inputs.to(device)).float()
        losses = torch.nn.functional.cross_entropy(
            logits.transpose(1, 2), targets.to(device), ignore_index=IGNORE_INDEX, reduction="none"
        )  # (B, T)
        mask = targets.to(device) != IGNORE_INDEX
        rows.append(torch.stack([(losses * mask).sum(1), mask.sum(1).float()], dim=1).cpu())
    return torch.cat(rows)


def check_nonempty(examples: Sequence, split: str, task: str) -> None:
    if not examples:
        raise OvertrainError(f"task {task!r} has no {split} examples", f"raise max_{split} or check the task's data")
