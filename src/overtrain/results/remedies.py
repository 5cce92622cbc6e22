"""Remedies against catastrophic overtraining, compared on the same ladder and task.

A *remedy setting* is one way of fine-tuning every checkpoint of the ladder: plain fine-tuning at an LR, the
tuned LR (:mod:`overtrain.results.tuned`), L2 toward the pre-trained weights (``reg_lambda``), replay of
pre-training text (``replay_fraction``), LP-FT (``linear_probe_steps``), or a WiSE-FT reading (``alpha``) of any
of those runs. :func:`remedy_readings` turns a fine-tuning frame into one row per (run, reading) with its
``remedy`` label; everything else is computed from that frame:

- :func:`remedy_curves`: per remedy, forgetting (``ood_loss_after - ood_loss_before``, nats per token) and ID
  gain (``id_loss_before - id_loss_after``, nats per completion token) against pre-training tokens, the mean and
  range over pre-training seeds, and the inflection of the pre-training loss after fine-tuning
  (:func:`~overtrain.results.inflection.find_inflection`, a bootstrap over pre-training seeds).
- :func:`inflection_shift`: how far a remedy moves the inflection from plain fine-tuning at the same LR, as a
  ratio of token counts, with a paired bootstrap over pre-training seeds (the same resampled seeds for both
  curves), only where both curves have an interior minimum.
- :func:`trade_off`: at each budget, the remedy's forgetting against plain fine-tuning's forgetting *at equal
  ID gain*, and its ID gain against plain's *at equal forgetting*. Plain's values come from its LR sweep: the
  points (ID gain, forgetting) of the plain LRs, in LR order, joined by straight segments; the value at the
  remedy's ID gain (or forgetting) is read off the first segment, in LR order, that spans it. Outside the
  sweep's span nothing is extrapolated (NaN). Means over seeds are compared, per budget, plain's taken over the
  same checkpoints and fine-tuning seeds as the remedy's runs.
- :func:`ranking`: per task, the remedies ordered by the forgetting they save at equal ID gain at the largest
  budget (the most overtrained checkpoint), those plain's sweep cannot match after them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from overtrain.results import analysis
from overtrain.results.inflection import BOOTSTRAP_KIND, BOOTSTRAP_RESAMPLES, MIN_UNITS_FOR_BOOTSTRAP, Inflection, refined_minimum
from overtrain.results.tuned import tuned_frame, with_remedy_columns
from overtrain.units import format_tokens

READING_COLUMNS = ["task", "remedy", "kind", "lr", "alpha", "checkpoint", "tokens_seen", "seed", "pretrain_seed",
                   "id_loss_before", "id_loss_after", "id_gain", "ood_loss_before", "ood_loss_after", "forgetting"]
PLAIN = "plain"
TUNED = "tuned LR"
WISE = "WiSE-FT"


def remedy_name(reg_lambda: float, replay_fraction: float, linear_probe_steps: int) -> str:
    """The training-time remedies of a run as one name: ``plain``, ``L2 lambda=0.01``, ``replay 0.25``, ``LP-FT 20``
    (several joined with ``+``)."""
    parts = [f"L2 lambda={reg_lambda:g}" if reg_lambda else "", f"replay {replay_fraction:g}" if replay_fraction else "",
             f"LP-FT {int(linear_probe_steps)}" if linear_probe_steps else ""]
    return " + ".join(part for part in parts if part) or PLAIN


def remedy_readings(finetune: pd.DataFrame) -> pd.DataFrame:
    """One row per reading of a fine-tuning frame (:func:`overtrain.results.analysis.finetune_frame`): every run
    after fine-tuning, every WiSE-FT alpha of it, and the tuned-LR runs (when a setting ran at 2+ LRs).

    Columns (READING_COLUMNS): ``remedy`` (e.g. ``plain lr=0.01``, ``replay 0.25 lr=0.01``, ``WiSE-FT alpha=0.5
    lr=0.01``, ``tuned LR``), ``kind`` (the remedy without its LR: ``plain``, ``replay 0.25``, ``WiSE-FT alpha=0.5``,
    ``tuned LR``...), ``lr`` (the run's; for tuned rows the chosen one), ``alpha`` (1 for a run, the WiSE-FT alpha
    for a reading), ``id_gain`` and ``forgetting``. ``pretrain_seed`` is 0 when the sweep has no seed axis.
    """
    if finetune.empty:
        return pd.DataFrame(columns=READING_COLUMNS)
    frame = with_remedy_columns(finetune)
    if "pretrain_seed" not in frame:
        frame = frame.assign(pretrain_seed=0)
    rows, seen = [], set()
    for run in frame.to_dict("records"):
        training = remedy_name(run["reg_lambda"], run["replay_fraction"], run["linear_probe_steps"])
        same_run = (run["checkpoint"], run["task"], run["seed"], run["lr"], training)
        if same_run not in seen:  # a run repeated only to take WiSE-FT readings (same settings, same result) counts once
            rows.append(_reading(run, training, training, 1.0, run["id_loss_after"], run["ood_loss_after"]))
            seen.add(same_run)
        for wise in run.get("wise") or []:
            kind = f"{WISE} alpha={wise['alpha']:g}" + ("" if training == PLAIN else f" of {training}")
            rows.append(_reading(run, kind, kind, float(wise["alpha"]), wise["id_loss"], wise["ood_loss"]))
    tuned = tuned_frame(frame)
    for run in tuned[tuned["lrs_compared"] > 1].to_dict("records"):
        training = remedy_name(run["reg_lambda"], run["replay_fraction"], run["linear_probe_steps"])
        kind = TUNED if training == PLAIN else f"{TUNED} + {training}"
        rows.append(_reading(run, kind, kind, 1.0, run["id_loss_after"], run["ood_loss_after"], with_lr=False))
    return pd.DataFrame(rows, columns=READING_COLUMNS)


def _reading(run: dict, remedy: str, kind: str, alpha: float, id_loss: float, ood_loss: float, with_lr: bool = True) -> dict:
    name = f"{remedy} lr={run['lr']:g}" if with_lr else remedy
    return {"task": run["task"], "remedy": name, "kind": kind, "lr": run["lr"], "alpha": alpha, "checkpoint": run["checkpoint"],
            "tokens_seen": run["tokens_seen"], "seed": run["seed"], "pretrain_seed": run["pretrain_seed"],
            "id_loss_before": run["id_loss_before"], "id_loss_after": id_loss, "id_gain": run["id_loss_before"] - id_loss,
            "ood_loss_before": run["ood_loss_before"], "ood_loss_after": ood_loss, "forgetting": ood_loss - run["ood_loss_before"]}


@dataclass(frozen=True)
class RemedyCurve:
    """One remedy setting on one task, against pre-training tokens (means over fine-tuning seeds per pre-training
    seed, then mean and range over pre-training seeds)."""

    task: str
    remedy: str
    kind: str
    lr: float | None
    """The LR of the runs (None for the tuned LR, which varies per checkpoint)."""
    forgetting: analysis.SettingSummary
    """Forgetting vs tokens; its ``inflection`` is that of the forgetting curve (unused)."""
    id_gain: analysis.SettingSummary
    ood_after: analysis.SettingSummary
    """Pre-training loss after fine-tuning vs tokens: its ``inflection`` is the remedy's inflection point."""

    @property
    def inflection(self) -> Inflection:
        return self.ood_after.inflection


