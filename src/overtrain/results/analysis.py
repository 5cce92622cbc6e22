"""From stored probe results to the paper's read-outs: curves vs tokens, inflection points, statistics.

- :func:`noise_frame`, :func:`finetune_frame`: one row per (checkpoint, setting, seed).
- the inflection point (:mod:`overtrain.results.inflection`): the budget that minimizes a loss after a
  change, with an interval over the independent units (pre-training seeds when the sweep has several,
  else the probe's own seeds, and the report says which).
- :func:`spearman`: rank correlation, the monotonicity statistic of progressive sensitivity.
- :func:`noise_summary`, :func:`finetune_summary`: per setting, the curve, its inflection, the statistic.
- :func:`recommend_checkpoints`: which budget to fine-tune for a given (task, lr).
- :func:`noise_predicts_forgetting`: can the cheap probe rank checkpoints like fine-tuning does?
- :func:`sharpness_frame`, :func:`sharpness_summary`, :func:`sharpness_predicts_forgetting`: the same for
  the sharpness probes (top Hessian eigenvalue, Hessian trace, worst-case loss increase).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from overtrain.errors import OvertrainError
from overtrain.results.inflection import Inflection, find_inflection
from overtrain.results.store import ResultRow, ResultStore, delete_row_fix
from overtrain.results.tuned import REMEDY_DEFAULTS, with_remedy_columns
from overtrain.units import format_tokens

PRETRAIN_SEED_FACTOR = "train.seed"
FACTOR_PREFIX = "pretrain."
"""Columns of pre-training factors other than the seed are named ``pretrain.<dotted key>``."""


def factor_columns(factors: dict[str, Any]) -> dict[str, Any]:
    """A row's pre-training factors as columns: ``pretrain_seed`` and ``pretrain.<key>`` for the others."""
    columns = {f"{FACTOR_PREFIX}{key}": value for key, value in factors.items() if key != PRETRAIN_SEED_FACTOR}
    if PRETRAIN_SEED_FACTOR in factors:
        columns["pretrain_seed"] = factors[PRETRAIN_SEED_FACTOR]
    return columns


def run_factor_columns(run_settings: list[dict[str, Any] | None]) -> list[dict[str, Any]]:
    """For rows probed on checkpoints of several pre-training runs (each row's ``run_settings``: the settings
    fixed within its run, recorded by the probe job), the settings that tell the runs apart as factor columns:
    ``pretrain_seed`` for the seed (intervals over pre-training seeds), ``pretrain.<key>`` for the others
    (curve families). Without them the curves averaged different models at each token count. A ladder's
    rungs share these settings, so they stay one curve; rows that hold no record (older rows, models
    overtrain did not train) leave every row as it was; settings a row lacks (added in a later version)
    are not compared."""
    if not run_settings or any(settings is None for settings in run_settings):
        return [{} for _ in run_settings]
    shared = set.intersection(*(set(settings) for settings in run_settings))
    telling = [key for key in sorted(shared) if len({_as_factor_value(settings[key]) for settings in run_settings}) > 1]
    name = lambda key: "pretrain_seed" if key == PRETRAIN_SEED_FACTOR else f"{FACTOR_PREFIX}{key}"
    return [{name(key): _as_factor_value(settings[key]) for key in telling} for settings in run_settings]


def _as_factor_value(value: Any) -> Any:
    """A setting as a factor column's value: scalars as they are, anything else (a mapping) as compact JSON."""
    return value if value is None or isinstance(value, (bool, int, float, str)) else json.dumps(value, sort_keys=True)


def factor_columns_of(rows: list[ResultRow]) -> list[dict[str, Any]]:
    """Each row's pre-training factors as columns: those its sweep gave it (:func:`factor_columns`), then the
    run settings that tell its run apart from the others' (:func:`run_factor_columns`) where no sweep factor
    of that name is set."""
    given = [factor_columns(row.metrics.get("factors", {})) for row in rows]
    derived = run_factor_columns([row.metrics.get("run_settings") for row in rows])
    named = {column for columns in given for column in columns}
    return [{**{k: v for k, v in extra.items() if k not in named}, **own} for own, extra in zip(given, derived)]


