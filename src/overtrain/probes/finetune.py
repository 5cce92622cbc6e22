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

import math
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
    chat_segments,
    chat_template_of,
    check_nonempty,
    completion_losses,
    encode_example,
    encode_segments,
    pad_batch,
    sample_rows,
    special_tokens_of,
)


@dataclass
class FinetuneConfig:
    """Hyper-parameters of one fine-tuning run; the same for every checkpoint of a ladder."""

    task: str = "python-code"
    """A name from ``overtrain tasks`` (offline: python-code, gsm-symbolic, wordnet-class, kjv-to-web), or
    ``file:PATH`` for your own JSONL (prompt/completion, chat messages or plain text; docs/tasks.md)."""
    lr: float = 1e-3
    """Peak learning rate (> 0)."""
    steps: int = 100
    """Optimizer steps (>= 1)."""
    batch_size: int = 16
    """Examples per step (>= 1)."""
    warmup_fraction: float = 0.1
    """Share of the steps spent in linear warmup, in [0, 1)."""
    schedule: str = "cosine"
    """cosine | linear | constant (cosine and linear anneal to zero at the last step)."""
    weight_decay: float = 0.0
    """AdamW decoupled weight decay (>= 0)."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this value; 0 disables clipping."""
    seed: int = 0
    """Seeds the order of fine-tuning batches (the held-out split never depends on it)."""
    reg_lambda: float = 0.0
    """Weight of the L2 pull toward the pre-trained weights, lambda * ||theta - theta_0||^2 (>= 0; 0 disables it)."""
    max_train: int | None = 2000
    """Train examples kept (after the seeded shuffle); null keeps all."""
    max_heldout: int | None = 200
    """Held-out examples scored before and after; null keeps all."""
    max_len: int = 256
    """Longest fine-tuning sequence in tokens, >= 2 (the prompt is cut from the left beyond it)."""
    data_path: str | None = None
    """Local copy of a Hub task (same schema), for machines without network."""
    eval_batch_size: int = 32
    """Sequences per forward pass when scoring (memory only; results do not depend on it)."""

    def validate(self) -> None:
        """Raise one :class:`OvertrainError` naming every invalid setting (the task name included)."""
        problems = SettingProblems()
        self.collect_problems(problems, prefix="")
        problems.raise_if_any()

    def collect_problems(self, problems: SettingProblems, prefix: str) -> None:
        """Add every invalid setting to ``problems``, keys written as ``prefix + name``."""
        need = problems.require
        need(_finite(self.lr) and self.lr > 0, f"{prefix}lr", self.lr, "a learning rate > 0, e.g. lrs=[1e-4,1e-3]")
        need(self.steps >= 1, f"{prefix}steps", self.steps, "a whole number >= 1")
        need(self.batch_size >= 1, f"{prefix}batch_size", self.batch_size, "a whole number >= 1")
        need(_finite(self.warmup_fraction) and 0 <= self.warmup_fraction < 1, f"{prefix}warmup_fraction", self.warmup_fraction,
             "a fraction in [0, 1), e.g. 0.1")
        need(self.schedule in SCHEDULES, f"{prefix}schedule", self.schedule, " | ".join(SCHEDULES))
        need(_finite(self.weight_decay) and self.weight_decay >= 0, f"{prefix}weight_decay", self.weight_decay, "a number >= 0")
        need(_finite(self.grad_clip) and self.grad_clip >= 0, f"{prefix}grad_clip", self.grad_clip, "a number >= 0 (0 disables clipping)")
        need(self.seed >= 0, f"{prefix}seed", self.seed, "a whole number >= 0")
        need(_finite(self.reg_lambda) and self.reg_lambda >= 0, f"{prefix}reg_lambda", self.reg_lambda, "a number >= 0 (0 disables the pull)")
        for name in ("max_train", "max_heldout"):
            value = getattr(self, name)
            need(value is None or value >= 1, f"{prefix}{name}", value, "a whole number >= 1, or null for all examples")
        need(self.max_len >= 2, f"{prefix}max_len", self.max_len,
             "a sequence length >= 2 tokens (one to read, one to predict), e.g. 256")
        need(self.eval_batch_size >= 1, f"{prefix}eval_batch_size", self.eval_batch_size, "a whole number >= 1")
        try:
            check_task_name(self.task)
        except OvertrainError as error:
            problems.add_text(f"{prefix}task: {error.problem}", error.fix or "")


SCHEDULES = ("cosine", "linear", "constant")


def _finite(value: float) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def check_task_name(task: str) -> None:
    """A known task name, or ``file:PATH`` naming a readable file; raises otherwise (no data is read)."""
    from overtrain.tasks import task_info
    from overtrain.tasks.user_file import FILE_PREFIX, check_task_file

    if str(task).startswith(FILE_PREFIX):
        check_task_file(task)
    else:
        task_info(task)


class SettingProblems:
    """Collects every invalid setting so that one error names them all."""

    def __init__(self) -> None:
        self.messages: list[str] = []
        self.fixes: list[str] = []

    def require(self, condition: bool, key: str, value: object, allowed: str) -> None:
        if not condition:
            self.add_text(f"{key}={value!r} is invalid", f"{key}: use {allowed}")

    def add_text(self, message: str, fix: str) -> None:
        if message not in self.messages:
            self.messages.append(message)
            self.fixes.append(fix)

    def raise_if_any(self) -> None:
        if len(self.messages) == 1:
            raise OvertrainError(self.messages[0], self.fixes[0])
        if self.messages:
            listed = "".join(f"\n  - {message}" for message in self.messages)
            raise OvertrainError(f"{len(self.messages)} invalid settings:{listed}", "; ".join(fix for fix in self.fixes if fix))


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
        encode = _example_encoder(tokenizer, target.info.folder, eot, config.max_len)
        self.train = [encode(ex) for ex in splits.train]
        self.heldout = [encode(ex) for ex in splits.heldout]
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


def _example_encoder(tokenizer, folder, eot: int, max_len: int):
    """Prompt/completion examples as before; chat examples through the folder's chat template (if any)."""
    template = chat_template_of(folder)
    special = special_tokens_of(folder)

    def encode(example) -> EncodedExample:
        if example.messages is None:
            return encode_example(tokenizer, example.prompt, example.completion, eot, max_len)
        segments = chat_segments(example.messages, template, special)
        return encode_segments(tokenizer, segments, None if template else eot, max_len)

    return encode


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
        if not bool((targets != IGNORE_INDEX).any()):
            raise OvertrainError(f"fine-tuning batch {step} has no completion tokens to train on", "raise max_len, or check the task's completions")
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
