"""Linear targets and the quadratic losses they define.

With whitened inputs the population loss of a linear map W against a target A is 0.5 * ||W - A||_F^2.
A finite sample (X, Y) gives the same kind of loss with the sample covariance in place of the identity:
0.5 * mean ||W x - y||^2 = 0.5 tr(W S W^T) - tr(W C^T) + 0.5 mean ||y||^2, S = X^T X / n, C = Y^T X / n.
:class:`QuadraticTask` holds (S, C, constant), so one gradient formula serves both cases.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from overtrain.theory.config import NetworkConfig, PretrainConfig, TargetConfig


@dataclass(frozen=True)
class LinearTarget:
    """A target map A = U diag(s) V^T with its factors kept (the modes the network learns)."""

    matrix: np.ndarray
    """A, shape (d_out, d_in)."""
    left_vectors: np.ndarray
    """U, shape (d_out, r): column i is the output direction of mode i."""
    singular_values: np.ndarray
    """s, shape (r,), decreasing."""
    right_vectors: np.ndarray
    """V, shape (d_in, r): column i is the input direction of mode i."""


@dataclass(frozen=True)
class QuadraticTask:
    """A batch of losses 0.5 tr(W S W^T) - tr(W C^T) + constant over product maps W (d_out, d_in).

    ``input_covariance`` is None for whitened population data (S = I), which is also the fast path.
    """

    cross_covariance: np.ndarray
    """C, shape (B, d_out, d_in) or (d_out, d_in): E[y x^T]."""
    input_covariance: np.ndarray | None
    """S, shape (B, d_in, d_in) or None for the identity: E[x x^T]."""
    constant: np.ndarray | float
    """0.5 E||y||^2, shape (B,) or scalar, so that the loss of W = 0 is 0.5 E||y||^2."""


def geometric_spectrum(config: PretrainConfig, max_rank: int) -> np.ndarray:
    """Singular values s_i = top * ratio**i, i < rank (rank 0 = max_rank); shape (rank,)."""
    rank = config.rank or max_rank
    return config.spectrum_top * config.spectrum_ratio ** np.arange(rank, dtype=float)


def random_orthonormal(rows: int, columns: int, rng: np.random.Generator) -> np.ndarray:
    """A (rows, columns) matrix with orthonormal columns, Haar-distributed."""
    q, r = np.linalg.qr(rng.standard_normal((rows, columns)))
    return q * np.sign(np.diag(r))  # the sign fix makes the distribution uniform (Haar)


def make_pretrain_target(network: NetworkConfig, pretrain: PretrainConfig) -> LinearTarget:
    """A_pre with the configured spectrum and random singular vectors (seeded by network.seed)."""
    rng = np.random.default_rng([network.seed, 1])
    full_rank = min(network.input_dim, network.output_dim)
    left = random_orthonormal(network.output_dim, full_rank, rng)  # (d_out, full_rank)
    right = random_orthonormal(network.input_dim, full_rank, rng)  # (d_in, full_rank)
    values = geometric_spectrum(pretrain, full_rank)
    rank = len(values)
    return LinearTarget((left[:, :rank] * values) @ right[:, :rank].T, left[:, :rank], values, right[:, :rank])


def make_finetune_target(pretrain_target: LinearTarget, target: TargetConfig, seed: int) -> np.ndarray:
    """A_ft = pretrain_weight * A_pre + B, shape (d_out, d_in).

    B has ``added_rank`` directions of singular value ``added_scale``. Its singular vectors are
    cos(angle) * (top pre-training vectors) + sin(angle) * (random vectors orthogonal to them), so the
    angle turns B from a change of the top singular values (0 deg) into a map along directions the
    pre-trained network has learned least (90 deg: mixtures of the small, late modes).
    """
    rng = np.random.default_rng([seed, 2])
    angle = np.deg2rad(target.rotation_deg)
    left = _rotated_directions(_complete_basis(pretrain_target.left_vectors), target.added_rank, angle, rng)
    right = _rotated_directions(_complete_basis(pretrain_target.right_vectors), target.added_rank, angle, rng)
    added_map = target.added_scale * left @ right.T  # (d_out, d_in)
    return target.pretrain_weight * pretrain_target.matrix + added_map


def _complete_basis(vectors: np.ndarray) -> np.ndarray:
    """An orthonormal basis of the whole space whose first columns are ``vectors`` (dim, rank)."""
    dim, rank = vectors.shape
    if rank == dim:
        return vectors
    projector_out = np.eye(dim) - vectors @ vectors.T
    complement, _, _ = np.linalg.svd(projector_out)
    return np.concatenate([vectors, complement[:, : dim - rank]], axis=1)


def _rotated_directions(basis: np.ndarray, count: int, angle: float, rng: np.random.Generator) -> np.ndarray:
    """``count`` orthonormal vectors at ``angle`` from the first ``count`` basis vectors; (dim, count)."""
    top = basis[:, :count]
    rest = basis[:, count:]  # (dim, dim - count): everything orthogonal to the top directions
    if count == 0 or np.isclose(np.sin(angle), 0.0):
        return top
    mixing = random_orthonormal(rest.shape[1], count, rng)  # random orthonormal mixtures of the rest
    return np.cos(angle) * top + np.sin(angle) * rest @ mixing


def population_task(target_matrix: np.ndarray) -> QuadraticTask:
    """The whitened population loss 0.5 ||W - A||^2 of target A (d_out, d_in)."""
    return QuadraticTask(target_matrix, None, 0.5 * float(np.sum(target_matrix**2)))


def sampled_tasks(target_matrix: np.ndarray, samples: int, label_noise: float, seeds: list[int]) -> QuadraticTask:
    """One finite-sample task per seed: x ~ N(0, I), y = A x + label_noise * N(0, I); batch = len(seeds)."""
    output_dim, input_dim = target_matrix.shape
    covariances, crosses, constants = [], [], []
    for seed in seeds:
        rng = np.random.default_rng([seed, 3])
        inputs = rng.standard_normal((samples, input_dim))  # (n, d_in)
        outputs = inputs @ target_matrix.T + label_noise * rng.standard_normal((samples, output_dim))  # (n, d_out)
        covariances.append(inputs.T @ inputs / samples)
        crosses.append(outputs.T @ inputs / samples)
        constants.append(0.5 * float(np.mean(np.sum(outputs**2, axis=1))))
    return QuadraticTask(np.stack(crosses), np.stack(covariances), np.array(constants))


def population_loss(product: np.ndarray, target_matrix: np.ndarray) -> np.ndarray:
    """0.5 ||W - A||_F^2 for a batch of products (..., d_out, d_in); shape (...)."""
    return 0.5 * np.sum((product - target_matrix) ** 2, axis=(-2, -1))