REQUIRED_FIELDS = {
    "noise": (("checkpoint", "mode"), ("tokens_seen", "base_loss", "draws")),
    "sharpness": (("checkpoint",), ("tokens_seen", "records")),
    "finetune": ((), ("checkpoint", "tokens_seen", "task", "lr", "seed", "reg_lambda", "id_loss_before", "id_loss_after",
                      "ood_loss_before", "ood_loss_after", "forgetting")),
    "pretrain": ((), ("tokens_seen",)),
}
"""(spec keys, metric names) that every stored job of a kind has held since the kind existed (later
additions, such as the remedies' columns or a pre-training run's weight norm, are left out: older rows
lack them, and the read-outs fill them in or skip them)."""


def checked_rows(store: ResultStore, kind: str) -> list[ResultRow]:
    """The store's rows of one job kind, each checked to hold :data:`REQUIRED_FIELDS`: a row that lacks one
    (written by hand, or by a tool that is not overtrain) is named with the way out, instead of failing as a
    KeyError deep in a read-out or, worse, entering a curve as a missing value."""
    spec_keys, metric_names = REQUIRED_FIELDS[kind]
    rows = store.rows(kind=kind)
    for row in rows:
        missing = [f"spec.{key}" for key in spec_keys if key not in row.spec]
        missing += [f"metrics.{name}" for name in metric_names if name not in row.metrics]
        if missing:
            raise OvertrainError(
                f"the {kind} row of job {row.key} ({row.label}) in results store {store.path} lacks {', '.join(missing)}, "
                f"which every {kind} job writes",
                delete_row_fix(store.path, row.key),
            )
        non_finite = non_finite_readouts(kind, row.metrics)
        if non_finite:  # stored by an older overtrain, whose probes did not refuse them: a curve cannot use them
            raise OvertrainError(
                f"the {kind} row of job {row.key} ({row.label}) in results store {store.path} holds {', '.join(non_finite[:3])}",
                delete_row_fix(store.path, row.key) + " (with smaller gammas or a lower lr, if the change overflowed)",
            )
    return rows


def non_finite_readouts(kind: str, metrics: dict[str, Any]) -> list[str]:
    """The read-outs of a row that are not finite numbers (``name=value``): the losses of noise and
    fine-tuning rows, the values of sharpness records."""
    named: list[tuple[str, Any]] = []
    if kind == "noise":
        named = [("base_loss", metrics.get("base_loss"))]
        named += [(f"perturbed_loss at gamma {draw.get('gamma')}", draw.get("perturbed_loss")) for draw in metrics.get("draws", [])]
    elif kind == "finetune":
        named = [(name, metrics.get(name)) for name in ("ood_loss_before", "ood_loss_after", "id_loss_after")]
    elif kind == "sharpness":
        named = [(f"{record.get('kind')} value", record.get("value")) for record in metrics.get("records", [])]
    return [f"{name}={value}" for name, value in named if isinstance(value, float) and not math.isfinite(value)]


def noise_frame(store: ResultStore) -> pd.DataFrame:
    """Columns: checkpoint, tokens_seen, mode, base_loss, gamma, seed, perturbed_loss, delta, and the factors."""
    rows, stored = [], checked_rows(store, "noise")
    for row, factors in zip(stored, factor_columns_of(stored)):
        for draw in row.metrics["draws"]:
            rows.append({"checkpoint": row.spec["checkpoint"], "tokens_seen": row.metrics["tokens_seen"], "mode": row.spec["mode"],
                         "base_loss": row.metrics["base_loss"], **draw, **factors})
    columns = ["checkpoint", "tokens_seen", "mode", "base_loss", "gamma", "seed", "perturbed_loss", "delta"]
    frame = pd.DataFrame(rows)
    return frame if not frame.empty else pd.DataFrame(columns=columns)


SHARPNESS_COLUMNS = ["checkpoint", "tokens_seen", "kind", "group", "gamma", "seed", "value", "stderr", "measure"]


def sharpness_measure(kind: str, group: str, gamma: float | None) -> str:
    """The name of one sharpness curve: ``hessian_top``, ``worst_case gamma=2``, ``hessian_trace [attention]``."""
    name = kind if gamma is None or pd.isna(gamma) else f"{kind} gamma={gamma:g}"
    return name if group == "all" else f"{name} [{group}]"


