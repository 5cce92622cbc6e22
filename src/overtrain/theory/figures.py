"""The theory figures, drawn by the project's shared plotting code (overtrain.plots).

One figure per claim: ``modes`` (incremental learning against the closed form), ``noise``,
``finetune``, ``regularized`` and the remedies ``replay``, ``lpft``, ``wise`` (loss after the change, the same zoomed on the bottom of the U, the
increase the change causes, and for fine-tuning the loss on the new task), each in the paper's style:
log-x pre-training time, one line per setting, the inflection point as a dot with its interval.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from overtrain.results.plots import Curve, InflectionMark, Panel, plot_panels
from overtrain.theory.experiments import TheoryResults, sensitivity
from overtrain.theory.incremental import ALIGNED, RANDOM, ModeLearning
from overtrain.theory.sweeps import Sweep

TIME_LABEL = "pre-training time T (steps x step size)"
SWEEP_TITLES = {
    "noise": "Gaussian noise on every weight after pre-training for T",
    "finetune": "Fine-tuning on a misaligned target after pre-training for T",
    "regularized": "Fine-tuning with lambda * ||W - W_pre||^2",
    "replay": "Replay: fine-tuning on (1 - r) L_ft + r L_pre",
    "lpft": "LP-FT: W2 alone for k steps, then both layers",
    "wise": "WiSE-FT: (1 - alpha) W_pre + alpha W_ft, per layer",
}


def write_figures(results: TheoryResults, out_dir: Path) -> list[Path]:
    """Write every theory figure (PNG + SVG) into ``out_dir``; returns the paths written."""
    written = plot_panels(
        mode_panels(results.modes),
        title="Incremental learning: modes are learned largest first",
        out_stem=out_dir / "modes",
        columns=2,
    )
    for name, sweep in results.sweeps.items():
        written += plot_panels(sweep_panels(sweep), title=SWEEP_TITLES[name], out_stem=out_dir / name, columns=2)
    return written


def mode_panels(modes: ModeLearning) -> list[Panel]:
    """(a) a_i / s_i over time against the sigmoid; (b) half-learning time against s; (c) its error."""
    learned = modes.learned_modes()
    legend_modes = set(learned[:: max(1, len(learned) // 5)])
    curves = []
    for mode in learned:
        value = modes.singular_values[mode]
        label = f"mode {mode} (s={value:.3g})"
        simulated, closed = modes.simulated[:, RANDOM, mode] / value, modes.closed_form[:, RANDOM, mode] / value
        curves.append(Curve(label, modes.times, simulated, group=label, show_in_legend=mode in legend_modes))
        curves.append(Curve(f"{label}, closed form", modes.times, closed, group=label, line_style="--", show_in_legend=False))
    strengths = Panel(curves, "time t", "mode strength a_i / s_i", "(a) simulated (solid), closed form (dashed)")
    values = modes.singular_values[learned]
    half_times = [
        Curve("simulated, random init", values, modes.simulated_half_times[RANDOM, learned], line_style="", marker="o"),
        Curve("closed form, shared hidden space", values, modes.predicted_half_times[RANDOM, learned]),
        Curve("closed form, modes independent", values, modes.independent_half_times[learned], line_style=":"),
    ]
    timing = Panel(half_times, "singular value s", "time to reach s / 2", "(b) half-learning time", log_y=True)
    errors = [
        Curve("random init, shared hidden space", values, 100 * modes.half_time_relative_errors(RANDOM), marker="o"),
        Curve(
            "random init, modes independent",
            values,
            100 * modes.half_time_relative_errors(RANDOM, True),
            line_style=":",
            marker="o",
        ),
        Curve("aligned init (exact closed form)", values, 100 * modes.half_time_relative_errors(ALIGNED), marker="x"),
    ]
    error = Panel(errors, "singular value s", "simulated / closed form - 1 (%)", "(c) half-time error of the closed form")
    return [strengths, timing, error]


def sweep_panels(sweep: Sweep) -> list[Panel]:
    """Loss after the change, the same relative to its minimum, the increase, and the new-task loss."""
    marks = {label: InflectionMark(mark.at, mark.low, mark.high) for label, mark in sweep.inflections().items()}
    after = [_band_curve(setting.label, sweep.times, setting.after_loss, setting.after_samples) for setting in sweep.settings]
    before = Curve("before the change", sweep.times, sweep.base_loss, line_style="--", color="black")
    panels = [
        Panel(
            after + [before],
            TIME_LABEL,
            "pre-training loss after the change",
            "(a) loss after the change",
            log_y=True,
            inflections=marks,
        ),
        _zoom_panel(sweep, marks),
    ]
    increases = sensitivity(sweep)
    positive = all(np.all(values > 0) for values in increases.values())
    increase_curves = [Curve(label, sweep.times, values) for label, values in increases.items()]
    panels.append(
        Panel(increase_curves, TIME_LABEL, "increase of pre-training loss", "(c) progressive sensitivity", log_y=positive)
    )
    if sweep.settings[0].task_loss is not None:
        task = [_band_curve(s.label, sweep.times, s.task_loss.mean(axis=0), s.task_loss) for s in sweep.settings]
        panels.append(Panel(task, TIME_LABEL, "fine-tuning loss (population, A_ft)", "(d) loss on the new task", log_y=True))
    return panels


def _zoom_panel(sweep: Sweep, marks: dict[str, InflectionMark]) -> Panel:
    """Each curve divided by its own minimum, zoomed so that shallow U shapes are visible."""
    relative = [Curve(s.label, sweep.times, s.after_loss / s.after_loss.min()) for s in sweep.settings]
    relative_marks = {}
    for setting in sweep.settings:
        mark = marks[setting.label]
        height = float(np.interp(np.log(mark.x), np.log(sweep.times), setting.after_loss / setting.after_loss.min()))
        relative_marks[setting.label] = InflectionMark(mark.x, mark.x_low, mark.x_high, height)
    rises = [float(s.after_loss[-1] / s.after_loss.min() - 1) for s in sweep.settings]
    top = 1 + min(0.5, max(0.02, 2.5 * max(rises)))
    return Panel(
        relative,
        TIME_LABEL,
        "loss after the change / its minimum",
        "(b) the bottom of the U",
        inflections=relative_marks,
        y_limits=(1 - 0.1 * (top - 1), top),
    )


def _band_curve(label: str, times: np.ndarray, center: np.ndarray, samples: np.ndarray) -> Curve:
    """Curve with a 10-90% band over samples (no band for a single sample)."""
    if len(samples) < 2:
        return Curve(label, times, center)
    return Curve(label, times, center, np.percentile(samples, 10, axis=0), np.percentile(samples, 90, axis=0))