def remedy_curves(readings: pd.DataFrame) -> list[RemedyCurve]:
    """One :class:`RemedyCurve` per (task, remedy) of :func:`remedy_readings`, plain first, then by name."""
    curves = []
    for (task, remedy), rows in readings.groupby(["task", "remedy"], sort=True):
        units = "fine-tuning seeds"
        lrs = rows["lr"].unique()
        curves.append(RemedyCurve(
            str(task), str(remedy), str(rows["kind"].iloc[0]), float(lrs[0]) if rows["kind"].iloc[0] != TUNED and len(lrs) == 1 else None,
            analysis.summarize_setting(remedy, rows, "forgetting", "forgetting", units),
            analysis.summarize_setting(remedy, rows, "id_gain", "id_gain", units),
            analysis.summarize_setting(remedy, rows, "ood_loss_after", "forgetting", units),
        ))
    return sorted(curves, key=lambda c: (c.task, c.kind != PLAIN, c.remedy))


@dataclass(frozen=True)
class Shift:
    """Inflection of a remedy over that of plain fine-tuning at the same LR, as a ratio of token counts."""

    ratio: float
    low: float
    high: float
    interval_kind: str
    """``paired bootstrap 95% (nominal)`` (3+ pre-training seeds; see :data:`~overtrain.results.inflection.BOOTSTRAP_KIND`),
    ``range`` (2), ``none`` (1)."""
    units: int

    def describe(self) -> str:
        if self.interval_kind == "none":
            return f"x{self.ratio:.2f} (1 pre-training seed, nothing resampled)"
        return f"x{self.ratio:.2f} ({self.interval_kind} x{self.low:.2f}-x{self.high:.2f} over {self.units} pre-training seeds)"


