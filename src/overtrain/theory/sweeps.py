"""The T-sweeps of experiment 6: pre-train for each time T, change the weights, measure both losses.

One pre-training trajectory is integrated once and snapshotted at every T. Each change is then
applied to all snapshots at once, as one batch of networks:

* Gaussian noise of a fixed std per weight (exact expectation, plus draws for the spread), and
* fine-tuning by gradient descent on a finite noisy sample of A_ft, for a fixed number of steps at a
  fixed rate, optionally pulled back by lambda * ||W - W_pre||^2.

Each setting yields the pre-training loss before and after the change for every T (the curves whose
U shape and inflection point the paper reports), and for fine-tuning the loss on the new task.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from overtrain.results.inflection import Inflection, find_inflection
from overtrain.theory.closed_form import aligned_balanced_init, effective_initial_strengths
from overtrain.theory.config import TheoryConfig
from overtrain.theory.dynamics import (
    Weights,
    flow_snapshots,
    geometric_times,
    mode_strengths,
    random_init,
    snap_to_steps,
    stack_weights,
)
from overtrain.theory.targets import LinearTarget, make_finetune_target, make_pretrain_target, population_loss, population_task


@dataclass(frozen=True)
class PretrainRun:
    """What pre-training produced: the network at every T of the sweep, a dense trace of its modes,
    and the two targets."""

    times: np.ndarray
    """Pre-training times T of the sweep, shape (n_T,)."""
    weights: Weights
    """The network pre-trained for each T (from a small random init), batch n_T."""
    pretrain_target: LinearTarget
    """A_pre and its modes."""
    finetune_matrix: np.ndarray
    """A_ft, shape (d_out, d_in)."""
    trace_times: np.ndarray
    """Dense times of the mode trace, shape (n_trace,)."""
    trace_strengths: np.ndarray
    """Mode strengths u_i^T W v_i along the run, (n_trace, 2, r): [:, 0] the random init (the network
    of the sweep), [:, 1] an aligned, balanced init of the same expected strength (closed-form case)."""
    initial_strengths: np.ndarray
    """Effective initial strength of each mode, (2, r): random init (hidden space shared among modes,
    see closed_form.effective_initial_strengths), and a0 of the aligned init."""
    independent_initial_strengths: np.ndarray
    """Random init's |W1 v_i + W2^T u_i|^2 / 4 ignoring the sharing of hidden space, (r,)."""

    def pretrain_losses(self) -> np.ndarray:
        """Population pre-training loss 0.5 ||W - A_pre||^2 at each T, shape (n_T,)."""
        return population_loss(self.weights.product(), self.pretrain_target.matrix)


@dataclass(frozen=True)
class Setting:
    """The effect of one change (one noise std, one rate, one lambda) at every T."""

    label: str
    """Legend text, e.g. ``lr=0.03``."""
    value: float
    """The swept number (std, rate or lambda)."""
    after_loss: np.ndarray
    """Pre-training loss after the change, the curve itself (mean over samples), shape (n_T,)."""
    after_samples: np.ndarray
    """Pre-training loss after the change per sample (noise draw or data seed), (n_samples, n_T)."""
    task_loss: np.ndarray | None = None
    """Fine-tuning: population loss on A_ft after fine-tuning, per sample, (n_samples, n_T)."""
    train_loss: np.ndarray | None = None
    """Fine-tuning: loss on the fine-tuning sample itself (no penalty), per sample, (n_samples, n_T)."""


@dataclass(frozen=True)
class Sweep:
    """One family of curves over T (one figure): several settings of one kind of change."""

    name: str
    """``noise``, ``finetune`` or ``regularized``."""
    parameter: str
    """What ``Setting.value`` is: ``std``, ``lr`` or ``lambda``."""
    times: np.ndarray
    """Pre-training times T, shape (n_T,)."""
    base_loss: np.ndarray
    """Pre-training loss before any change, shape (n_T,)."""
    settings: list[Setting]
    exact: bool = False
    """The curves are exact expectations (the noise's expected loss, or fine-tuning on the population
    loss), with no sampling noise: one curve is a whole answer, and its U needs no test against noise."""

    def inflections(self) -> dict[str, Inflection]:
        """Inflection of each setting's after-change pre-training loss, by label."""
        return {setting.label: self._inflection(setting) for setting in self.settings}

    def _inflection(self, setting: Setting) -> Inflection:
        tolerance = RELATIVE_RISE_TOLERANCE * float(setting.after_loss.min())
        if self.exact:  # their only uncertainty is the grid
            return find_inflection(self.times, setting.after_loss, resampled="exact expectations", tolerance=tolerance, exact=True)
        return find_inflection(self.times, setting.after_samples, resampled="fine-tuning data samples", tolerance=tolerance)


RELATIVE_RISE_TOLERANCE = 1e-3
"""A theory curve is U-shaped only if the longest T is at least 0.1% worse than its minimum."""
TRACE_POINTS_PER_OCTAVE = 16
"""Density of the mode trace; fine enough to read each mode's half-learning time to ~1%."""


