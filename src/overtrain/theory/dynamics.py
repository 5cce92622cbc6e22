"""A batch of two-layer linear networks f(x) = W2 W1 x and their gradient dynamics.

Every array carries a leading batch axis B (one network per setting), so a sweep over pre-training
times, fine-tuning rates, penalties and data seeds is a handful of batched matmuls per step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from overtrain.theory.targets import QuadraticTask


@dataclass(frozen=True)
class Weights:
    """The two layers of B networks."""

    first: np.ndarray
    """W1, shape (B, h, d_in); a single network may drop the batch axis, (h, d_in)."""
    second: np.ndarray
    """W2, shape (B, d_out, h), or (d_out, h) for a single network."""

    def product(self) -> np.ndarray:
        """The end-to-end map W = W2 W1, shape (B, d_out, d_in) or (d_out, d_in)."""
        return self.second @ self.first

    def combine(self, other: Weights, scale: float | np.ndarray) -> Weights:
        """self + scale * other (scale a scalar or one value per network, shape (B,))."""
        factor = np.reshape(scale, (-1, 1, 1)) if np.ndim(scale) else scale
        return Weights(self.first + factor * other.first, self.second + factor * other.second)

    def repeat(self, copies: int) -> Weights:
        """Each network ``copies`` times in a row: batch B -> B * copies."""
        return Weights(np.repeat(self.first, copies, axis=0), np.repeat(self.second, copies, axis=0))

    def squared_norm(self) -> np.ndarray:
        """||W1||_F^2 + ||W2||_F^2 per network, shape (B,)."""
        return np.sum(self.first**2, axis=(-2, -1)) + np.sum(self.second**2, axis=(-2, -1))

    def batched(self) -> Weights:
        """The same networks with an explicit batch axis (a single network becomes a batch of one)."""
        return self if self.first.ndim == 3 else Weights(self.first[None], self.second[None])


def stack_weights(parts: list[Weights]) -> Weights:
    """Concatenate networks (batched or single) along the batch axis."""
    batched = [part.batched() for part in parts]
    return Weights(np.concatenate([part.first for part in batched]), np.concatenate([part.second for part in batched]))


def random_init(input_dim: int, hidden_dim: int, output_dim: int, init_scale: float, rng: np.random.Generator) -> Weights:
    """One network (no batch axis) with i.i.d. N(0, init_scale^2) weights."""
    first = init_scale * rng.standard_normal((hidden_dim, input_dim))
    second = init_scale * rng.standard_normal((output_dim, hidden_dim))
    return Weights(first, second)


@dataclass(frozen=True)
class Penalty:
    """lambda * ||W - W_anchor||^2 summed over both layers, one lambda per network."""

    anchor: Weights
    """W_pre, the weights fine-tuning starts from, batch B."""
    strengths: np.ndarray
    """lambda, shape (B,)."""


def gradients(weights: Weights, task: QuadraticTask, penalty: Penalty | None = None) -> Weights:
    """Gradient of the task loss (+ penalty) with respect to both layers, batch B."""
    residual = weights.product()  # (B, d_out, d_in): dLoss/dW = W S - C
    if task.input_covariance is not None:
        residual = residual @ task.input_covariance
    residual = residual - task.cross_covariance
    gradient = Weights(
        np.swapaxes(weights.second, -1, -2) @ residual,  # (B, h, d_in) = W2^T (dL/dW)
        residual @ np.swapaxes(weights.first, -1, -2),  # (B, d_out, h) = (dL/dW) W1^T
    )
    if penalty is None:
        return gradient
    twice_lambda = 2.0 * penalty.strengths.reshape(-1, 1, 1)
    return Weights(
        gradient.first + twice_lambda * (weights.first - penalty.anchor.first),
        gradient.second + twice_lambda * (weights.second - penalty.anchor.second),
    )


def task_loss(weights: Weights, task: QuadraticTask) -> np.ndarray:
    """0.5 tr(W S W^T) - tr(W C^T) + constant per network, shape (B,)."""
    product = weights.product()
    shaped = product if task.input_covariance is None else product @ task.input_covariance
    quadratic = 0.5 * np.sum(shaped * product, axis=(-2, -1))
    return quadratic - np.sum(product * task.cross_covariance, axis=(-2, -1)) + task.constant


def gradient_descent(
    weights: Weights, task: QuadraticTask, rates: np.ndarray | float, steps: int, penalty: Penalty | None = None
) -> Weights:
    """``steps`` plain gradient-descent steps, one rate per network (shape (B,)) or one for all."""
    negative_rates = -np.asarray(rates, dtype=float)
    for _ in range(steps):
        weights = weights.combine(gradients(weights, task, penalty), negative_rates)
    return weights


def _runge_kutta_step(weights: Weights, task: QuadraticTask, step: float) -> Weights:
    """One classic RK4 step of gradient flow dW/dt = -grad L(W)."""
    k1 = gradients(weights, task)
    k2 = gradients(weights.combine(k1, -step / 2), task)
    k3 = gradients(weights.combine(k2, -step / 2), task)
    k4 = gradients(weights.combine(k3, -step), task)
    update = k1.combine(k2, 2.0).combine(k3, 2.0).combine(k4, 1.0)
    return weights.combine(update, -step / 6)


Method = Literal["rk4", "gd"]


def flow_snapshots(weights: Weights, task: QuadraticTask, times: np.ndarray, step: float, method: Method) -> list[Weights]:
    """Integrate gradient flow from time 0 and return the weights at each of ``times`` (increasing).

    Each time must be a whole number of steps (see :func:`snap_to_steps`); "gd" is the explicit Euler
    rule, i.e. gradient descent with learning rate ``step``.
    """
    step_counts = np.rint(np.asarray(times) / step).astype(int)
    if np.any(np.abs(step_counts * step - times) > 1e-9 * np.maximum(1.0, times)):
        raise ValueError("flow_snapshots: every time must be a whole number of steps; use snap_to_steps")
    snapshots, done = [], 0
    for count in step_counts:
        for _ in range(count - done):
            if method == "rk4":
                weights = _runge_kutta_step(weights, task, step)
            else:
                weights = weights.combine(gradients(weights, task), -step)
        done = count
        snapshots.append(weights)
    return snapshots


def snap_to_steps(times: np.ndarray, step: float) -> np.ndarray:
    """Round each time to a whole, nonzero number of steps (and drop duplicates), keeping the order."""
    counts = np.unique(np.maximum(1, np.rint(np.asarray(times) / step).astype(int)))
    return counts * step


def geometric_times(time_min: float, time_max: float, points_per_octave: int) -> np.ndarray:
    """time_min * 2**(k / points_per_octave) up to time_max (inclusive within rounding)."""
    octaves = np.log2(time_max / time_min)
    count = int(np.floor(octaves * points_per_octave + 1e-9)) + 1
    return time_min * 2.0 ** (np.arange(count) / points_per_octave)


def mode_strengths(products: np.ndarray, left_vectors: np.ndarray, right_vectors: np.ndarray) -> np.ndarray:
    """a_i = u_i^T W v_i for each network and mode: (..., d_out, d_in) -> (..., r)."""
    return np.sum((np.swapaxes(left_vectors, 0, 1) @ products) * right_vectors.T, axis=-1)
