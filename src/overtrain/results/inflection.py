"""Where a loss curve over pre-training (tokens, or time T in the theory) turns: the inflection point.

The paper calls the pre-training budget at which the loss after a change stops improving and starts to
rise the *inflection point*: the minimum of a U. One function serves the language-model analysis and
the theory alike:

- the minimum is the lowest point of the mean curve, refined by the vertex of a parabola (in log x)
  through it and its two neighbours;
- its interval says what was resampled and over how many units: a 95% percentile bootstrap over the
  units when there are 3 or more, the range of the units' own minima when there are 2 (a range, not an
  interval), and the neighbouring grid points when there is 1 (no resampling at all). The bootstrap's 95%
  is nominal, and it says so: over few units a percentile bootstrap covers less (for a mean of normal
  units, ~76% at 3 and ~86% at 5, simulated), so read it as the spread the units show;
- a curve counts as U-shaped only when the minimum is interior *and* the rise from the minimum to the
  last point exceeds both a stated tolerance and ``t_{0.975, n-1}`` standard errors of that rise across
  the n units (4.30 at 3 units, 2.78 at 5). An interior argmin on a flat, noisy curve is not a U. Why that
  many: the minimum is chosen after seeing the curve, which biases its rise upward. On flat curves with
  independent noise (5-6 budgets, 2-8 units, 5,000 draws each) this rule calls 4.6-6.6% of them U-shaped,
  where two standard errors called 11-26% and the one-sided 95% t quantile 8-13%
  (``tests/test_inflection.py`` measures it). One unit has no measured noise: its U is *untested*, never
  a yes, unless its curve is exact (a theory expectation, ``exact=True``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from overtrain.results.student_t import t_quantile
from overtrain.units import format_tokens

BOOTSTRAP_RESAMPLES = 2000
MIN_UNITS_FOR_BOOTSTRAP = 3
BOOTSTRAP_KIND = "bootstrap 95% (nominal)"
"""A percentile bootstrap's interval: nominally 95%, less over few units (see the module's docstring)."""
RISE_QUANTILE = 0.975
"""A rise counts as real when it exceeds Student's t quantile at this probability (n - 1 degrees of
freedom) times its standard error across the n units: see the module's docstring for why not 0.95."""


@dataclass(frozen=True)
class Inflection:
    """The minimum of a loss curve over pre-training, with an honest statement of its uncertainty."""

    at: float
    """Refined x of the minimum (tokens, or theory time T)."""
    low: float
    """Lower end of the interval (see ``interval_kind``)."""
    high: float
    """Upper end of the interval."""
    interval_kind: str
    """``bootstrap 95% (nominal)`` (3+ units), ``range`` (2 units) or ``grid neighbours`` (1 unit)."""
    resampled: str
    """What the units are, e.g. ``pre-training seeds`` or ``noise seeds``."""
    units: int
    """How many independent curves the mean is over."""
    interior: bool
    """The lowest grid point of the mean curve is neither the first nor the last."""
    rise: float
    """Loss at the last point minus the minimum loss of the mean curve (loss units)."""
    relative_rise: float
    """``rise`` divided by the minimum loss."""
    rise_standard_error: float
    """Standard error of the rise across units (NaN with one unit: the noise is unknown)."""
    tolerance: float
    """The smallest rise (loss units) that counts as a U, whatever the noise."""
    fraction_interior: float
    """Share of bootstrap resamples whose minimum is interior (NaN without resampling)."""
    exact: bool = False
    """The curves have no sampling noise (exact expectations): one curve is a whole answer."""

    @property
    def rise_t(self) -> float:
        """The rise in standard errors across units (NaN with one unit; inf with a rise and no scatter)."""
        if self.units < 2:
            return float("nan")
        if self.rise_standard_error == 0:
            return float("inf") if self.rise > 0 else 0.0
        return self.rise / self.rise_standard_error

    @property
    def rise_t_needed(self) -> float:
        """How many standard errors a rise must exceed to count (:data:`RISE_QUANTILE`; NaN with one unit)."""
        return t_quantile(RISE_QUANTILE, self.units - 1) if self.units >= 2 else float("nan")

    @property
    def untested(self) -> bool:
        """An interior minimum with a rise past the tolerance on one noisy unit: nothing says whether the
        rise is larger than the noise, so it is neither a U nor ruled out."""
        return self.interior and self.rise > self.tolerance and self.units < 2 and not self.exact

    @property
    def u_shaped(self) -> bool:
        """Interior minimum and a rise past it larger than the tolerance and the units' noise."""
        if not self.interior or self.rise <= self.tolerance:
            return False
        if self.exact:
            return True
        return bool(self.units >= 2 and self.rise_t > self.rise_t_needed)

    def describe(self, format_x=format_tokens) -> str:
        """One line a reader can check: the minimum, its interval, what the interval is over, and the rise
        against the units' noise."""
        where = f"{format_x(self.at)} ({self.interval_text(format_x)})"
        if self.u_shaped:
            return f"U-shaped: minimum at {where}; rise past it {self.rise:+.3f}{self._noise_text()}"
        if self.untested:
            return (f"untested: interior minimum at {where}, rise past it {self.rise:+.3f}, but one "
                    f"{_singular(self.resampled)} leaves its noise unknown (a U needs 2 or more)")
        if self.interior:
            return f"no clear U: interior minimum at {where}, but its rise {self.rise:+.3f}{self._noise_text()} is within the noise"
        return f"no interior minimum: lowest at {format_x(self.at)}"

    def _noise_text(self) -> str:
        if self.exact or self.units < 2:
            return ""
        return f" +- {self.rise_standard_error:.3f} (s.e.; {self.rise_t:.1f} s.e., a U needs {self.rise_t_needed:.2f})"

    def interval_text(self, format_x=format_tokens) -> str:
        span = f"{format_x(self.low)}-{format_x(self.high)}"
        if self.interval_kind == "grid neighbours":
            return f"grid neighbours {span}; 1 {_singular(self.resampled)}, nothing resampled"
        return f"{self.interval_kind} {span} over {self.units} {self.resampled}"

    def to_dict(self) -> dict[str, float | bool | str | int]:
        return {**asdict(self), "u_shaped": self.u_shaped, "untested": self.untested}


