"""Fine-tuning every pre-trained snapshot at once: rates x penalties x times x data seeds in one batch.

Fine-tuning is plain gradient descent (not flow): a fixed rate for a fixed number of steps, as in the
paper's controlled experiments. The sample, its label noise and the number of steps are the same at
every T, so any difference between the curves' points comes from the pre-trained weights alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from overtrain.theory.config import TheoryConfig
from overtrain.theory.dynamics import Penalty, Weights, gradient_descent, gradients, task_loss
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


def on_population(config: TheoryConfig) -> bool:
    """Whether fine-tuning descends the population loss (``target.samples`` 0): its curves are then exact,
    with no data samples to vary."""
    return config.target.samples == 0


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
        Sweep("finetune", "lr", run.times, base, rate_settings, exact=on_population(config)),
        Sweep("regularized", "lambda", run.times, base, lambda_settings, exact=on_population(config)),
    )


def _setting(label: str, value: float, outcome: FinetuneOutcome) -> Setting:
    return Setting(label, value, outcome.pretrain_loss.mean(axis=0), outcome.pretrain_loss, outcome.task_loss, outcome.train_loss)


# --- remedies: replay, LP-FT, WiSE-FT ---------------------------------------------------------------


@dataclass(frozen=True)
class RemedyRun:
    """One fine-tuning recipe of the remedy sweeps, applied to every snapshot and data seed."""

    rate: float
    replay: float = 0.0
    """Mixture weight r of the pre-training loss: the run minimizes (1 - r) L_ft + r L_pre."""
    probe_steps: int = 0
    """Steps on W2 alone before the ``steps`` steps of both layers (LP-FT)."""


def mixed_task(finetune: QuadraticTask, pretrain_matrix: np.ndarray, replay: np.ndarray) -> QuadraticTask:
    """(1 - r) L_ft + r L_pre per network (r shape (B,), finetune batch B): replay as a mixture of the two targets.

    L_pre is the whitened population loss of A_pre (S = I, C = A_pre); at r = 0 the task is L_ft exactly.
    """
    keep = (1.0 - replay).reshape(-1, 1, 1)
    add = replay.reshape(-1, 1, 1)
    cross = keep * finetune.cross_covariance + add * pretrain_matrix
    covariance = None if finetune.input_covariance is None else keep * finetune.input_covariance + add * np.eye(pretrain_matrix.shape[1])
    constant = (1.0 - replay) * np.asarray(finetune.constant) + replay * (0.5 * float(np.sum(pretrain_matrix**2)))
    return QuadraticTask(cross, covariance, constant)


def layerwise_descent(weights: Weights, task: QuadraticTask, first_rates: np.ndarray, second_rates: np.ndarray, steps: int) -> Weights:
    """Gradient descent with one rate per network and layer (a zero rate freezes that layer)."""
    first, second = -first_rates.reshape(-1, 1, 1), -second_rates.reshape(-1, 1, 1)
    for _ in range(steps):
        gradient = gradients(weights, task)
        weights = Weights(weights.first + first * gradient.first, weights.second + second * gradient.second)
    return weights


@dataclass(frozen=True)
class RemedyOutcome:
    outcome: FinetuneOutcome
    weights: Weights
    """The fine-tuned networks, batch (n_T * n_seeds), T-major."""


def finetune_remedies(run: PretrainRun, config: TheoryConfig, recipes: list[RemedyRun]) -> dict[RemedyRun, RemedyOutcome]:
    """Fine-tune every snapshot on every data seed with each recipe, as one batch (recipe, T, seed).

    Replay mixes each network's task with L_pre; LP-FT first runs max(probe_steps) steps in which network b
    moves W2 only during its first probe_steps[b] of them; then ``finetune.steps`` steps of both layers.
    """
    tasks = finetune_tasks(run, config)
    seed_count, time_count, recipe_count = len(tasks.cross_covariance), len(run.times), len(recipes)
    per_recipe = time_count * seed_count
    start = run.weights.repeat(seed_count)
    start = Weights(np.tile(start.first, (recipe_count, 1, 1)), np.tile(start.second, (recipe_count, 1, 1)))
    seed_index = np.tile(np.arange(seed_count), recipe_count * time_count)
    replay = np.repeat([recipe.replay for recipe in recipes], per_recipe).astype(float)
    rates = np.repeat([recipe.rate for recipe in recipes], per_recipe).astype(float)
    probes = np.repeat([recipe.probe_steps for recipe in recipes], per_recipe)
    if np.any(replay > 0):
        batch_task = mixed_task(_per_network(tasks, seed_index), run.pretrain_target.matrix, replay)
    else:
        batch_task = _select(tasks, seed_index)
    weights = start
    for step in range(int(probes.max(initial=0))):
        weights = layerwise_descent(weights, batch_task, np.zeros_like(rates), np.where(step < probes, rates, 0.0), 1)
    weights = gradient_descent(weights, batch_task, rates, config.finetune.steps)
    plain_task = _select(tasks, seed_index)
    products = weights.product()

    def by_recipe(values: np.ndarray) -> np.ndarray:  # (B,) -> (recipes, n_seeds, n_T)
        return values.reshape(recipe_count, time_count, seed_count).transpose(0, 2, 1)

    pretrain_loss = by_recipe(population_loss(products, run.pretrain_target.matrix))
    new_task_loss = by_recipe(population_loss(products, run.finetune_matrix))
    train_loss = by_recipe(task_loss(weights, plain_task))
    return {
        recipe: RemedyOutcome(
            FinetuneOutcome(pretrain_loss[i], new_task_loss[i], train_loss[i]),
            Weights(weights.first[i * per_recipe : (i + 1) * per_recipe], weights.second[i * per_recipe : (i + 1) * per_recipe]),
        )
        for i, recipe in enumerate(recipes)
    }


def _per_network(tasks: QuadraticTask, seed_index: np.ndarray) -> QuadraticTask:
    """The task of every network as explicit (B, ...) arrays (a mixture differs per network)."""
    covariance = None if tasks.input_covariance is None else tasks.input_covariance[seed_index]
    return QuadraticTask(tasks.cross_covariance[seed_index], covariance, np.asarray(tasks.constant)[seed_index])


def interpolate_weights(pre: Weights, tuned: Weights, alpha: float) -> Weights:
    """WiSE-FT: (1 - alpha) pre + alpha tuned, layer by layer (alpha 0 and 1 give the endpoints exactly)."""
    return Weights((1.0 - alpha) * pre.first + alpha * tuned.first, (1.0 - alpha) * pre.second + alpha * tuned.second)


def wise_outcome(run: PretrainRun, config: TheoryConfig, tuned: Weights, alpha: float) -> FinetuneOutcome:
    """Losses of the interpolated networks (no training), each (n_seeds, n_T)."""
    tasks = finetune_tasks(run, config)
    seed_count, time_count = len(tasks.cross_covariance), len(run.times)
    pre = run.weights.repeat(seed_count)
    mixed = interpolate_weights(pre, tuned, alpha)
    products = mixed.product()

    def shaped(values: np.ndarray) -> np.ndarray:
        return values.reshape(time_count, seed_count).T

    plain_task = _select(tasks, np.tile(np.arange(seed_count), time_count))
    return FinetuneOutcome(
        shaped(population_loss(products, run.pretrain_target.matrix)),
        shaped(population_loss(products, run.finetune_matrix)),
        shaped(task_loss(mixed, plain_task)),
    )


def remedy_sweeps(run: PretrainRun, config: TheoryConfig) -> dict[str, Sweep]:
    """Replay fractions, LP-FT probe lengths and WiSE-FT alphas at ``remedy_lr``, sharing one batch."""
    finetune = config.finetune
    rate = finetune.remedy_lr
    replay_recipes = [RemedyRun(rate, replay=fraction) for fraction in finetune.replay_fractions]
    probe_recipes = [RemedyRun(rate, probe_steps=steps) for steps in finetune.probe_steps]
    plain = RemedyRun(rate)
    outcomes = finetune_remedies(run, config, list(dict.fromkeys(replay_recipes + probe_recipes + [plain])))
    base = run.pretrain_losses()
    wise = [_setting(f"alpha={alpha:g}", alpha, wise_outcome(run, config, outcomes[plain].weights, alpha)) for alpha in finetune.wise_alphas]
    return {
        "replay": Sweep("replay", "replay", run.times, base,
                        [_setting(f"replay={r.replay:g}", r.replay, outcomes[r].outcome) for r in replay_recipes], exact=on_population(config)),
        "lpft": Sweep("lpft", "probe_steps", run.times, base,
                      [_setting(f"probe={r.probe_steps}", r.probe_steps, outcomes[r].outcome) for r in probe_recipes],
                      exact=on_population(config)),
        "wise": Sweep("wise", "alpha", run.times, base, wise, exact=on_population(config)),
    }
