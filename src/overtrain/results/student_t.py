"""Quantiles of Student's t distribution for whole degrees of freedom, without scipy.

Why: the results' intervals and tests are over a handful of units (3 pre-training seeds is typical), where
the normal quantile (1.96) or a percentile bootstrap understates the spread badly: a percentile bootstrap
of a mean over 3 units covers ~76% of the time, not 95%. With n units, the mean's standard error has n - 1
degrees of freedom, and t's quantiles say how far to go. overtrain's core dependencies do not include scipy,
and units are whole numbers, for which t's distribution function has a closed form (Abramowitz and Stegun
26.7.3-4), inverted here by bisection.
"""

from __future__ import annotations

import math


def probability_within(t: float, degrees_of_freedom: int) -> float:
    """P(-t < T < t) for T ~ Student's t with ``degrees_of_freedom`` (a whole number >= 1), t >= 0."""
    if degrees_of_freedom < 1 or int(degrees_of_freedom) != degrees_of_freedom:
        raise ValueError(f"Student's t needs whole degrees of freedom >= 1, got {degrees_of_freedom}")
    nu = int(degrees_of_freedom)
    theta = math.atan(t / math.sqrt(nu))
    cos_squared = math.cos(theta) ** 2
    if nu % 2:  # odd: (2 / pi) (theta + sin cos (1 + 2/3 cos^2 + 2.4/(3.5) cos^4 + ... up to cos^(nu - 3)))
        term, series = 1.0, 1.0 if nu > 1 else 0.0
        for k in range(1, (nu - 1) // 2):
            term *= cos_squared * (2 * k) / (2 * k + 1)
            series += term
        return 2.0 / math.pi * (theta + math.sin(theta) * math.cos(theta) * series)
    term, series = 1.0, 1.0  # even: sin (1 + 1/2 cos^2 + 1.3/(2.4) cos^4 + ... up to cos^(nu - 2))
    for k in range(1, nu // 2):
        term *= cos_squared * (2 * k - 1) / (2 * k)
        series += term
    return math.sin(theta) * series


def t_quantile(probability: float, degrees_of_freedom: int) -> float:
    """The ``probability`` quantile (0.5 < probability < 1) of Student's t with ``degrees_of_freedom``:
    e.g. ``t_quantile(0.975, 2)`` = 4.303, the multiple of a standard error over 3 units that a two-sided
    95% interval spans on each side. Exact to ~1e-12 (bisection on the closed-form distribution function)."""
    if not 0.5 < probability < 1.0:
        raise ValueError(f"t_quantile takes a probability between 0.5 and 1, got {probability}")
    within = 2.0 * probability - 1.0
    low, high = 0.0, 1.0
    while probability_within(high, degrees_of_freedom) < within:
        high *= 2.0
    for _ in range(200):
        middle = 0.5 * (low + high)
        if probability_within(middle, degrees_of_freedom) < within:
            low = middle
        else:
            high = middle
        if high - low <= 1e-12 * high:
            break
    return 0.5 * (low + high)
