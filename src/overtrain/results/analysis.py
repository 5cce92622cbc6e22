"""From stored probe results to the paper's read-outs: curves vs tokens, inflection points, statistics.

- :func:`noise_frame`, :func:`finetune_frame`: one row per (checkpoint, setting, seed).
- the inflection point (:mod:`overtrain.results.inflection`): the budget that minimizes a loss after a
  change, with an interval over the independent units (pre-training seeds when the sweep has several,
  else the probe's own seeds, and the report says which).
- :func:`spearman`: rank correlation, the monotonicity statistic of progressive sensitivity.
- :func:`noise_summary`, :func:`finetune_summary`: per setting, the curve, its inflection, the statistic.
- :func:`recommend_checkpoints`: which budget to fine-tune for a given (task, lr).
- :func:`noise_predicts_forgetting`: can the cheap probe rank checkpoints like fine-tuning does?
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from overtrain.results.inflection import Inflection, find_inflection
from overtrain.results.store import ResultStore


def noise_frame(store: ResultStore) -> pd.DataFrame:
    """Columns: checkpoint, tokens_seen, gamma, seed, base_loss, perturbed_loss, delta."""
    rows = []
    for row in store.rows(kind="noise"):
        for draw in row.metrics["draws"]:
            rows.append({"checkpoint": row.spec["checkpoint"], "tokens_seen": row.metrics["tokens_seen"], "mode": row.spec["mode"],
                         "base_loss": row.metrics["base_loss"], **draw})
    return pd.DataFrame(rows, columns=["checkpoint", "tokens_seen", "mode", "base_loss", "gamma", "seed", "perturbed_loss", "delta"])


def finetune_frame(store: ResultStore) -> pd.DataFrame:
    return pd.DataFrame([row.metrics for row in store.rows(kind="finetune")])


def pretrain_frame(store: ResultStore) -> pd.DataFrame:
    """Finished pre-training runs (the segments of a WSD trunk are left out: they are not budgets)."""
    return pd.DataFrame([row.metrics for row in store.rows(kind="pretrain") if not row.metrics.get("trunk_segment")])


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
    """Per gamma: perturbed loss vs tokens, its inflection, Spearman(delta, tokens)."""
    return [_summarize(f"gamma={gamma:g}", group, "perturbed_loss", "delta", "noise seeds") for gamma, group in frame.groupby("gamma")]


def finetune_summary(frame: pd.DataFrame, value: str = "ood_loss_after") -> dict[str, list[SettingSummary]]:
    """Per task, per (lr, reg_lambda): ``value`` vs tokens, its inflection, Spearman(forgetting, tokens)."""
    result: dict[str, list[SettingSummary]] = {}
    for task, by_task in frame.groupby("task"):
        summaries = []
        for (lr, reg_lambda), group in by_task.groupby(["lr", "reg_lambda"]):
            name = f"lr={lr:g}" + (f", lambda={reg_lambda:g}" if reg_lambda else "")
            summaries.append(_summarize(name, group, value, "forgetting", "fine-tuning seeds"))
        result[str(task)] = summaries
    return result


def recommend_checkpoints(frame: pd.DataFrame) -> pd.DataFrame:
    """Per (task, lr, reg_lambda): the budget with the best mean ID loss after fine-tuning, and with the
    least pre-training loss after fine-tuning (what is kept of the base model)."""
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
    """Spearman, across budgets, between the noise delta (per gamma) and the forgetting (per task, lr)."""
    delta = noise.groupby(["gamma", "tokens_seen"])["delta"].mean()
    forgetting = finetune[finetune["reg_lambda"] == 0].groupby(["task", "lr", "tokens_seen"])["forgetting"].mean()
    rows = []
    for gamma in delta.index.get_level_values(0).unique():
        for (task, lr) in forgetting.index.droplevel(2).unique():
            joined = pd.concat([delta.loc[gamma], forgetting.loc[(task, lr)]], axis=1, join="inner").dropna()
            if len(joined) >= 3:
                rows.append({"gamma": gamma, "task": task, "lr": lr, "budgets": len(joined),
                             "spearman": spearman(joined.iloc[:, 0].to_numpy(), joined.iloc[:, 1].to_numpy())})
    return pd.DataFrame(rows)