def sharpness_frame(store: ResultStore) -> pd.DataFrame:
    """One row per sharpness read-out: checkpoint, tokens_seen, kind, group, gamma (worst_case; else NaN),
    seed, value, stderr, measure (kind, gamma and group as one name), and the pre-training factors."""
    rows, stored = [], checked_rows(store, "sharpness")
    for row, factors in zip(stored, factor_columns_of(stored)):
        for record in row.metrics["records"]:
            gamma = record.get("gamma")
            rows.append({"checkpoint": row.spec["checkpoint"], "tokens_seen": row.metrics["tokens_seen"], "kind": record["kind"],
                         "group": record["group"], "gamma": float("nan") if gamma is None else float(gamma), "seed": record["seed"],
                         "value": record["value"], "stderr": record.get("stderr"),
                         "measure": sharpness_measure(record["kind"], record["group"], gamma), **factors})
    frame = pd.DataFrame(rows)
    return frame if not frame.empty else pd.DataFrame(columns=SHARPNESS_COLUMNS)


def finetune_frame(store: ResultStore) -> pd.DataFrame:
    """One row per fine-tuning run: its record and its pre-training factors (remedy columns of older rows
    filled in as off: ``replay_fraction`` 0, ``linear_probe_steps`` 0)."""
    stored = checked_rows(store, "finetune")
    frame = pd.DataFrame([_without_factors(row.metrics) | factors for row, factors in zip(stored, factor_columns_of(stored))])
    return with_remedy_columns(frame) if not frame.empty else frame


def plain_runs(finetune: pd.DataFrame) -> pd.DataFrame:
    """The plain fine-tuning runs of a frame: no L2 pull, no replay, no LP-FT (the paper's fixed-LR runs)."""
    frame = with_remedy_columns(finetune)
    return finetune[np.logical_and.reduce([frame[column] == off for column, off in REMEDY_DEFAULTS.items()])]


def pretrain_frame(store: ResultStore) -> pd.DataFrame:
    """Finished pre-training runs (the segments of a WSD trunk are left out: they are not budgets)."""
    return pd.DataFrame([_without_factors(row.metrics) | factor_columns(row.metrics.get("factors", {}))
                         for row in checked_rows(store, "pretrain") if not row.metrics.get("trunk_segment")])


EVALUATION_COLUMNS = ["probe", "measured on", "tokens asked", "tokens measured", "jobs"]


def evaluation_text_frame(store: ResultStore) -> pd.DataFrame:
    """What each probe kind measured the pre-training loss on: one row per (kind, text, tokens asked,
    tokens measured) with its number of jobs. Fewer tokens measured than asked means the held-out split or
    the text was shorter than ``eval_tokens``: the row's loss is still exact, over fewer tokens."""
    counts = Counter((row.kind, row.provenance["eval_source"], row.spec.get("eval_tokens"), row.provenance.get("eval_tokens_measured"))
                     for row in store.rows() if row.provenance.get("eval_source") is not None)
    return pd.DataFrame([[*key, jobs] for key, jobs in sorted(counts.items(), key=str)], columns=EVALUATION_COLUMNS)


def _without_factors(metrics: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in metrics.items() if key not in ("factors", "run_settings")}


def factor_names(frame: pd.DataFrame) -> list[str]:
    """The pre-training factor columns (other than the seed) that take more than one value in ``frame``."""
    return [c for c in frame.columns if c.startswith(FACTOR_PREFIX) and frame[c].nunique(dropna=True) > 1]


