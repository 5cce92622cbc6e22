"""The one inflection finder (language models and theory): exact minima, honest intervals, real U's."""

from __future__ import annotations

import numpy as np
import pytest

from overtrain.results import inflection as inflection_module
from overtrain.results.inflection import find_inflection, refined_minimum

GRID = 2.0 ** np.arange(0, 9)  # 1 .. 256, geometric like a ladder of budgets


def _quadratic_in_log(x: np.ndarray, minimum_at: float, curvature: float = 1.0, floor: float = 2.0) -> np.ndarray:
    return floor + curvature * (np.log(x) - np.log(minimum_at)) ** 2


def test_parabola_refinement_recovers_a_minimum_between_grid_points() -> None:
    for true_minimum in (3.0, 11.3, 90.0):
        assert refined_minimum(GRID, _quadratic_in_log(GRID, true_minimum)) == pytest.approx(true_minimum, rel=1e-9)


def test_bootstrap_interval_matches_the_known_spread_of_the_minimum() -> None:
    # Each unit's curve is a parabola in log x around its own minimum log m_i ~ N(log 20, 0.3). The mean of
    # parabolas is a parabola around mean(log m_i), so the minimum's sampling spread is 0.3 / sqrt(n).
    rng = np.random.default_rng(0)
    units = 40
    log_minima = np.log(20.0) + 0.3 * rng.standard_normal(units)
    curves = np.stack([_quadratic_in_log(GRID, float(np.exp(m))) for m in log_minima])
    inflection = find_inflection(GRID, curves, resampled="pre-training seeds")
    centre = float(np.exp(log_minima.mean()))
    assert inflection.at == pytest.approx(centre, rel=1e-6)
    half_width = 1.96 * log_minima.std(ddof=0) / np.sqrt(units)
    assert np.log(inflection.low) == pytest.approx(np.log(centre) - half_width, abs=0.25 * half_width)
    assert np.log(inflection.high) == pytest.approx(np.log(centre) + half_width, abs=0.25 * half_width)
    assert inflection.interval_kind == "bootstrap 95% (nominal)" and inflection.units == units
    assert "over 40 pre-training seeds" in inflection.interval_text()


def test_two_units_give_a_range_and_one_unit_gives_grid_neighbours() -> None:
    two = np.stack([_quadratic_in_log(GRID, 10.0), _quadratic_in_log(GRID, 30.0)])
    pair = find_inflection(GRID, two, resampled="noise seeds")
    assert pair.interval_kind == "range"
    assert pair.low == pytest.approx(10.0, rel=1e-9) and pair.high == pytest.approx(30.0, rel=1e-9)
    assert "range" in pair.interval_text() and "2 noise seeds" in pair.interval_text()
    single = find_inflection(GRID, _quadratic_in_log(GRID, 16.0), resampled="noise seeds")
    assert (single.low, single.high, single.interval_kind) == (8.0, 32.0, "grid neighbours")
    assert "nothing resampled" in single.interval_text()


def test_one_noisy_unit_leaves_a_u_untested_and_an_exact_curve_does_not() -> None:
    curve = _quadratic_in_log(GRID, 16.0)
    single = find_inflection(GRID, curve, resampled="noise seeds")
    assert single.interior and single.untested and not single.u_shaped
    assert single.describe().startswith("untested:") and "one noise seed" in single.describe()
    exact = find_inflection(GRID, curve, resampled="exact expectations", exact=True)
    assert exact.u_shaped and not exact.untested
    assert not find_inflection(GRID, np.linspace(5.0, 1.0, len(GRID))).untested  # no interior minimum: nothing to test


def test_a_flat_noisy_curve_is_called_a_u_about_one_time_in_twenty(monkeypatch) -> None:
    # The minimum is picked after seeing the curves, which biases the rise past it upward: two standard
    # errors, or the one-sided 95% t quantile, call many flat curves U-shaped. The verdict does not use the
    # bootstrap interval, so a few resamples keep the 1,500 draws quick.
    monkeypatch.setattr(inflection_module, "BOOTSTRAP_RESAMPLES", 4)
    rng = np.random.default_rng(3)
    budgets = GRID[:6]
    for units in (3, 5):
        draws = [find_inflection(budgets, rng.standard_normal((units, len(budgets)))) for _ in range(1500)]
        called_u = np.mean([d.u_shaped for d in draws])
        called_u_at_two_standard_errors = np.mean([d.interior and d.rise_t > 2.0 for d in draws])
        assert called_u <= 0.075, (units, called_u)
        assert called_u_at_two_standard_errors >= 0.10, (units, called_u_at_two_standard_errors)  # the old rule fails here


def test_u_shape_needs_a_rise_beyond_the_noise_of_the_units() -> None:
    rng = np.random.default_rng(1)
    flat_but_noisy = 2.0 + 0.05 * rng.standard_normal((3, len(GRID)))
    flat_but_noisy[:, 4] -= 0.02  # an interior argmin, far smaller than the units' scatter at the end
    noisy = find_inflection(GRID, flat_but_noisy, resampled="pre-training seeds")
    assert noisy.interior and not noisy.u_shaped
    assert "within the noise" in noisy.describe() and "a U needs 4.30" in noisy.describe()
    clear = np.stack([_quadratic_in_log(GRID, 16.0, curvature=0.1) + 0.001 * k for k in range(3)])
    u = find_inflection(GRID, clear, resampled="pre-training seeds")
    assert u.u_shaped and "U-shaped" in u.describe()


def test_tolerance_and_monotone_curves_are_not_u_shaped() -> None:
    tiny_rise = _quadratic_in_log(GRID, 100.0, curvature=1e-3)  # rises by ~9e-4 past 100
    assert find_inflection(GRID, tiny_rise).interior
    assert not find_inflection(GRID, tiny_rise, tolerance=1e-3).u_shaped
    falling = np.linspace(5.0, 1.0, len(GRID))
    monotone = find_inflection(GRID, falling)
    assert not monotone.interior and not monotone.u_shaped and monotone.at == GRID[-1]
