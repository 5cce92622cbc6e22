"""The closed-form anchor: Saxe, McClelland and Ganguli (2014) for two-layer linear networks.

When the network starts *aligned* with the target's singular vectors and *balanced* (both layers carry
sqrt(a) of mode strength a), each mode evolves on its own:

    da/dt = 2 a (s - a)   =>   a(t) = s / (1 + (s / a0 - 1) exp(-2 s t)),

a sigmoid that reaches s/2 at t_half = ln(s / a0 - 1) / (2 s) ~ ln(s / a0) / (2 s): the larger s, the
earlier the mode is learned (incremental learning). From a small *random* initialization the same law
holds after a short alignment phase, with a0 replaced by the mode's effective initial strength
|W1 v + W2^T u|^2 / 4 (the part of the initial weights that the growing direction starts from).
"""

from __future__ import annotations

import numpy as np

from overtrain.theory.dynamics import Weights
from overtrain.theory.targets import LinearTarget, random_orthonormal


def sigmoid_mode_strength(times: np.ndarray, singular_values: np.ndarray, initial_strengths: np.ndarray) -> np.ndarray:
    """a_i(t) of the closed form for each time and mode: (n_times,), (r,), (r,) -> (n_times, r)."""
    times = np.asarray(times, dtype=float)[:, None]
    s, a0 = np.asarray(singular_values)[None, :], np.asarray(initial_strengths)[None, :]
    return s / (1.0 + (s / a0 - 1.0) * np.exp(-2.0 * s * times))


def half_learning_time(singular_values: np.ndarray, initial_strengths: np.ndarray) -> np.ndarray:
    """Time at which the closed-form strength reaches s/2: ln(s / a0 - 1) / (2 s), shape (r,).

    inf for a mode that starts at a0 = 0 (it never grows); NaN when a0 >= s / 2 (already there).
    """
    s, a0 = np.asarray(singular_values, dtype=float), np.asarray(initial_strengths, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        times = np.log(s / a0 - 1.0) / (2.0 * s)
    return np.where(a0 >= s / 2, np.nan, times)


def aligned_balanced_init(target: LinearTarget, hidden_dim: int, initial_strength: float, seed: int) -> Weights:
    """W1 = sqrt(a0) R V^T, W2 = sqrt(a0) U R^T with a random orthonormal hidden basis R; one network.

    Each mode needs its own hidden direction, so only the first min(hidden_dim, rank) modes start
    at a0; the others start at exactly zero and stay there (a saddle of the flow).
    """
    modes = min(hidden_dim, len(target.singular_values))
    hidden_basis = random_orthonormal(hidden_dim, modes, np.random.default_rng([seed, 4]))  # (h, modes)
    root = np.sqrt(initial_strength)
    first = root * hidden_basis @ target.right_vectors[:, :modes].T  # (h, d_in)
    second = root * target.left_vectors[:, :modes] @ hidden_basis.T  # (d_out, h)
    return Weights(first, second)


def effective_initial_strengths(weights: Weights, target: LinearTarget, share_hidden_space: bool = True) -> np.ndarray:
    """Effective a0 of each mode of one randomly initialized network, shape (r,).

    Early on (W2 W1 ~ 0) the flow grows z_i = W1 v_i + W2^T u_i (a hidden-space vector) as exp(s_i t)
    and shrinks W1 v_i - W2^T u_i, so the strength u_i^T W2 W1 v_i becomes |z_i|^2 / 4 * exp(2 s_i t).
    With ``share_hidden_space`` the larger modes, learned first, are accounted for: once mode j is
    learned, W2^T W2 ~ sum_j s_j r_j r_j^T damps the part of z_i along its hidden direction r_j, so
    mode i grows only from the part of z_i orthogonal to the z_j of all larger modes (Gram-Schmidt in
    order of decreasing s). Modes beyond the hidden width find no free direction: a0 = 0.
    """
    hidden_vectors = weights.first @ target.right_vectors + weights.second.T @ target.left_vectors  # (h, r)
    if not share_hidden_space:
        return np.sum(hidden_vectors**2, axis=0) / 4.0
    modes = min(hidden_vectors.shape)
    strengths = np.zeros(hidden_vectors.shape[1])
    _, triangular = np.linalg.qr(hidden_vectors[:, :modes])  # R[i, i] = |part of z_i orthogonal to z_<i|
    strengths[:modes] = np.diag(triangular) ** 2 / 4.0
    return strengths


def crossing_times(times: np.ndarray, strengths: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """First time each column of ``strengths`` (n_times, r) reaches its level (r,); NaN if never.

    Linear interpolation between the two samples around the crossing.
    """
    result = np.full(strengths.shape[1], np.nan)
    for mode, level in enumerate(levels):
        above = np.nonzero(strengths[:, mode] >= level)[0]
        if len(above) == 0 or above[0] == 0:
            continue
        after, before = above[0], above[0] - 1
        fraction = (level - strengths[before, mode]) / (strengths[after, mode] - strengths[before, mode])
        result[mode] = times[before] + fraction * (times[after] - times[before])
    return result
