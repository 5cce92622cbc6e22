"""Settings of the theory simulator: one typed tree, every dimension, spectrum, rate and time a field.

The defaults are the setting where every claim of experiment 6 holds (docs/theory.md shows each claim
and the parameters where it stops holding). Times are gradient-flow times: ``time = steps x step``, in
units of the inverse learning rate; the pre-training time ``T`` plays the role of pre-training tokens.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

from overtrain.errors import OvertrainError


@dataclass
class NetworkConfig:
    """The two-layer linear network f(x) = W2 W1 x and its initialization."""

    input_dim: int = 32
    """d_in: input dimension; inputs are whitened (E[x x^T] = I), so population losses are Frobenius norms."""
    hidden_dim: int = 32
    """h: hidden width (rows of W1, columns of W2)."""
    output_dim: int = 32
    """d_out: output dimension."""
    init_scale: float = 1e-3
    """Standard deviation of every initial weight; small, so that modes are learned one at a time."""
    seed: int = 0
    """Seed of the initial weights and of the random singular vectors of the targets."""


@dataclass
class PretrainConfig:
    """The pre-training target A_pre and the integration of gradient flow on it."""

    spectrum_top: float = 4.0
    """Largest singular value s_0 of A_pre."""
    spectrum_ratio: float = 0.7
    """Geometric spectrum s_i = spectrum_top * spectrum_ratio**i; values in (0, 1) give distinct values."""
    rank: int = 0
    """Number of nonzero singular values of A_pre; 0 means full rank, min(input_dim, output_dim)."""
    method: Literal["rk4", "gd"] = "rk4"
    """Integrator of gradient flow: classic Runge-Kutta 4 ("rk4"), or plain gradient descent ("gd")."""
    step: float = 0.1
    """Integration step, in time units (for "gd" this is the learning rate)."""
    time_min: float = 1.0
    """Shortest pre-training time T of the sweep."""
    time_max: float = 512.0
    """Longest pre-training time T of the sweep."""
    points_per_octave: int = 4
    """Pre-training times per doubling of T (the sweep is geometric, like token budgets)."""


@dataclass
class TargetConfig:
    """The fine-tuning target A_ft = pretrain_weight * A_pre + B, and the sample it is learned from."""

    pretrain_weight: float = 1.0
    """How much of A_pre A_ft keeps: 1 shares every pre-training direction, 0 drops them all."""
    added_rank: int = 2
    """Rank of the new map B."""
    added_scale: float = 1.0
    """Singular value of each direction of B."""
    rotation_deg: float = 90.0
    """Angle between B's singular vectors and A_pre's top ones: 0 = aligned (only rescales the top
    singular values), 90 = misaligned (B lives in directions orthogonal to them)."""
    samples: int = 0
    """Fine-tuning examples per data seed; 0 (default) means the population loss (infinitely many
    examples, no label noise, deterministic); e.g. 24 gives a finite noisy sample (docs/theory.md)."""
    label_noise: float = 0.5
    """Standard deviation of the Gaussian noise added to each output of each fine-tuning example."""
    data_seeds: int = 8
    """Independent fine-tuning samples (when samples > 0); curves show their mean and spread."""
    data_seed: int = 100
    """Seed of the first fine-tuning sample."""


@dataclass
class FinetuneConfig:
    """Fine-tuning by gradient descent at a fixed rate for a fixed number of steps."""

    lrs: list[float] = field(default_factory=lambda: [0.01, 0.02, 0.03])
    """Fine-tuning learning rates compared without regularization (one curve each)."""
    steps: int = 100
    """Gradient-descent steps of every fine-tuning run."""
    lambdas: list[float] = field(default_factory=lambda: [0.0, 0.03, 0.1, 0.3, 1.0])
    """Strengths of the penalty lambda * ||W - W_pre||^2 (over both layers) compared at ``lambda_lr``."""
    lambda_lr: float = 0.03
    """Learning rate of the regularized runs."""
    remedy_lr: float = 0.03
    """Learning rate of the remedy sweeps (replay, LP-FT, WiSE-FT), each compared with plain fine-tuning at it."""
    replay_fractions: list[float] = field(default_factory=lambda: [0.0, 0.1, 0.3, 0.5])
    """Replay: fine-tune on (1 - r) L_ft + r L_pre, the mixture of the two targets' losses, for each r in [0, 1)."""
    probe_steps: list[int] = field(default_factory=lambda: [0, 25, 100])
    """LP-FT: gradient-descent steps on W2 alone (W1 frozen) before the ``steps`` steps of both layers."""
    wise_alphas: list[float] = field(default_factory=lambda: [0.25, 0.5, 0.75, 1.0])
    """WiSE-FT: (1 - alpha) (W1, W2)_pre + alpha (W1, W2)_ft after one plain run at ``remedy_lr``, each alpha in [0, 1]."""


@dataclass
class NoiseConfig:
    """Gaussian perturbation of every weight with a fixed standard deviation."""

    stds: list[float] = field(default_factory=lambda: [0.02, 0.05, 0.1])
    """Noise standard deviations per weight (one curve each)."""
    draws: int = 32
    """Noise draws per (T, std); they give the spread band, the curve itself is the exact expectation."""
    seed: int = 1
    """Seed of the noise draws (the same draws are reused at every T, so curves are smooth in T)."""


@dataclass
class TheoryConfig:
    """Everything the theory simulator needs; ``overtrain theory key=value`` sets any field by its path."""

    network: NetworkConfig = field(default_factory=NetworkConfig)
    """Network shape and initialization."""
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    """Pre-training target spectrum and gradient-flow integration."""
    target: TargetConfig = field(default_factory=TargetConfig)
    """Fine-tuning target and its finite noisy sample."""
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    """Fine-tuning rates, length and regularization strengths."""
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    """Gaussian perturbation sizes."""