def factor_label(values: tuple[Any, ...] | Any, names: list[str]) -> str:
    """``(1.0,), ["pretrain.train.weight_decay"]`` -> ``weight_decay=1``: a curve family's factor values."""
    values = values if isinstance(values, tuple) else (values,)
    return " ".join(f"{name.rsplit('.', 1)[-1]}={value:g}" if isinstance(value, float) else f"{name.rsplit('.', 1)[-1]}={value}"
                    for name, value in zip(names, values))


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman rank correlation (average ranks for ties); NaN when either side is constant."""
    x_ranks, y_ranks = pd.Series(x).rank().to_numpy(), pd.Series(y).rank().to_numpy()
    if x_ranks.std() == 0 or y_ranks.std() == 0:
        return float("nan")
    return float(np.corrcoef(x_ranks, y_ranks)[0, 1])


@dataclass(frozen=True)
class SettingSummary:
    """One curve of the report: a loss after a change vs tokens, for one setting."""

    name: str
    tokens: list[int]
    mean: list[float]
    low: list[float]
    high: list[float]
    inflection: Inflection
    sensitivity_spearman: float
    """Rank correlation of the damage (delta or forgetting) with tokens, over budgets and seeds."""
    damage_mean: list[float]


def _units_table(frame: pd.DataFrame, value: str, probe_units: str) -> tuple[pd.DataFrame, str]:
    """(units, budgets) table of ``value`` and what a unit is.

    With several pre-training seeds, a unit is one pre-training seed (its probe seeds averaged), so the
    interval includes pre-training variation; otherwise a unit is one probe seed of a single
    pre-training run, and the interval says so.
    """
    pretrain_seeds = frame["pretrain_seed"].dropna().unique() if "pretrain_seed" in frame else []
    if len(pretrain_seeds) > 1:
        index, units = "pretrain_seed", "pre-training seeds"
    else:
        index, units = "seed", f"{probe_units} (one pre-training seed)"
    table = frame.pivot_table(index=index, columns="tokens_seen", values=value, aggfunc="mean").sort_index(axis=1)
    return table.dropna(axis=0), units


def summarize_setting(name: str, frame: pd.DataFrame, value: str, damage: str, probe_units: str) -> SettingSummary:
    """One curve of ``value`` vs tokens over the rows of one setting (see :func:`_summarize`)."""
    return _summarize(name, frame, value, damage, probe_units)


def _summarize(name: str, frame: pd.DataFrame, value: str, damage: str, probe_units: str) -> SettingSummary:
    table, units = _units_table(frame, value, probe_units)
    tokens = table.columns.to_numpy()
    grouped = frame.groupby("tokens_seen")
    return SettingSummary(
        name=name,
        tokens=[int(t) for t in tokens],
        mean=[float(v) for v in table.mean(axis=0)],
        low=[float(v) for v in table.min(axis=0)],
        high=[float(v) for v in table.max(axis=0)],
        inflection=find_inflection(tokens, table.to_numpy(), resampled=units),
        sensitivity_spearman=spearman(frame["tokens_seen"].to_numpy(), frame[damage].to_numpy()),
        damage_mean=[float(v) for v in grouped[damage].mean().loc[tokens]],
    )


def noise_summary(frame: pd.DataFrame) -> list[SettingSummary]:
    """Per pre-training factor value and gamma: perturbed loss vs tokens, its inflection, Spearman(delta, tokens)."""
    factors = factor_names(frame)
    summaries = []
    for values, group in frame.groupby([*factors, "gamma"]):
        values = values if isinstance(values, tuple) else (values,)
        name = " ".join(filter(None, [factor_label(values[:-1], factors), f"gamma={values[-1]:g}"]))
        summaries.append(_summarize(name, group, "perturbed_loss", "delta", "noise seeds"))
    return summaries


def finetune_summary(frame: pd.DataFrame, value: str = "ood_loss_after") -> dict[str, list[SettingSummary]]:
    """Per task, per (lr, reg_lambda, replay_fraction, linear_probe_steps): ``value`` vs tokens, its inflection,
    Spearman(forgetting, tokens)."""
    result: dict[str, list[SettingSummary]] = {}
    frame = with_remedy_columns(frame)
    factors = factor_names(frame)
    for task, by_task in frame.groupby("task"):
        summaries = []
        for values, group in by_task.groupby([*factors, "lr", *REMEDY_DEFAULTS]):
            *factor_values, lr, reg_lambda, replay_fraction, linear_probe_steps = values
            name = " ".join(filter(None, [factor_label(tuple(factor_values), factors), f"lr={lr:g}"]))
            name += f", lambda={reg_lambda:g}" if reg_lambda else ""
            name += f", replay={replay_fraction:g}" if replay_fraction else ""
            name += f", lp_steps={linear_probe_steps:g}" if linear_probe_steps else ""
            summaries.append(_summarize(name, group, value, "forgetting", "fine-tuning seeds"))
        result[str(task)] = summaries
    return result


def recommend_checkpoints(frame: pd.DataFrame) -> pd.DataFrame:
    """Per (task, lr, reg_lambda) of the plain and L2 runs: the budget with the best mean ID loss after fine-tuning,
    and with the least pre-training loss after fine-tuning (what is kept of the base model). Replay and LP-FT
    runs are in the remedies section."""
    frame = with_remedy_columns(frame)
    frame = frame[(frame["replay_fraction"] == 0) & (frame["linear_probe_steps"] == 0)]
    means = frame.groupby(["task", "lr", "reg_lambda", "tokens_seen"], as_index=False)[["id_loss_after", "ood_loss_after"]].mean()
    rows = []
    for (task, lr, reg_lambda), group in means.groupby(["task", "lr", "reg_lambda"]):
        best_id = group.loc[group["id_loss_after"].idxmin()]
        best_ood = group.loc[group["ood_loss_after"].idxmin()]
        rows.append({"task": task, "lr": lr, "reg_lambda": reg_lambda,
                     "best_for_task_tokens": int(best_id["tokens_seen"]), "task_loss_there": best_id["id_loss_after"],
                     "best_for_retention_tokens": int(best_ood["tokens_seen"]), "pretraining_loss_there": best_ood["ood_loss_after"],
                     "largest_budget": int(group["tokens_seen"].max())})
    return pd.DataFrame(rows)


def noise_predicts_forgetting(noise: pd.DataFrame, finetune: pd.DataFrame) -> pd.DataFrame:
    """Spearman, across budgets, between the noise delta (per gamma) and the forgetting (per task, lr), within
    each pre-training factor family (means over seeds; needs three budgets): two families' budgets are
    different models, so they are never pooled into one curve."""
    return _reading_predicts_forgetting(noise, "gamma", "delta", finetune)


def sharpness_summary(frame: pd.DataFrame) -> list[SettingSummary]:
    """Per pre-training factor value and measure: the sharpness vs tokens (mean and range over pre-training
    seeds when there are several, else over probe seeds) and Spearman(sharpness, tokens)."""
    factors = factor_names(frame)
    summaries = []
    for values, group in frame.groupby([*factors, "measure"], sort=True):
        values = values if isinstance(values, tuple) else (values,)
        name = " ".join(filter(None, [factor_label(values[:-1], factors), str(values[-1])]))
        summaries.append(_summarize(name, group, "value", "value", "probe seeds"))
    return summaries


def sharpness_predicts_forgetting(sharpness: pd.DataFrame, finetune: pd.DataFrame) -> pd.DataFrame:
    """Spearman, across budgets, between each sharpness measure and the forgetting (per task, lr), within
    each pre-training factor family (means over seeds; needs three budgets)."""
    return _reading_predicts_forgetting(sharpness, "measure", "value", finetune)


def _reading_predicts_forgetting(readings: pd.DataFrame, by: str, value: str, finetune: pd.DataFrame) -> pd.DataFrame:
    """Rows of Spearman(``value``, forgetting) per ``by`` (a gamma, a sharpness measure), fine-tuning run and
    factor family, from the readings' and the fine-tuning's means over seeds."""
    factors = [name for name in factor_names(readings) if name in finetune.columns]
    keys = [*factors, "tokens_seen"]
    reading = readings.groupby([by, *keys])[value].mean()
    forgetting = plain_runs(finetune).groupby(["task", "lr", *keys])["forgetting"].mean()
    return pd.DataFrame([{by: level, **row} for level in reading.index.get_level_values(0).unique()
                         for row in _correlations_within_families(reading.loc[level], forgetting, factors)])


def _correlations_within_families(reading: pd.Series, forgetting: pd.Series, factors: list[str]) -> list[dict[str, Any]]:
    """Rows of Spearman(reading, forgetting) across the budgets of each factor family and fine-tuning run
    (task, lr): ``reading`` is indexed by (*factors, tokens_seen), ``forgetting`` by (task, lr, *factors,
    tokens_seen); a family needs three shared budgets."""
    rows = []
    for (task, lr) in forgetting.index.droplevel(list(range(2, 3 + len(factors)))).unique():
        joined = pd.concat([reading, forgetting.loc[(task, lr)]], axis=1, join="inner").dropna()
        families = joined.groupby(level=list(range(len(factors)))) if factors else [((), joined)]
        for family, part in families:
            if len(part) >= 3:
                label = factor_label(family if isinstance(family, tuple) else (family,), factors) if factors else ""
                rows.append({**({"family": label} if factors else {}), "task": task, "lr": lr, "budgets": len(part),
                             "spearman": spearman(part.iloc[:, 0].to_numpy(), part.iloc[:, 1].to_numpy())})
    return rows


@dataclass(frozen=True)
class Claim:
    """One of the paper's claims (a)-(d), whether this sweep shows it, and the numbers that say so."""

    label: str
    holds: bool
    evidence: str

    def headline(self) -> str:
        return f"claim {self.label}: {'SHOWN' if self.holds else 'not shown'} - {self.evidence}"


