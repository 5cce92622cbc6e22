"""Fine-tuning every pre-trained snapshot at once: rates x penalties x times x data seeds in one batch.

Fine-tuning is plain gradient descent (not flow): a fixed rate for a fixed number of steps, as in the
paper's controlled experiments. The sample, its label noise and the number of steps are the same at
every T, so any difference between the curves' points comes from the pre-trained weights alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from overtrain.theory.config import TheoryConfig
from overtrain.theory.dynamics import Penalty, Weights, gradient_descent, task_loss
from overtrain.theory.sweeps import PretrainRun, Setting, Sweep
from overtrain.theory.targets import QuadraticTask, population_loss, population_task, sampled_tasks


@dataclass(frozen=True)
class FinetuneOutcome:
    """Losses after one (rate, lambda) fine-tuning of every snapshot, each (n_seeds, n_T)."""

    pretrain_loss: np.ndarray
    """Population loss on A_pre after fine-tuning (forgetting shows here)."""
    task_loss: np.ndarray
    """Population loss on A_ft after fine-tuning (how well the new task was learned)."""
    train_loss: np.ndarray
    """Loss on the fine-tuning sample itself, without the penalty (what fine-tuning minimizes)."""


def finetune_tasks(run: PretrainRun, config: TheoryConfig) -> QuadraticTask:
    """The fine-tuning losses, one per data seed (batch n_seeds); the population loss when samples = 0."""
    target = config.target
    if target.samples == 0:
        task = population_task(run.finetune_matrix)
        return QuadraticTask(task.cross_covariance[None], None, np.array([task.constant]))
    seeds = [target.data_seed + index for index in range(target.data_seeds)]
    return sampled_tasks(run.finetune_matrix, target.samples, target.label_noise, seeds)


def finetune_all(
    run: PretrainRun, config: TheoryConfig, pairs: list[tuple[float, float]]
) -> dict[tuple[float, float], FinetuneOutcome]:
    """Fine-tune every snapshot on every data seed for each (rate, lambda) pair, as one batch.

    Batch layout: (pair, T, seed), flattened; B = len(pairs) * n_T * n_seeds networks.
    """
    tasks = finetune_tasks(run, config)
    seed_count, time_count, pair_count = len(tasks.cross_covariance), len(run.times), len(pairs)
    start = run.weights.repeat(seed_count)  # (n_T * n_seeds): each snapshot once per seed
    start = Weights(np.tile(start.first, (pair_count, 1, 1)), np.tile(start.second, (pair_count, 1, 1)))
    seed_index = np.tile(np.arange(seed_count), pair_count * time_count)  # (B,)
    batch_task = _select(tasks, seed_index)
    per_network = time_count * seed_count
    rates = np.repeat([rate for rate, _ in pairs], per_network)  # (B,)
    strengths = np.repeat([strength for _, strength in pairs], per_network)  # (B,)
    penalty = Penalty(start, strengths) if np.any(strengths > 0) else None
    tuned = gradient_descent(start, batch_task, rates, config.finetune.steps, penalty)

    def by_pair(values: np.ndarray) -> np.ndarray:  # (B,) -> (pairs, n_seeds, n_T)
        return values.reshape(pair_count, time_count, seed_count).transpose(0, 2, 1)

    products = tuned.product()
    pretrain_loss = by_pair(population_loss(products, run.pretrain_target.matrix))
    new_task_loss = by_pair(population_loss(products, run.finetune_matrix))
    train_loss = by_pair(task_loss(tuned, batch_task))
    return {pair: FinetuneOutcome(pretrain_loss[i], new_task_loss[i], train_loss[i]) for i, pair in enumerate(pairs)}


def _select(tasks: QuadraticTask, seed_index: np.ndarray) -> QuadraticTask:
    """The task of each network in the batch: seed ``seed_index[b]`` for network b."""
    if len(tasks.cross_covariance) == 1:  # one task for all: let it broadcast instead of copying it B times
        covariance = None if tasks.input_covariance is None else tasks.input_covariance[0]
        return QuadraticTask(tasks.cross_covariance[0], covariance, float(np.asarray(tasks.constant)[0]))
    covariance = None if tasks.input_covariance is None else tasks.input_covariance[seed_index]
    return QuadraticTask(tasks.cross_covariance[seed_index], covariance, np.asarray(tasks.constant)[seed_index])


def finetune_sweeps(run: PretrainRun, config: TheoryConfig) -> tuple[Sweep, Sweep]:
    """The rate sweep (no penalty) and the lambda sweep (at ``lambda_lr``), sharing one batch."""
    finetune = config.finetune
    rate_pairs = [(rate, 0.0) for rate in finetune.lrs]
    lambda_pairs = [(finetune.lambda_lr, strength) for strength in finetune.lambdas]
    outcomes = finetune_all(run, config, list(dict.fromkeys(rate_pairs + lambda_pairs)))
    base = run.pretrain_losses()
    rate_settings = [_setting(f"lr={rate:g}", rate, outcomes[(rate, 0.0)]) for rate, _ in rate_pairs]
    lambda_settings = [_setting(f"lambda={strength:g}", strength, outcomes[(rate, strength)]) for rate, strength in lambda_pairs]
    return (
        Sweep("finetune", "lr", run.times, base, rate_settings),
        Sweep("regularized", "lambda", run.times, base, lambda_settings),
    )


def _setting(label: str, value: float, outcome: FinetuneOutcome) -> Setting:
    return Setting(label, value, outcome.pretrain_loss.mean(axis=0), outcome.pretrain_loss, outcome.task_loss, outcome.train_loss)