def validate_theory_config(config: TheoryConfig) -> TheoryConfig:
    """Reject values the simulator cannot run (raises OvertrainError naming the field and its value); returns config."""
    network, pretrain, target, finetune, noise = config.network, config.pretrain, config.target, config.finetune, config.noise
    for name in ("input_dim", "hidden_dim", "output_dim"):
        _require(getattr(network, name) >= 1, f"network.{name}", getattr(network, name), "a positive whole number")
    _require(network.init_scale > 0, "network.init_scale", network.init_scale, "a positive number such as 1e-3")
    _require(pretrain.spectrum_top > 0, "pretrain.spectrum_top", pretrain.spectrum_top, "a positive number")
    _require(0 < pretrain.spectrum_ratio <= 1, "pretrain.spectrum_ratio", pretrain.spectrum_ratio, "a number in (0, 1]")
    _require(
        0 <= pretrain.rank <= min(network.input_dim, network.output_dim),
        "pretrain.rank",
        pretrain.rank,
        "0 (full) up to min(input_dim, output_dim)",
    )
    _require(pretrain.step > 0, "pretrain.step", pretrain.step, "a positive number such as 0.1")
    _require(pretrain.time_min > 0, "pretrain.time_min", pretrain.time_min, "a positive time below time_max")
    _require(pretrain.time_min < pretrain.time_max, "pretrain.time_max", pretrain.time_max, f"more than time_min ({pretrain.time_min})")
    _require(pretrain.time_min >= pretrain.step, "pretrain.time_min", pretrain.time_min, f"at least one step ({pretrain.step})")
    _require(pretrain.points_per_octave >= 1, "pretrain.points_per_octave", pretrain.points_per_octave, "a whole number >= 1")
    free_directions = min(network.input_dim, network.output_dim) - target.added_rank
    _require(
        0 <= target.added_rank and (target.rotation_deg == 0 or free_directions >= target.added_rank),
        "target.added_rank",
        target.added_rank,
        "at most half of min(input_dim, output_dim) when rotation_deg != 0",
    )
    _require(target.samples >= 0, "target.samples", target.samples, "0 (the population loss) or a whole number of examples")
    _require(target.label_noise >= 0, "target.label_noise", target.label_noise, "a standard deviation >= 0")
    _require(target.data_seeds >= 1, "target.data_seeds", target.data_seeds, "a whole number >= 1")
    _require(finetune.steps >= 1, "finetune.steps", finetune.steps, "a whole number >= 1, e.g. 100")
    _require(len(finetune.lrs) >= 1 and all(rate > 0 for rate in finetune.lrs), "finetune.lrs", finetune.lrs,
             "one or more positive rates, e.g. [0.01,0.03]")
    _require(finetune.lambda_lr > 0, "finetune.lambda_lr", finetune.lambda_lr, "a positive rate such as 0.03")
    _require(all(strength >= 0 for strength in finetune.lambdas), "finetune.lambdas", finetune.lambdas, "non-negative strengths")
    _require(finetune.remedy_lr > 0, "finetune.remedy_lr", finetune.remedy_lr, "a positive rate such as 0.03")
    _require(all(0 <= r < 1 for r in finetune.replay_fractions), "finetune.replay_fractions", finetune.replay_fractions,
             "fractions in [0, 1), e.g. [0,0.1,0.3]")
    _require(all(isinstance(k, int) and k >= 0 for k in finetune.probe_steps), "finetune.probe_steps", finetune.probe_steps,
             "whole numbers >= 0, e.g. [0,25,100]")
    _require(all(0 <= a <= 1 for a in finetune.wise_alphas), "finetune.wise_alphas", finetune.wise_alphas, "numbers in [0, 1], e.g. [0.25,0.5,1]")
    _require(len(noise.stds) >= 1 and all(std > 0 for std in noise.stds), "noise.stds", noise.stds, "one or more positive stds, e.g. [0.05]")
    _require(noise.draws >= 1, "noise.draws", noise.draws, "a whole number >= 1")
    for field_path, seed in (("network.seed", network.seed), ("noise.seed", noise.seed), ("target.data_seed", target.data_seed)):
        _require(isinstance(seed, int) and seed >= 0, field_path, seed, "a whole number >= 0 (numpy's seeds are)")
    swept = {"finetune.lrs": finetune.lrs, "finetune.lambdas": finetune.lambdas, "finetune.replay_fractions": finetune.replay_fractions,
             "finetune.probe_steps": finetune.probe_steps, "finetune.wise_alphas": finetune.wise_alphas, "noise.stds": noise.stds}
    for field_path, values in swept.items():  # a repeated value is the same curve twice, as the other verbs refuse
        _require(len(set(values)) == len(values), field_path, values, "a list with each value once")
    return config


def _require(condition: bool, field_path: str, value: object, allowed: str) -> None:
    """Raise, naming the key and the value it has, unless ``condition`` holds."""
    if not condition:
        raise OvertrainError(
            f"theory setting {field_path} has a value the simulator cannot use: {field_path}={value!r}", f"set {field_path} to {allowed}"
        )


def field_paths(config_class: type = TheoryConfig, prefix: str = "") -> list[str]:
    """Every settable dotted key, e.g. ``pretrain.step`` (used to list the allowed keys in errors)."""
    paths: list[str] = []
    for config_field in dataclasses.fields(config_class):
        default = config_field.default_factory() if callable(config_field.default_factory) else None  # type: ignore[misc]
        if dataclasses.is_dataclass(default):
            paths += field_paths(type(default), f"{prefix}{config_field.name}.")
        else:
            paths.append(prefix + config_field.name)
    return paths