def paper_claims(noise: pd.DataFrame, finetune: pd.DataFrame) -> list[Claim]:
    """The demo's claims, within each curve family: for the noise probe (a) damage grows with tokens, (b) the
    perturbed loss is U-shaped, (c) a larger gamma has an earlier minimum; for fixed-LR fine-tuning (d) the
    same three on the pre-training loss after fine-tuning, with the LR as the size of the change."""
    claims = []
    if not noise.empty:
        summaries = noise_summary(noise)
        claims += _family_claims("noise", "gamma", summaries, NOISE_LABELS)
    if not finetune.empty:
        for task, summaries in finetune_summary(plain_runs(finetune), "ood_loss_after").items():
            claims += _family_claims(f"fine-tuning {task}", "lr", summaries, FINETUNE_LABELS)
    return claims


NOISE_LABELS = ("(a) noise damage grows with tokens", "(b) perturbed loss is U-shaped", "(c) larger gamma, earlier minimum")
FINETUNE_LABELS = ("(d) forgetting grows with tokens", "(d) loss after fine-tuning is U-shaped", "(d) larger LR, earlier minimum")


def _family_claims(probe: str, knob: str, summaries: list[SettingSummary], labels: tuple[str, str, str]) -> list[Claim]:
    """Claims over one probe's settings; summaries are named '<factors> <knob>=<value>'."""
    families: dict[str, list[tuple[float, SettingSummary]]] = {}
    for summary in summaries:
        prefix, _, value = summary.name.rpartition(f"{knob}=")
        families.setdefault(prefix.strip(), []).append((float(value.split(",")[0]), summary))
    claims = []
    for family, members in families.items():
        members.sort(key=lambda pair: pair[0])
        where = f"{probe}{' ' + family if family else ''}"
        rho = ", ".join(f"{s.sensitivity_spearman:+.2f}" for _, s in members)
        knobs = "/".join(f"{v:g}" for v, _ in members)
        claims.append(Claim(labels[0], all(s.sensitivity_spearman > 0 for _, s in members),
                            f"{where}: Spearman(damage, tokens) {rho} at {knob} {knobs}"))
        u_shaped = [(v, s) for v, s in members if s.inflection.u_shaped]
        minima = "; ".join(f"{knob} {v:g}: {s.inflection.describe()}" for v, s in members)
        claims.append(Claim(labels[1], bool(u_shaped), f"{where}: {minima}"))
        claims.append(_earlier_claim(labels[2], where, knob, members))
    return claims