def pretrain_times(config: TheoryConfig) -> np.ndarray:
    """The T grid: geometric from time_min to time_max, each a whole number of integration steps."""
    pretrain = config.pretrain
    return snap_to_steps(geometric_times(pretrain.time_min, pretrain.time_max, pretrain.points_per_octave), pretrain.step)


def run_pretraining(config: TheoryConfig, step: float | None = None) -> PretrainRun:
    """Integrate gradient flow on A_pre and snapshot at every T (``step`` overrides the config's).

    Two networks are integrated side by side (a batch costs little more than one network): the
    sweep's network from a small random init, and the aligned, balanced network of the closed form,
    started at a0 = init_scale^2 * hidden_dim / 2, the expected effective strength of the random init.
    """
    network, pretrain = config.network, config.pretrain
    step = step or pretrain.step
    target = make_pretrain_target(network, pretrain)
    random_start, aligned_start, aligned_strength = _starting_networks(config, target)
    sweep_times = snap_to_steps(pretrain_times(config), step)
    trace_times = snap_to_steps(geometric_times(step, pretrain.time_max, TRACE_POINTS_PER_OCTAVE), step)
    all_times = np.union1d(sweep_times, trace_times)
    pair = stack_weights([random_start, aligned_start])
    snapshots = flow_snapshots(pair, population_task(target.matrix), all_times, step, pretrain.method)
    in_sweep = np.isin(all_times, sweep_times)
    sweep_weights = Weights(
        np.stack([snapshot.first[0] for snapshot, keep in zip(snapshots, in_sweep) if keep]),
        np.stack([snapshot.second[0] for snapshot, keep in zip(snapshots, in_sweep) if keep]),
    )
    traced = [snapshot.product() for snapshot, keep in zip(snapshots, np.isin(all_times, trace_times)) if keep]
    strengths = mode_strengths(np.stack(traced), target.left_vectors, target.right_vectors)  # (n_trace, 2, r)
    initial = np.stack(
        [effective_initial_strengths(random_start, target), np.full(len(target.singular_values), aligned_strength)]
    )
    independent = effective_initial_strengths(random_start, target, share_hidden_space=False)
    finetune_matrix = make_finetune_target(target, config.target, network.seed)
    return PretrainRun(sweep_times, sweep_weights, target, finetune_matrix, trace_times, strengths, initial, independent)


def _starting_networks(config: TheoryConfig, target: LinearTarget) -> tuple[Weights, Weights, float]:
    """The random init of the sweep, the aligned balanced init of the closed form, and the latter's a0."""
    network = config.network
    rng = np.random.default_rng([network.seed, 0])
    random_start = random_init(network.input_dim, network.hidden_dim, network.output_dim, network.init_scale, rng)
    aligned_strength = network.init_scale**2 * network.hidden_dim / 2
    aligned_start = aligned_balanced_init(target, network.hidden_dim, aligned_strength, network.seed)
    return random_start, aligned_start, aligned_strength


def noise_sweep(run: PretrainRun, config: TheoryConfig) -> Sweep:
    """Pre-training loss after adding N(0, std^2) to every weight, for each std and T."""
    base = run.pretrain_losses()
    settings = []
    for std in config.noise.stds:
        expected = base + expected_noise_damage(run.weights, std)
        draws = sampled_noise_losses(run, std, config.noise.draws, config.noise.seed)
        settings.append(Setting(f"std={std:g}", std, expected, draws))
    return Sweep("noise", "std", run.times, base, settings, exact=True)


def expected_noise_damage(weights: Weights, std: float) -> np.ndarray:
    """E[L(W + noise)] - L(W) for i.i.d. N(0, std^2) noise on both layers, per network, shape (B,).

    (W2 + E2)(W1 + E1) - W2 W1 = E2 W1 + W2 E1 + E2 E1; its three terms are uncorrelated with each
    other and with the residual, so the expected increase is
    0.5 std^2 (d_out ||W1||^2 + d_in ||W2||^2) + 0.5 std^4 d_out h d_in: linear in the squared weight
    norms. That is why sensitivity grows exactly as fast as pre-training grows the weights.
    """
    hidden_dim, input_dim = weights.first.shape[-2:]
    output_dim = weights.second.shape[-2]
    first_norm = np.sum(weights.first**2, axis=(-2, -1))
    second_norm = np.sum(weights.second**2, axis=(-2, -1))
    linear_term = 0.5 * std**2 * (output_dim * first_norm + input_dim * second_norm)
    return linear_term + 0.5 * std**4 * output_dim * hidden_dim * input_dim


def sampled_noise_losses(run: PretrainRun, std: float, draws: int, seed: int) -> np.ndarray:
    """Pre-training loss after each of ``draws`` noise draws (the same draws at every T), (draws, n_T)."""
    rng = np.random.default_rng([seed, 5])
    first, second = run.weights.first, run.weights.second  # (n_T, h, d_in), (n_T, d_out, h)
    noise_first = std * rng.standard_normal((draws, 1) + first.shape[1:])
    noise_second = std * rng.standard_normal((draws, 1) + second.shape[1:])
    products = (second[None] + noise_second) @ (first[None] + noise_first)  # (draws, n_T, d_out, d_in)
    return population_loss(products, run.pretrain_target.matrix)
