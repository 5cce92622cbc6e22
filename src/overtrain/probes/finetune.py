"""The fine-tuning probe: fine-tune a checkpoint with fixed hyper-parameters, measure ID gain and forgetting.

Read-outs, before and after fine-tuning:

- ID: the task's held-out loss on completion tokens (nats per token), and accuracy for tasks with choices
  (the choice with the lowest mean completion loss is the prediction);
- OOD: the pre-training held-out loss; ``forgetting = ood_loss_after - ood_loss_before``.

``reg_lambda > 0`` adds ``reg_lambda * ||theta - theta_pretrained||^2`` to the loss (experiment 6's
regularization toward the pre-trained weights). An LR grid is a list of these runs; "tuned" picks, per
checkpoint, the LR with the best ID result (:func:`select_tuned`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch

from overtrain.data.tokenizer import load_tokenizer
from overtrain.errors import OvertrainError
from overtrain.model.loss import IGNORE_INDEX, logits_of
from overtrain.precision import autocast_context
from overtrain.pretrain.schedules import lr_multiplier
from overtrain.probes.target import ProbeTarget
from overtrain.probes.task_batches import (
    EncodedExample,
    check_nonempty,
    completion_losses,
    encode_example,
    pad_batch,
    sample_rows,
)


@dataclass
class FinetuneConfig:
    """Hyper-parameters of one fine-tuning run; the same for every checkpoint of a ladder."""

    task: str = "python-code"
    """A name from ``overtrain tasks`` (offline: python-code, gsm-symbolic, wordnet-class, kjv-to-web)."""
    lr: float = 1e-3
    """Peak learning rate."""
    steps: int = 100
    """Optimizer steps."""
    batch_size: int = 16
    """Examples per step."""
    warmup_fraction: float = 0.1
    """Share of the steps spent in linear warmup."""
    schedule: str = "cosine"
    """cosine | linear | constant (cosine and linear anneal to zero at the last step)."""
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    seed: int = 0
    """Seeds the order of fine-tuning batches (the held-out split never depends on it)."""
    reg_lambda: float = 0.0
    """Weight of the L2 pull toward the pre-trained weights, lambda * ||theta - theta_0||^2."""
    max_train: int | None = 2000
    max_heldout: int | None = 200
    max_len: int = 256
    """Longest fine-tuning sequence in tokens (the prompt is cut from the left beyond it)."""
    data_path: str | None = None
    """Local copy of a Hub task (same schema), for machines without network."""
    eval_batch_size: int = 32

    def validate(self) -> None:
        if not self.lr > 0:
            raise OvertrainError(f"lr={self.lr!r} must be positive", "use a learning rate > 0, e.g. lrs=[1e-4,1e-3]")
        if self.steps < 1 or self.batch_size < 1:
            raise OvertrainError(f"steps={self.steps} and batch_size={self.batch_size} must be >= 1", "set both to whole numbers >= 1")
        if self.reg_lambda < 0:
            raise OvertrainError(f"reg_lambda={self.reg_lambda} is negative", "use reg_lambda >= 0 (0 disables the pull)")
        if self.schedule not in ("cosine", "linear", "constant"):
            raise OvertrainError(f"unknown schedule {self.schedule!r}", "use cosine, linear or constant")


@dataclass(frozen=True)
class TaskMeasurement:
    loss: float
    accuracy: float | None


@dataclass(frozen=True)
class FinetuneRecord:
    checkpoint: str
    tokens_seen: int
    task: str
    lr: float
    seed: int
    reg_lambda: float
    steps: int
    id_loss_before: float
    id_loss_after: float
    id_accuracy_before: float | None
    id_accuracy_after: float | None
    ood_loss_before: float
    ood_loss_after: float
    train_tokens: int

    @property
    def forgetting(self) -> float:
        return self.ood_loss_after - self.ood_loss_before

    def as_dict(self) -> dict:
        return {**asdict(self), "forgetting": self.forgetting}


class EncodedTask:
    """A task's examples tokenized with the checkpoint's tokenizer, ready for batches and scoring."""

    def __init__(self, target: ProbeTarget, config: FinetuneConfig) -> None:
        from overtrain.tasks import load_task

        splits = load_task(config.task, seed=config.seed, max_train=config.max_train, max_heldout=config.max_heldout, data_path=config.data_path)
        check_nonempty(splits.train, "train", config.task)
        check_nonempty(splits.heldout, "heldout", config.task)
        tokenizer = load_tokenizer(target.info.folder)
        eot = target.data.end_of_text_id
        self.pad_id = eot
        self.train = [encode_example(tokenizer, ex.prompt, ex.completion, eot, config.max_len) for ex in splits.train]
        self.heldout = [encode_example(tokenizer, ex.prompt, ex.completion, eot, config.max_len) for ex in splits.heldout]
        self.choice_sets = _encode_choices(tokenizer, splits.heldout, eot, config.max_len)
        self.labels = [ex.label for ex in splits.heldout]

    def measure(self, model: torch.nn.Module, batch_size: int, dtype: str) -> TaskMeasurement:
        sums = completion_losses(model, self.heldout, self.pad_id, batch_size, dtype)
        loss = float(sums[:, 0].sum() / sums[:, 1].sum())  # token-weighted over all held-out completions
        return TaskMeasurement(loss, self._accuracy(model, batch_size, dtype))

    def _accuracy(self, model: torch.nn.Module, batch_size: int, dtype: str) -> float | None:
        if self.choice_sets is None:
            return None
        flat = [encoded for choices in self.choice_sets for encoded in choices]
        sums = completion_losses(model, flat, self.pad_id, batch_size, dtype)
        mean_losses = (sums[:, 0] / sums[:, 1]).tolist()
        correct, position = 0, 0
        for choices, label in zip(self.choice_sets, self.labels):
            scores = mean_losses[position : position + len(choices)]
            position += len(choices)
            correct += int(min(range(len(scores)), key=scores.__getitem__) == label)
        return correct / len(self.choice_sets)


def _encode_choices(tokenizer, heldout, eot: int, max_len: int) -> list[list[EncodedExample]] | None:
    if not all(ex.choices is not None and ex.label is not None for ex in heldout):
        return None
    return [[encode_example(tokenizer, ex.prompt, choice, eot, max_len) for choice in ex.choices] for ex in heldout]


def finetune_in_place(model: torch.nn.Module, task: EncodedTask, config: FinetuneConfig, dtype: str) -> int:
    """Fine-tune ``model`` on ``task.train``; returns the number of completion tokens trained on."""
    model.train()
    device = next(model.parameters()).device
    anchors = [p.detach().clone() for p in model.parameters()] if config.reg_lambda > 0 else None
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay, betas=(0.9, 0.95))
    warmup_steps = round(config.warmup_fraction * config.steps)
    trained_tokens = 0
    for step in range(config.steps):
        for group in optimizer.param_groups:
            group["lr"] = config.lr * lr_multiplier(step, config.steps, warmup_steps, config.schedule, 1.0, 0.0)
        rows = sample_rows(len(task.train), config.batch_size, config.seed, step)
        inputs, targets = pad_batch([task.train[i] for i in rows], task.pad_id)
        with autocast_context(device, dtype):
            logits = logits_of(model, inputs.to(device))
        loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), targets.to(device).flatten(), ignore_index=IGNORE_INDEX)
        if anchors is not None:
            loss = loss + config.reg_lambda * sum(((p - a) ** 2).sum() for p, a in zip(model.parameters(), anchors))
        if not torch.isfinite(loss):
            raise OvertrainError(f"fine-tuning loss became {float(loss)} at step {step} (lr {config.lr:g})", "lower the fine-tuning lr")
        loss.backward()
        if config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        trained_tokens += int((targets != IGNORE_INDEX).sum())
    model.eval()
    return trained_tokens


def run_finetune_probe(target: ProbeTarget, config: FinetuneConfig, task: EncodedTask | None = None) -> FinetuneRecord:
    """Measure, fine-tune, measure again; the checkpoint's weights are restored afterwards."""
    config.validate()
    task = task or EncodedTask(target, config)
    before_id = task.measure(target.model, config.eval_batch_size, target.dtype)
    before_ood = target.pretraining_loss().loss
    try:
        trained_tokens = finetune_in_place(target.model, task, config, target.dtype)
        after_id = task.measure(target.model, config.eval_batch_size, target.dtype)
        after_ood = target.pretraining_loss().loss
    finally:
        target.restore()
    return FinetuneRecord(
        str(target.info.folder), target.tokens_seen, config.task, config.lr, config.seed, config.reg_lambda, config.steps,
        before_id.loss, after_id.loss, before_id.accuracy, after_id.accuracy, before_ood, after_ood, trained_tokens,
    )


def select_tuned(records: Sequence[dict], metric: str = "id_loss_after") -> list[dict]:
    """Per (checkpoint, task, seed, reg_lambda), the record whose LR gives the best ID result."""
    best: dict[tuple, dict] = {}
    higher_is_better = metric.startswith("id_accuracy")
    for record in records:
        key = (record["checkpoint"], record["task"], record["seed"], record["reg_lambda"])
        value = record[metric]
        if value is None:
            continue
        current = best.get(key)
        if current is None or (value > current[metric] if higher_is_better else value < current[metric]):
            best[key] = record
    return list(best.values())
