"""Where a loss-versus-T curve turns: the inflection point of catastrophic overtraining.

The paper calls the pre-training time at which the loss after a change stops improving and starts to
rise the *inflection point* (the minimum of a U). On a geometric grid of T it is located to within one
grid step; a parabola through the three lowest points (in log T) refines it, and, when the curve is a
mean over independent samples (fine-tuning data seeds), a bootstrap over samples widens the interval.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Inflection:
    """The minimum of a loss curve over pre-training time T."""

    time: float
    """Refined T of the minimum (parabola through the lowest grid point and its neighbours, in log T)."""
    low: float
    """Lower end of the interval that holds the minimum (grid neighbour, or bootstrap 5th percentile)."""
    high: float
    """Upper end of the interval (grid neighbour, or bootstrap 95th percentile)."""
    interior: bool
    """True when the lowest grid point is neither the first nor the last: the curve is U-shaped."""
    rise: float
    """(loss at the longest T - minimum loss) / minimum loss: how much longer pre-training costs."""

    def to_dict(self) -> dict[str, float | bool]:
        return {"time": self.time, "low": self.low, "high": self.high, "interior": self.interior, "rise": self.rise}


def find_inflection(times: np.ndarray, losses: np.ndarray, samples: np.ndarray | None = None, seed: int = 0) -> Inflection:
    """Inflection of the curve ``losses`` over ``times`` (both (n_T,), times geometric and increasing).

    ``samples`` (n_samples, n_T), when given, are the independent curves whose mean is ``losses``;
    the interval then also spans the 5-95% range of the minima of 200 bootstrap means.
    """
    times, losses = np.asarray(times, dtype=float), np.asarray(losses, dtype=float)
    lowest = int(np.argmin(losses))
    interior = 0 < lowest < len(losses) - 1
    low, high = times[max(lowest - 1, 0)], times[min(lowest + 1, len(times) - 1)]
    if samples is not None and len(samples) > 1:
        boot_low, boot_high = _bootstrap_interval(times, np.asarray(samples, dtype=float), seed)
        low, high = min(low, boot_low), max(high, boot_high)
    rise = float((losses[-1] - losses[lowest]) / abs(losses[lowest])) if losses[lowest] != 0 else float("inf")
    return Inflection(refined_minimum(times, losses), float(low), float(high), interior, rise)


def refined_minimum(times: np.ndarray, losses: np.ndarray) -> float:
    """T of the vertex of the parabola (in log T) through the lowest point and its two neighbours."""
    lowest = int(np.argmin(losses))
    if lowest == 0 or lowest == len(losses) - 1:
        return float(times[lowest])
    log_times = np.log(times[lowest - 1 : lowest + 2])
    left, middle, right = losses[lowest - 1 : lowest + 2]
    curvature = left - 2 * middle + right
    if curvature <= 0:
        return float(times[lowest])
    # Vertex of the parabola through three points; exact for any spacing of log T.
    a, b, c = log_times
    numerator = (b - a) ** 2 * (middle - right) - (b - c) ** 2 * (middle - left)
    denominator = (b - a) * (middle - right) - (b - c) * (middle - left)
    vertex = b - 0.5 * numerator / denominator
    return float(np.exp(np.clip(vertex, a, c)))


def _bootstrap_interval(times: np.ndarray, samples: np.ndarray, seed: int) -> tuple[float, float]:
    """5th and 95th percentiles of the refined minimum of bootstrap means over the sample axis."""
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(samples), size=(200, len(samples)))  # (resamples, n_samples)
    means = samples[picks].mean(axis=1)  # (resamples, n_T)
    minima = np.array([refined_minimum(times, curve) for curve in means])
    return float(np.percentile(minima, 5)), float(np.percentile(minima, 95))