def _earlier_claim(label: str, where: str, knob: str, members: list[tuple[float, SettingSummary]]) -> Claim:
    """Larger change, earlier minimum: among U-shaped settings the minima fall as the knob grows, and a
    setting without a U (still improving at the largest budget) sits only below those with one."""
    u_points = [(v, s.inflection.at) for v, s in members if s.inflection.u_shaped]
    ordered = all(later <= earlier for (_, earlier), (_, later) in zip(u_points, u_points[1:]))
    no_u_values = [v for v, s in members if not s.inflection.u_shaped and not s.inflection.interior]
    consistent = all(v < min(u for u, _ in u_points) for v in no_u_values) if u_points else False
    holds = len(u_points) >= 2 and ordered and consistent
    text = ", ".join(f"{knob} {v:g} -> {format_tokens(at)}" for v, at in u_points) or "fewer than two U-shaped settings"
    if not holds and len(u_points) < 2:
        interior = [(v, s.inflection.at) for v, s in members if s.inflection.interior]
        if len(interior) >= 2:  # say what the curves show, and that it is not clear of the seeds' noise
            listed = ", ".join(f"{knob} {v:g} -> {format_tokens(at)}" for v, at in interior)
            text += f"; interior minima, not all clear of the noise: {listed}"
    return Claim(label, holds, f"{where}: {text}")