def unit_table(rows: pd.DataFrame, value: str = "ood_loss_after") -> pd.DataFrame:
    """(pre-training seeds, budgets) table of ``value``, fine-tuning seeds averaged."""
    table = rows.pivot_table(index="pretrain_seed", columns="tokens_seen", values=value, aggfunc="mean").sort_index(axis=1)
    return table.dropna(axis=0)


def inflection_shift(remedy: pd.DataFrame, reference: pd.DataFrame, seed: int = 0) -> Shift | None:
    """Ratio of the remedy's inflection (tokens) to the reference's, from the readings of each (same task).

    The two curves are compared on their common pre-training seeds and budgets; each bootstrap resample draws
    pre-training seeds with replacement and uses the same draw for both curves (paired). None when either
    mean curve has no interior minimum (a remedy that removes the U within the ladder has no shift to state).
    """
    left, right = unit_table(remedy), unit_table(reference)
    seeds = left.index.intersection(right.index)
    budgets = left.columns.intersection(right.columns)
    if len(budgets) < 3 or len(seeds) == 0:
        return None
    left, right = left.loc[seeds, budgets].to_numpy(), right.loc[seeds, budgets].to_numpy()
    x = budgets.to_numpy(dtype=float)
    if not all(0 < int(np.argmin(table.mean(axis=0))) < len(x) - 1 for table in (left, right)):
        return None
    ratio = refined_minimum(x, left.mean(axis=0)) / refined_minimum(x, right.mean(axis=0))
    units = len(seeds)
    if units >= MIN_UNITS_FOR_BOOTSTRAP:
        picks = np.random.default_rng(seed).integers(0, units, size=(BOOTSTRAP_RESAMPLES, units))
        ratios = [refined_minimum(x, left[pick].mean(axis=0)) / refined_minimum(x, right[pick].mean(axis=0)) for pick in picks]
        low, high = np.exp(np.percentile(np.log(ratios), [2.5, 97.5]))
        return Shift(float(ratio), float(low), float(high), f"paired {BOOTSTRAP_KIND}", units)
    if units == 2:
        each = [refined_minimum(x, left[i]) / refined_minimum(x, right[i]) for i in range(2)]
        return Shift(float(ratio), float(min(each)), float(max(each)), "range", units)
    return Shift(float(ratio), float(ratio), float(ratio), "none", 1)


def interpolate_along(sweep: list[tuple[float, float]], at: float) -> float:
    """The second coordinate where the polyline through ``sweep`` (points in sweep order) first reaches ``at`` in
    the first coordinate, linearly within the segment; NaN when no segment spans ``at`` (no extrapolation)."""
    for (x0, y0), (x1, y1) in zip(sweep, sweep[1:]):
        if min(x0, x1) <= at <= max(x0, x1):
            return y0 if x1 == x0 else y0 + (at - x0) * (y1 - y0) / (x1 - x0)
    if len(sweep) == 1 and sweep[0][0] == at:
        return sweep[0][1]
    return float("nan")