def find_inflection(
    x: np.ndarray, curves: np.ndarray, *, resampled: str = "seeds", tolerance: float = 0.0, seed: int = 0, exact: bool = False
) -> Inflection:
    """Inflection of ``curves`` (n_units, n_points), or of one curve (n_points,), over increasing ``x``.
    ``exact``: the curves are exact expectations (no sampling noise), so one curve suffices for a U."""
    x = np.asarray(x, dtype=float)
    table = np.atleast_2d(np.asarray(curves, dtype=float))  # (units, points)
    mean = table.mean(axis=0)
    lowest = int(np.argmin(mean))
    interior = 0 < lowest < len(x) - 1
    rise_per_unit = table[:, -1] - table[:, lowest]
    rise = float(mean[-1] - mean[lowest])
    units = table.shape[0]
    standard_error = float(rise_per_unit.std(ddof=1) / np.sqrt(units)) if units > 1 else float("nan")
    low, high, kind, fraction = _interval(x, table, lowest, seed)
    relative = rise / abs(mean[lowest]) if mean[lowest] != 0 else float("inf")
    return Inflection(refined_minimum(x, mean), low, high, kind, resampled, units, interior, rise, float(relative),
                      standard_error, tolerance, fraction, exact)


def refined_minimum(x: np.ndarray, losses: np.ndarray) -> float:
    """x of the vertex of the parabola (in log x) through the lowest point and its two neighbours."""
    losses = np.asarray(losses, dtype=float)
    lowest = int(np.argmin(losses))
    if lowest == 0 or lowest == len(losses) - 1:
        return float(x[lowest])
    a, b, c = np.log(np.asarray(x[lowest - 1 : lowest + 2], dtype=float))
    left, middle, right = losses[lowest - 1 : lowest + 2]
    if left - 2 * middle + right <= 0:
        return float(x[lowest])
    # Vertex of the parabola through three points; exact for any spacing of log x.
    numerator = (b - a) ** 2 * (middle - right) - (b - c) ** 2 * (middle - left)
    denominator = (b - a) * (middle - right) - (b - c) * (middle - left)
    vertex = b - 0.5 * numerator / denominator
    return float(np.exp(np.clip(vertex, a, c)))


def _interval(x: np.ndarray, table: np.ndarray, lowest: int, seed: int) -> tuple[float, float, str, float]:
    """(low, high, kind, fraction of resamples with an interior minimum) for a (units, points) table."""
    units = table.shape[0]
    if units >= MIN_UNITS_FOR_BOOTSTRAP:
        rng = np.random.default_rng(seed)
        picks = rng.integers(0, units, size=(BOOTSTRAP_RESAMPLES, units))
        resampled_means = table[picks].mean(axis=1)  # (resamples, points)
        minima = np.array([refined_minimum(x, curve) for curve in resampled_means])
        low, high = np.exp(np.percentile(np.log(minima), [2.5, 97.5]))
        argmins = resampled_means.argmin(axis=1)
        fraction = float(np.mean((argmins > 0) & (argmins < len(x) - 1)))
        return float(low), float(high), BOOTSTRAP_KIND, fraction
    if units == 2:
        minima = [refined_minimum(x, curve) for curve in table] + [refined_minimum(x, table.mean(axis=0))]
        return float(min(minima)), float(max(minima)), "range", float("nan")
    return float(x[max(lowest - 1, 0)]), float(x[min(lowest + 1, len(x) - 1)]), "grid neighbours", float("nan")


def _singular(noun: str) -> str:
    return noun[:-1] if noun.endswith("s") else noun
