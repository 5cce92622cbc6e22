"""Learning-rate schedules as pure functions of the step.

All schedules share a linear warmup. ``cosine`` and ``linear`` anneal to ``min_lr_ratio`` exactly at the
last step (the paper's protocol: every budget ends at zero LR). ``wsd`` (warmup-stable-decay) holds the
peak and decays linearly over the final ``decay_fraction`` of the run; because its stable phase does not
depend on the budget, one long run can be branched into decays for many budgets.
"""

from __future__ import annotations

import math

from overtrain.pretrain.config import TrainConfig


def lr_multiplier(step: int, total_steps: int, warmup_steps: int, schedule: str, decay_fraction: float, min_ratio: float) -> float:
    """Multiplier of the peak LR for the update made at ``step`` (0-based) of a ``total_steps`` run."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    if schedule == "wsd":
        decay_steps = max(1, round(decay_fraction * total_steps))
        decay_start = total_steps - decay_steps
        if step < decay_start:
            return 1.0
        progress = (step + 1 - decay_start) / decay_steps
        return 1.0 - (1.0 - min_ratio) * min(progress, 1.0)
    progress = min((step + 1 - warmup_steps) / max(1, total_steps - warmup_steps), 1.0)
    if schedule == "cosine":
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    if schedule == "linear":
        return 1.0 - (1.0 - min_ratio) * progress
    raise ValueError(f"unknown schedule {schedule!r}")


def lr_at(step: int, train: TrainConfig) -> float:
    """Learning rate of the update at ``step`` under ``train``'s schedule (warmup measured in tokens)."""
    warmup_steps = math.ceil(train.warmup_tokens / train.tokens_per_step)
    return train.lr * lr_multiplier(
        step, train.total_steps, warmup_steps, train.schedule, train.decay_fraction, train.min_lr_ratio
    )


def wsd_branch_start_tokens(budget_tokens: int, train: TrainConfig) -> int:
    """Tokens at which a WSD run of ``budget_tokens`` leaves its stable phase (where a branch starts)."""
    steps = budget_tokens // train.tokens_per_step
    decay_steps = max(1, round(train.decay_fraction * steps))
    return (steps - decay_steps) * train.tokens_per_step