def trade_off(readings: pd.DataFrame) -> pd.DataFrame:
    """Per task, budget and remedy: mean ID gain and forgetting, and against plain fine-tuning's LR sweep
    (see the module): ``plain_forgetting_at_equal_gain``, ``forgetting_saved`` (plain's minus the remedy's, > 0
    is better), ``plain_gain_at_equal_forgetting``, ``gain_added`` (the remedy's minus plain's, > 0 is better).
    Plain's own runs are listed too (they lie on the sweep: 0 saved, 0 added)."""
    rows = []
    for (task, tokens), budget in readings.groupby(["task", "tokens_seen"]):
        for (remedy, kind), own in budget.groupby(["remedy", "kind"]):
            # plain's sweep on the same checkpoints and fine-tuning seeds as the remedy's runs
            plain = _plain_means(same_units(budget[budget["kind"] == PLAIN], own))
            by_gain = list(zip(plain["id_gain"], plain["forgetting"]))
            by_forgetting = list(zip(plain["forgetting"], plain["id_gain"]))
            row = {"task": task, "tokens_seen": tokens, "remedy": remedy, "kind": kind, "lr": own["lr"].mean(),
                   "id_gain": own["id_gain"].mean(), "forgetting": own["forgetting"].mean(), "runs": len(own)}
            at_gain = interpolate_along(by_gain, row["id_gain"]) if len(by_gain) >= 2 else float("nan")
            at_forgetting = interpolate_along(by_forgetting, row["forgetting"]) if len(by_forgetting) >= 2 else float("nan")
            rows.append({**row, "plain_forgetting_at_equal_gain": at_gain, "forgetting_saved": at_gain - row["forgetting"],
                         "plain_gain_at_equal_forgetting": at_forgetting, "gain_added": row["id_gain"] - at_forgetting})
    return pd.DataFrame(rows)


def same_units(rows: pd.DataFrame, like: pd.DataFrame) -> pd.DataFrame:
    """The rows of ``rows`` on the checkpoints and fine-tuning seeds that ``like`` has (so that a remedy run on
    fewer seeds is compared with plain runs on exactly those)."""
    units = set(zip(like["checkpoint"], like["seed"]))
    return rows[[unit in units for unit in zip(rows["checkpoint"], rows["seed"])]]


def _plain_means(plain: pd.DataFrame) -> pd.DataFrame:
    """Plain runs' mean ID gain and forgetting per LR, in LR order."""
    return plain.groupby("lr", as_index=False)[["id_gain", "forgetting"]].mean().sort_values("lr")


def ranking(readings: pd.DataFrame, curves: list[RemedyCurve] | None = None) -> dict[str, pd.DataFrame]:
    """Per task, one row per remedy at the largest budget: ID gain, forgetting, forgetting saved at equal ID gain,
    ID gain added at equal forgetting, the inflection and its shift from plain at the same LR; ranked by the
    forgetting saved (largest first), remedies that plain's sweep does not span (NaN) after them by forgetting."""
    curves = curves if curves is not None else remedy_curves(readings)
    table = trade_off(readings)
    result = {}
    for task, rows in table.groupby("task"):
        largest = rows[rows["tokens_seen"] == rows["tokens_seen"].max()].copy()
        inflections = {c.remedy: c for c in curves if c.task == task}
        largest["inflection"] = [_inflection_cell(inflections.get(remedy)) for remedy in largest["remedy"]]
        largest["shift vs plain (same lr)"] = [_shift_cell(readings, task, remedy, inflections) for remedy in largest["remedy"]]
        matched = largest["forgetting_saved"].notna()
        ordered = pd.concat([largest[matched].sort_values("forgetting_saved", ascending=False),
                             largest[~matched].sort_values("forgetting")])
        ordered.insert(0, "rank", range(1, len(ordered) + 1))
        result[str(task)] = ordered.drop(columns=["task", "kind"]).rename(columns={"tokens_seen": "tokens"}).reset_index(drop=True)
    return result


def _inflection_cell(curve: RemedyCurve | None) -> str:
    if curve is None:
        return ""
    inflection = curve.inflection
    if not inflection.interior:
        return f"none (lowest at {format_tokens(inflection.at)})"
    clear = "U" if inflection.u_shaped else "no clear U"
    return f"{format_tokens(inflection.at)} [{inflection.interval_text()}] ({clear})"


def reference_remedy(remedy: str, lr: float) -> str:
    """The plain run a remedy is compared with: plain fine-tuning at the same LR."""
    return f"{PLAIN} lr={lr:g}"


def _shift_cell(readings: pd.DataFrame, task: str, remedy: str, curves: dict[str, RemedyCurve]) -> str:
    curve = curves.get(remedy)
    if curve is None or curve.kind == PLAIN or curve.lr is None:
        return ""
    reference = reference_remedy(remedy, curve.lr)
    if reference not in curves:
        return ""
    on_task = readings[readings["task"] == task]
    own = on_task[on_task["remedy"] == remedy]
    shift = inflection_shift(own, same_units(on_task[on_task["remedy"] == reference], own))
    if shift is None:
        return "no interior minimum in one of the two curves"
    return shift.describe()
