"""Incremental learning, measured against the closed form (Saxe et al., 2014).

The pre-training run traces every mode's strength a_i(t) = u_i^T W2 W1 v_i for two networks: the
random small init of the sweep and an aligned, balanced init. The closed form predicts both: exactly
for the aligned network (a check of the integrator), and after a short alignment phase for the
random one, once a0 is replaced by the mode's effective initial strength (closed_form.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from overtrain.theory.closed_form import crossing_times, half_learning_time, sigmoid_mode_strength
from overtrain.theory.sweeps import PretrainRun

RANDOM, ALIGNED = 0, 1
"""Index of each network in ``PretrainRun.trace_strengths[:, k]``."""


@dataclass(frozen=True)
class ModeLearning:
    """Simulated and closed-form mode strengths, and the times at which each mode is half learned."""

    times: np.ndarray
    """Trace times, shape (n_t,)."""
    singular_values: np.ndarray
    """s_i, shape (r,)."""
    simulated: np.ndarray
    """Simulated strengths, (n_t, 2, r): [:, 0] random init, [:, 1] aligned init."""
    closed_form: np.ndarray
    """Sigmoid solution with each network's initial strengths, (n_t, 2, r)."""
    simulated_half_times: np.ndarray
    """First time a_i reaches s_i / 2 in the simulation, (2, r); NaN when not within the run."""
    predicted_half_times: np.ndarray
    """ln(s / a0 - 1) / (2 s) with each network's a0, (2, r)."""
    independent_half_times: np.ndarray
    """Prediction for the random init if each mode had the whole hidden space to itself, (r,)."""

    def learned_modes(self) -> np.ndarray:
        """Indices of the modes the random network half-learned within the run."""
        return np.nonzero(np.isfinite(self.simulated_half_times[RANDOM]))[0]

    def half_time_relative_errors(self, network: int, independent: bool = False) -> np.ndarray:
        """(simulated - predicted) / predicted half-time of each learned mode of one network
        (``independent``: against the prediction that ignores the sharing of hidden space)."""
        learned = self.learned_modes()
        simulated = self.simulated_half_times[network, learned]
        predicted = self.independent_half_times[learned] if independent else self.predicted_half_times[network, learned]
        return (simulated - predicted) / predicted

    def aligned_max_error(self) -> float:
        """max over t and learned modes of |a_sim - a_closed| / s for the aligned network."""
        learned = self.learned_modes()
        difference = self.simulated[:, ALIGNED, learned] - self.closed_form[:, ALIGNED, learned]
        return _largest_magnitude(difference / self.singular_values[learned])

    def summary(self) -> dict[str, object]:
        """The numbers docs/theory.md and the JSON report quote."""
        return {
            "learned_modes": len(self.learned_modes()),
            "learned_in_order_of_singular_value": bool(
                np.all(np.diff(self.simulated_half_times[RANDOM, self.learned_modes()]) > 0)
            ),
            "aligned_max_strength_error_over_s": self.aligned_max_error(),
            "aligned_half_time_max_relative_error": _largest_magnitude(self.half_time_relative_errors(ALIGNED)),
            "random_half_time_relative_errors": [float(value) for value in self.half_time_relative_errors(RANDOM)],
            "random_half_time_relative_errors_independent_modes": [
                float(value) for value in self.half_time_relative_errors(RANDOM, independent=True)
            ],
            "simulated_half_times_random": [float(value) for value in self.simulated_half_times[RANDOM, self.learned_modes()]],
            "predicted_half_times_random": [float(value) for value in self.predicted_half_times[RANDOM, self.learned_modes()]],
        }


def _largest_magnitude(values: np.ndarray) -> float:
    """max |value|, NaN when there is nothing to compare (no mode learned within the run)."""
    return float(np.max(np.abs(values))) if np.size(values) else float("nan")


def compare_with_closed_form(run: PretrainRun) -> ModeLearning:
    """Closed-form strengths and half-times for the run's two traced networks."""
    values = run.pretrain_target.singular_values
    closed = np.stack(
        [sigmoid_mode_strength(run.trace_times, values, run.initial_strengths[k]) for k in (RANDOM, ALIGNED)], axis=1
    )
    simulated_half = np.stack([crossing_times(run.trace_times, run.trace_strengths[:, k], values / 2) for k in (RANDOM, ALIGNED)])
    predicted_half = np.stack([half_learning_time(values, run.initial_strengths[k]) for k in (RANDOM, ALIGNED)])
    independent_half = half_learning_time(values, run.independent_initial_strengths)
    return ModeLearning(run.trace_times, values, run.trace_strengths, closed, simulated_half, predicted_half, independent_half)
