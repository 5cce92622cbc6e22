"""The numbers of a theory run as JSON, and the short table the CLI prints."""

from __future__ import annotations

import numpy as np

from overtrain import __version__
from overtrain.config import config_to_dict
from overtrain.theory.experiments import TheoryResults, check_claims, compare_remedies, halving_to_dict, sensitivity
from overtrain.theory.sweeps import Sweep


def results_to_dict(results: TheoryResults, seconds: float) -> dict[str, object]:
    """Everything needed to redraw the figures and quote the claims, JSON-ready."""
    return {
        "overtrain_version": __version__,
        "config": config_to_dict(results.config),
        "seconds": round(seconds, 2),
        "times": _floats(results.run.times),
        "pretrain_loss": _floats(results.run.pretrain_losses()),
        "singular_values": _floats(results.run.pretrain_target.singular_values),
        "modes": results.modes.summary(),
        "sweeps": {name: _sweep_to_dict(sweep) for name, sweep in results.sweeps.items()},
        "halving": halving_to_dict(results.halving),
        "claims": check_claims(results),
        "remedies": compare_remedies(results),
    }


def _sweep_to_dict(sweep: Sweep) -> dict[str, object]:
    marks = sweep.inflections()
    increases = sensitivity(sweep)
    settings = {}
    for setting in sweep.settings:
        entry: dict[str, object] = {
            sweep.parameter: setting.value,
            "after_loss": _floats(setting.after_loss),
            "increase": _floats(increases[setting.label]),
            "inflection": marks[setting.label].to_dict(),
        }
        if setting.task_loss is not None and setting.train_loss is not None:
            entry["task_loss"] = _floats(setting.task_loss.mean(axis=0))
            entry["train_loss"] = _floats(setting.train_loss.mean(axis=0))
        settings[setting.label] = entry
    return {"parameter": sweep.parameter, "settings": settings}


def _floats(values: np.ndarray) -> list[float]:
    return [float(value) for value in np.asarray(values).ravel()]


def summary_table(results: TheoryResults) -> str:
    """One line per setting: its inflection T, interval, whether the curve is a U, and its rise."""
    lines = [f"{'sweep':<12} {'setting':<14} {'inflection T':>12} {'interval':>19} {'U?':>4} {'rise':>8}"]
    for name, sweep in results.sweeps.items():
        for label, mark in sweep.inflections().items():
            interval = f"[{mark.low:.3g}, {mark.high:.3g}]"
            lines.append(
                f"{name:<12} {label:<14} {mark.at:>12.3g} {interval:>19} {'yes' if mark.u_shaped else 'no':>4} "
                f"{100 * mark.relative_rise:>7.2f}%"
            )
    lines.append(f"remedies at rate {results.config.finetune.remedy_lr:g}: inflection T (plain's), loss on A_ft at the longest T (plain's)")
    for name, comparison in compare_remedies(results).items():
        plain_t, plain_cost = comparison["plain_inflection_T"], comparison["plain_task_loss_at_longest_T"]
        for label, entry in comparison["settings"].items():
            lines.append(
                f"  {name:<7} {label:<14} T {entry['inflection_T']:>8.3g}{'' if entry['u_shaped'] else ' (no U)':<8} "
                f"(plain {plain_t:.3g})  A_ft loss {entry['task_loss_at_longest_T']:.3g} (plain {plain_cost:.3g})"
            )
    modes = results.modes.summary()
    errors = modes["random_half_time_relative_errors"]
    lines.append(
        f"modes learned: {modes['learned_modes']}, largest first: {modes['learned_in_order_of_singular_value']}, "
        f"half-time vs closed form: max {100 * max(map(abs, errors), default=0):.2f}% (random init), "
        f"aligned strengths within {modes['aligned_max_strength_error_over_s']:.1e} x s"
    )
    if results.halving is not None:
        worst = max(results.halving.max_relative_difference.values())
        lines.append(
            f"step {results.halving.step:g} vs {results.halving.half_step:g}: curves differ by at most {100 * worst:.3f}%"
        )
    verdicts = ", ".join(f"{claim}={'yes' if verdict['holds'] else 'NO'}" for claim, verdict in check_claims(results).items())
    lines.append(f"claims: {verdicts}")
    return "\n".join(lines)
