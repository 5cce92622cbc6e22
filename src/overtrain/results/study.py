"""The fine-tuning-U study (configs/study/finetune_u.yaml, docs/finetune_u.md): per pre-training setting,
does the pre-training loss after fixed-LR fine-tuning turn up with more tokens, where, and why (not)?

The loss after fine-tuning is the base model's loss plus the forgetting, so per doubling of tokens it
changes by (growth of the forgetting) - (gain of the base model): the curve turns up exactly where the
forgetting grows faster than the base improves. Per setting (one combination of the sweep's pre-training
factors) and fine-tuning run (task, lr, steps), this module gives:

- :func:`doubling_slopes`: both rates between consecutive budgets, in nats per doubling, per unit;
- :func:`unit_interval`: their mean with an interval over the units (pre-training seeds when a setting has
  several: Student's t 95% with 3 or more, the range with 2, none with 1, and it says which; a percentile
  bootstrap of a mean over 3 units covers ~76% of the time, not 95%);
- the inflection of the loss after fine-tuning (:func:`overtrain.results.inflection.find_inflection`);
- :func:`crossing_estimates`: for a curve without a U, extrapolations (labelled as such) of the budget where
  the forgetting's growth would overtake the base's gain, from the trends of the last doublings, under two
  models of how the growth slows (the answer depends on the model, so both are given);
- the sharpness curves, and whether sharpness predicts forgetting: across settings at each budget, since
  within one setting both rise with tokens and their correlation there shows only that shared trend.

``python -m overtrain.results.study runs/study/finetune_u [--figures DIR] [--markdown FILE]`` prints the
tables (markdown) and writes the figures; the sweep report adds the two main tables (:func:`study_tables`).
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from overtrain.atomic import atomic_write_text
from overtrain.errors import OvertrainError
from overtrain.results import analysis
from overtrain.results.inflection import MIN_UNITS_FOR_BOOTSTRAP, Inflection, find_inflection
from overtrain.results.student_t import t_quantile
from overtrain.units import format_tokens

LATE_DOUBLINGS = 3
"""The crossing estimate extrapolates the trends of this many last doublings of the ladder."""
MAX_EXTRAPOLATED_DOUBLINGS = 20
"""The crossing estimate looks at most this many doublings past the largest budget (x1M)."""


@dataclass(frozen=True)
class Interval:
    """A mean over units with what its interval is and over what."""

    mean: float
    low: float
    high: float
    kind: str
    """``t 95%`` (3+ units), ``range`` (2 units) or ``none`` (1 unit: no interval)."""
    units: int
    resampled: str

    def describe(self, digits: int = 3) -> str:
        if self.kind == "none":
            return f"{self.mean:+.{digits}f}"
        return f"{self.mean:+.{digits}f} [{self.low:+.{digits}f}, {self.high:+.{digits}f}]"


def unit_interval(values: np.ndarray, resampled: str) -> Interval:
    """Mean of per-unit ``values`` (shape (units,)) with Student's t 95% interval over the units (3+:
    mean +- t_{0.975, n-1} s / sqrt(n)), their range (2) or no interval (1)."""
    values = np.asarray(values, dtype=float)
    units = len(values)
    mean = float(values.mean())
    if units >= MIN_UNITS_FOR_BOOTSTRAP:
        half_width = t_quantile(0.975, units - 1) * float(values.std(ddof=1)) / math.sqrt(units)
        return Interval(mean, mean - half_width, mean + half_width, "t 95%", units, resampled)
    if units == 2:
        return Interval(mean, float(values.min()), float(values.max()), "range", units, resampled)
    return Interval(mean, mean, mean, "none", units, resampled)


def doubling_slopes(tokens: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Change per doubling between consecutive budgets: shape (units, budgets - 1), in the table's unit per
    doubling of tokens, i.e. (v[k+1] - v[k]) / log2(t[k+1] / t[k]) for each unit's row."""
    tokens = np.asarray(tokens, dtype=float)
    table = np.atleast_2d(np.asarray(table, dtype=float))
    return np.diff(table, axis=1) / np.log2(tokens[1:] / tokens[:-1])


@dataclass(frozen=True)
class CrossingEstimate:
    """Where the forgetting's growth per doubling would overtake the base's gain per doubling, by
    extrapolating both from the last doublings under one model of how they slow: an estimate, not a
    measurement."""

    tokens: float | None
    """Budget at the end of the first doubling past the ladder where growth > gain; None: not within
    ``MAX_EXTRAPOLATED_DOUBLINGS`` doublings."""
    method: str

    def describe(self) -> str:
        if self.tokens is None:
            return f"no crossing within {MAX_EXTRAPOLATED_DOUBLINGS} doublings past the ladder ({self.method})"
        return f"~{format_tokens(self.tokens)} (extrapolated: {self.method})"


GROWTH_MODELS = ("geometric", "linear")
"""How the forgetting's growth per doubling is extrapolated: a geometric decay like the base's gain (it slows
but never stops), or a line (it stops, then turns negative). Fit to the same three doublings they can give
opposite answers (docs/finetune_u.md), so :func:`crossing_estimates` gives both."""


def crossing_estimate(tokens: np.ndarray, base_gain: np.ndarray, forgetting_growth: np.ndarray,
                      doublings: int = LATE_DOUBLINGS, growth_model: str = "linear") -> CrossingEstimate:
    """From the mean per-doubling rates of a ladder (length budgets - 1): the base's gain modelled as a
    geometric decay (a line in log gain over the doubling index), the forgetting's growth as ``growth_model``
    (:data:`GROWTH_MODELS`), both fit to the last ``doublings`` doublings; the first later doubling whose
    growth exceeds its gain."""
    if growth_model not in GROWTH_MODELS:
        raise ValueError(f"growth_model must be one of {GROWTH_MODELS}, got {growth_model!r}")
    tokens = np.asarray(tokens, dtype=float)
    gain, growth = np.asarray(base_gain, dtype=float)[-doublings:], np.asarray(forgetting_growth, dtype=float)[-doublings:]
    index = np.log2(tokens[1:] / tokens[0])[-doublings:]  # doubling index of each interval's end
    method = f"base gain as a geometric decay and forgetting growth as a {'geometric decay' if growth_model == 'geometric' else 'line'} " \
             f"over the last {len(gain)} doublings"
    if len(gain) < 2 or np.any(gain <= 0):
        return CrossingEstimate(None, method + "; the base gain is not positive throughout, no decay to extrapolate")
    if growth_model == "geometric" and np.any(growth <= 0):
        return CrossingEstimate(None, method + "; the forgetting growth is not positive throughout, no decay to extrapolate")
    gain_fit = np.polyfit(index, np.log(gain), 1)
    growth_fit = np.polyfit(index, np.log(growth) if growth_model == "geometric" else growth, 1)
    for ahead in range(1, MAX_EXTRAPOLATED_DOUBLINGS + 1):
        k = index[-1] + ahead
        growth_there = np.polyval(growth_fit, k)
        growth_there = math.exp(growth_there) if growth_model == "geometric" else growth_there
        if growth_there > math.exp(np.polyval(gain_fit, k)):
            return CrossingEstimate(float(tokens[-1] * 2.0**ahead), method)
    return CrossingEstimate(None, method)


def crossing_estimates(tokens: np.ndarray, base_gain: np.ndarray, forgetting_growth: np.ndarray,
                       doublings: int = LATE_DOUBLINGS) -> list[CrossingEstimate]:
    """:func:`crossing_estimate` under each of :data:`GROWTH_MODELS`."""
    return [crossing_estimate(tokens, base_gain, forgetting_growth, doublings, model) for model in GROWTH_MODELS]


@dataclass(frozen=True)
class SettingResult:
    """One pre-training setting x fine-tuning run of the study, read from the stored rows."""

    name: str
    factors: dict[str, Any]
    task: str
    lr: float
    steps: int
    resampled: str
    tokens: list[int]
    base_loss: list[float]
    forgetting: list[float]
    loss_after: list[float]
    base_gain: list[Interval]
    """Per doubling between consecutive budgets: -(change of the base model's held-out loss), nats/doubling."""
    forgetting_growth: list[Interval]
    """Per doubling: change of the forgetting (loss after - loss before fine-tuning), nats/doubling."""
    inflection: Inflection
    crossings: list[CrossingEstimate]
    """One per model of :data:`GROWTH_MODELS`; empty for a setting whose loss after fine-tuning is U-shaped."""


FINETUNE_RUN_KEYS = ["task", "lr", "steps"]


def setting_names(frame: pd.DataFrame, factors: list[str]) -> dict[tuple, str]:
    """A short name per factor combination: weight decay always, then every other factor whose value
    differs from its most common value across the combinations (e.g. ``wd=3 schedule=constant``)."""
    combos = frame[factors].drop_duplicates().itertuples(index=False, name=None) if factors else [()]
    combos = list(combos)
    modal = {name: pd.Series([combo[i] for combo in combos]).mode().iloc[0] for i, name in enumerate(factors)}
    names = {}
    for combo in combos:
        parts = []
        for name, value in zip(factors, combo):
            short = name.removeprefix(analysis.FACTOR_PREFIX).split(".", 1)[-1]
            if short == "weight_decay":
                parts.insert(0, f"wd={value:g}")
            elif value != modal[name]:
                parts.append(f"{short}={value:g}" if isinstance(value, float) else f"{short}={value}")
        names[combo] = " ".join(parts) or "base"
    return names


def study_settings(finetune: pd.DataFrame) -> list[SettingResult]:
    """Every setting x (task, lr, steps) of a fine-tuning frame (plain fine-tuning rows only)."""
    plain = analysis.plain_runs(finetune)
    factors = analysis.factor_names(plain)
    names = setting_names(plain, factors)
    results = []
    for keys, rows in plain.groupby([*factors, *FINETUNE_RUN_KEYS], sort=True):
        keys = keys if isinstance(keys, tuple) else (keys,)
        combo, (task, lr, steps) = tuple(keys[: len(factors)]), keys[len(factors):]
        results.append(_setting_result(rows, names[combo], dict(zip(factors, combo)), str(task), float(lr), int(steps)))
    return results


def _unit_tables(rows: pd.DataFrame) -> tuple[dict[str, pd.DataFrame], str]:
    """(units, budgets) tables of the base loss, the forgetting and the loss after, and what a unit is."""
    several_seeds = "pretrain_seed" in rows and rows["pretrain_seed"].nunique() > 1
    unit = "pretrain_seed" if several_seeds else "seed"
    tables = {column: rows.pivot_table(index=unit, columns="tokens_seen", values=column, aggfunc="mean").sort_index(axis=1)
              for column in ("ood_loss_before", "forgetting", "ood_loss_after")}
    complete = tables["ood_loss_after"].dropna().index  # units with every budget (a run still in progress is left out)
    if len(complete) == 0:  # no unit has every budget yet: the budgets they all have
        tables = {column: table.dropna(axis=1) for column, table in tables.items()}
        complete = tables["ood_loss_after"].index
    tables = {column: table.loc[complete].dropna(axis=1) for column, table in tables.items()}
    count = len(complete)
    if unit == "pretrain_seed":
        resampled = "pre-training seeds" if count > 1 else "one pre-training seed"
    else:
        resampled = "fine-tuning seeds of one pre-training run" if count > 1 else "one pre-training run"
    return tables, resampled


def _setting_result(rows: pd.DataFrame, name: str, factors: dict[str, Any], task: str, lr: float, steps: int) -> SettingResult:
    tables, resampled = _unit_tables(rows)
    tokens = tables["ood_loss_after"].columns.to_numpy(dtype=float)
    gains = -doubling_slopes(tokens, tables["ood_loss_before"].to_numpy())
    growths = doubling_slopes(tokens, tables["forgetting"].to_numpy())
    base_gain = [unit_interval(gains[:, k], resampled) for k in range(gains.shape[1])]
    growth = [unit_interval(growths[:, k], resampled) for k in range(growths.shape[1])]
    plural = {"one pre-training seed": "pre-training seeds", "one pre-training run": "pre-training runs"}.get(resampled, resampled)
    inflection = find_inflection(tokens, tables["ood_loss_after"].to_numpy(), resampled=plural)
    crossings = []
    if not inflection.u_shaped and len(tokens) >= 3:
        crossings = crossing_estimates(tokens, np.array([g.mean for g in base_gain]), np.array([g.mean for g in growth]))
    return SettingResult(name, factors, task, lr, steps, resampled, [int(t) for t in tokens],
                         *[[float(v) for v in tables[c].mean(axis=0)] for c in ("ood_loss_before", "forgetting", "ood_loss_after")],
                         base_gain, growth, inflection, crossings)


def _run_label(result: SettingResult, results: list[SettingResult]) -> str:
    """The setting's name, with the fine-tuning run only where the study has more than one."""
    runs = {(r.task, r.lr, r.steps) for r in results}
    return result.name if len(runs) == 1 else f"{result.name}, {result.task} lr={result.lr:g} steps={result.steps}"


def slopes_table(results: list[SettingResult]) -> pd.DataFrame:
    """One row per setting and doubling: base gain, forgetting growth, and their difference (the change of
    the loss after fine-tuning), in nats per doubling, each with its interval over the setting's units."""
    rows = []
    for result in results:
        for k, (gain, growth) in enumerate(zip(result.base_gain, result.forgetting_growth)):
            rows.append({"setting": _run_label(result, results), "doubling": f"{format_tokens(result.tokens[k])}->{format_tokens(result.tokens[k + 1])}",
                         "base gain / doubling": gain.describe(), "forgetting growth / doubling": growth.describe(),
                         "growth - gain": f"{growth.mean - gain.mean:+.3f}", "units": f"{gain.units} ({gain.resampled})"})
    return pd.DataFrame(rows)


def verdict_table(results: list[SettingResult]) -> pd.DataFrame:
    """One row per setting: the loss after fine-tuning per budget, the U verdict and its inflection, and
    for a setting without a U the extrapolated crossing."""
    rows = []
    for result in results:
        rows.append({"setting": _run_label(result, results), "units": f"{result.inflection.units} ({result.resampled})",
                     **{format_tokens(t): f"{v:.3f}" for t, v in zip(result.tokens, result.loss_after)},
                     "U-shaped": _u_verdict(result.inflection),
                     "inflection": result.inflection.describe(),
                     "estimate without a U": "; ".join(crossing.describe() for crossing in result.crossings)})
    table = pd.DataFrame(rows).fillna("")
    budgets = sorted({t for r in results for t in r.tokens})
    fixed = ["setting", "units", *[format_tokens(t) for t in budgets], "U-shaped", "inflection", "estimate without a U"]
    return table[[c for c in fixed if c in table]]


def _u_verdict(inflection: Inflection) -> str:
    return "yes" if inflection.u_shaped else "untested (1 unit)" if inflection.untested else "no"


MIN_SETTINGS_FOR_RANKS = 4
"""A Spearman correlation across settings needs at least this many (over 3 it can only be +-1 or +-0.5)."""


def sharpness_tables(sharpness: pd.DataFrame, finetune: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Per setting and sharpness measure: the curve against tokens (means over the setting's units); the
    Spearman correlation across budgets between it and the forgetting of each fine-tuning run, within each
    setting (where forgetting grows with tokens, as it does everywhere in the study, this is the
    correlation of sharpness with tokens: a shared trend, not a prediction); and the question itself, does
    the sharper model forget more, asked across settings at each budget (:func:`sharpness_across_settings`)."""
    if sharpness.empty:
        return {}
    factors = [name for name in analysis.factor_names(sharpness)]
    names = setting_names(sharpness, factors)
    plain = analysis.plain_runs(finetune)
    curves, correlations = [], []
    for keys, rows in sharpness.groupby([*factors, "measure"], sort=True):
        keys = keys if isinstance(keys, tuple) else (keys,)
        combo, measure = tuple(keys[:-1]), keys[-1]
        curve = rows.groupby("tokens_seen")["value"].mean().sort_index()
        curves.append({"setting": names[combo], "measure": measure, **{format_tokens(t): f"{v:.4g}" for t, v in curve.items()},
                       "Spearman(sharpness, tokens)": f"{analysis.spearman(curve.index.to_numpy(), curve.to_numpy()):+.2f}"})
        if plain.empty:
            continue
        same_setting = np.logical_and.reduce([plain[f] == v for f, v in zip(factors, combo)]) if factors else np.ones(len(plain), bool)
        for (task, lr, steps), runs in plain[same_setting].groupby(FINETUNE_RUN_KEYS):
            forgetting = runs.groupby("tokens_seen")["forgetting"].mean()
            joined = pd.concat([curve, forgetting], axis=1, join="inner").dropna()
            if len(joined) >= 3:
                correlations.append({"setting": names[combo], "measure": measure, "fine-tuning": f"{task} lr={lr:g} steps={steps}",
                                     "budgets": len(joined), "Spearman(sharpness, forgetting)":
                                     f"{analysis.spearman(joined.iloc[:, 0].to_numpy(), joined.iloc[:, 1].to_numpy()):+.2f}"})
    curves_table = pd.DataFrame(curves)
    budgets = [format_tokens(t) for t in sorted(sharpness["tokens_seen"].unique())]
    curves_table = curves_table[["setting", "measure", *[b for b in budgets if b in curves_table], "Spearman(sharpness, tokens)"]]
    return {"Sharpness per setting against tokens (mean over units)": curves_table.fillna(""),
            "Sharpness and forgetting within each setting, Spearman across budgets (both grow with tokens: a shared trend, "
            "not a prediction)": pd.DataFrame(correlations),
            "Does sharpness predict forgetting? Spearman across settings at each budget": sharpness_across_settings(sharpness, plain)}


def sharpness_across_settings(sharpness: pd.DataFrame, plain: pd.DataFrame) -> pd.DataFrame:
    """Per sharpness measure, fine-tuning run and budget: the Spearman correlation across the settings
    (each its mean over units) between sharpness and forgetting at that budget. Tokens are held fixed, so
    a correlation here is not the shared growth of both with tokens. Budgets with fewer than
    :data:`MIN_SETTINGS_FOR_RANKS` settings measured are left out."""
    if sharpness.empty or plain.empty:
        return pd.DataFrame()
    factors = analysis.factor_names(sharpness)
    if not factors or any(f not in plain for f in factors):
        return pd.DataFrame()
    names = setting_names(sharpness, factors)
    sharp = sharpness.groupby(["measure", *factors, "tokens_seen"])["value"].mean()
    forgetting = plain.groupby([*FINETUNE_RUN_KEYS, *factors, "tokens_seen"])["forgetting"].mean()
    rows = []
    for measure in sorted(sharpness["measure"].unique()):
        for run, run_forgetting in forgetting.groupby(level=list(range(len(FINETUNE_RUN_KEYS)))):
            joined = pd.concat([sharp.loc[measure].rename("sharpness"), run_forgetting.droplevel(list(range(len(FINETUNE_RUN_KEYS))))],
                               axis=1, join="inner").dropna()
            for tokens, at_budget in joined.groupby(level="tokens_seen"):
                if len(at_budget) < MIN_SETTINGS_FOR_RANKS:
                    continue
                sharpest = at_budget["sharpness"].idxmax()[:-1]
                rows.append({"measure": measure, "fine-tuning": f"{run[0]} lr={run[1]:g} steps={run[2]}", "budget": format_tokens(tokens),
                             "settings": len(at_budget),
                             "Spearman(sharpness, forgetting)": f"{analysis.spearman(at_budget['sharpness'].to_numpy(), at_budget['forgetting'].to_numpy()):+.2f}",
                             "sharpest setting": names[tuple(sharpest)]})
    return pd.DataFrame(rows)


def weight_norm_table(pretrain: pd.DataFrame) -> pd.DataFrame:
    """Norm of the decayed weight matrices after pre-training, per setting (mean over its seeds) and budget:
    the paper's suspicion is that the U starts where this norm stops growing."""
    if pretrain.empty or "weight_norm" not in pretrain:
        return pd.DataFrame()
    factors = analysis.factor_names(pretrain)
    names = setting_names(pretrain, factors)
    rows = []
    for combo, group in (pretrain.groupby(factors, sort=True) if factors else [((), pretrain)]):
        combo = combo if isinstance(combo, tuple) else (combo,)
        means = group.groupby("tokens_seen")["weight_norm"].mean().sort_index()
        rows.append({"setting": names[combo], "seeds": group["pretrain_seed"].nunique() if "pretrain_seed" in group else 1,
                     **{format_tokens(t): f"{v:.2f}" for t, v in means.items()}})
    return pd.DataFrame(rows).fillna("")


def study_tables(finetune: pd.DataFrame, sharpness: pd.DataFrame | None = None) -> dict[str, pd.DataFrame]:
    """The tables the sweep report adds for a sweep over pre-training factors (the report's hook)."""
    results = study_settings(finetune)
    if not results:
        return {}
    return {"Fine-tuning U per setting: loss after fine-tuning, U and inflection": verdict_table(results),
            "Forgetting growth vs base gain per doubling of tokens (nats/doubling)": slopes_table(results)}


def write_study_figures(results: list[SettingResult], sharpness: pd.DataFrame, out_dir: Path) -> list[Path]:
    """loss_after (base, forgetting, loss after per setting), slopes (growth vs gain per setting) and
    sharpness (each measure per setting) as PNG + SVG in ``out_dir``."""
    from overtrain.results.plots import Curve, InflectionMark, Panel, plot_panels

    out_dir.mkdir(parents=True, exist_ok=True)
    label = {id(r): _run_label(r, results) for r in results}
    marks = {label[id(r)]: InflectionMark(r.inflection.at, r.inflection.low, r.inflection.high) for r in results if r.inflection.u_shaped}
    curves = {column: [Curve(label[id(r)], r.tokens, getattr(r, column), marker="o") for r in results]
              for column in ("loss_after", "forgetting", "base_loss")}
    written = plot_panels([
        Panel(curves["loss_after"], "pre-training tokens", "pre-training loss after fine-tuning", "Loss after fine-tuning (dot: U minimum)",
              inflections=marks, x_in_tokens=True),
        Panel(curves["forgetting"], "pre-training tokens", "forgetting (nats/token)", "Forgetting", x_in_tokens=True),
        Panel(curves["base_loss"], "pre-training tokens", "held-out loss before fine-tuning", "Base model", x_in_tokens=True),
    ], title="Fine-tuning U study: means over each setting's units", out_stem=out_dir / "loss_after", columns=3)
    panels = []
    for r in results:
        middles = [math.sqrt(a * b) for a, b in zip(r.tokens, r.tokens[1:])]
        band = lambda intervals: ([i.low for i in intervals], [i.high for i in intervals]) if intervals[0].kind != "none" else (None, None)
        panels.append(Panel([Curve("base gain", middles, [i.mean for i in r.base_gain], *band(r.base_gain), marker="s", color="black"),
                             Curve("forgetting growth", middles, [i.mean for i in r.forgetting_growth], *band(r.forgetting_growth), marker="o", color="tab:red")],
                            "pre-training tokens (middle of the doubling)", "nats per doubling", label[id(r)],
                            note=f"{r.base_gain[0].units} unit(s): {r.resampled}", x_in_tokens=True))
    written += plot_panels(panels, title="Per doubling of tokens: the U turns up where the red line passes the black",
                           out_stem=out_dir / "slopes", columns=4)
    if not sharpness.empty:
        factors = analysis.factor_names(sharpness)
        names = setting_names(sharpness, factors)
        sharp_panels = []
        for measure, rows in sharpness.groupby("measure", sort=True):
            lines = []
            for combo, group in (rows.groupby(factors, sort=True) if factors else [((), rows)]):
                combo = combo if isinstance(combo, tuple) else (combo,)
                curve = group.groupby("tokens_seen")["value"].mean().sort_index()
                lines.append(Curve(names[combo], list(curve.index), list(curve.values), marker="o"))
            sharp_panels.append(Panel(lines, "pre-training tokens", str(measure), f"{measure} (mean over units)", x_in_tokens=True))
        written += plot_panels(sharp_panels, title="Sharpness of the pre-training loss", out_stem=out_dir / "sharpness")
    return written


def _markdown(frame: pd.DataFrame) -> str:
    header = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "---|" * len(frame.columns)
    cells = ["| " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *cells])


def study_markdown(store_path: Path, figures: Path | None = None) -> str:
    """Every table of the study as markdown (and the figures, when ``figures`` names a folder)."""
    from overtrain.results.store import ResultStore

    if not Path(store_path).is_file():
        raise OvertrainError(f"no results store at {store_path}", "run `overtrain sweep configs/study/finetune_u.yaml` first, or pass its out_dir")
    with ResultStore(store_path) as store:
        finetune, sharpness, pretrain = analysis.finetune_frame(store), analysis.sharpness_frame(store), analysis.pretrain_frame(store)
    results = study_settings(finetune)
    tables = {**study_tables(finetune, sharpness), **sharpness_tables(sharpness, finetune),
              "Norm of the weight matrices after pre-training (mean over seeds)": weight_norm_table(pretrain)}
    tables = {title: frame for title, frame in tables.items() if not frame.empty}
    if figures is not None and results:
        write_study_figures(results, sharpness, figures)
    return "\n\n".join(f"### {title}\n\n{_markdown(frame)}" for title, frame in tables.items())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m overtrain.results.study", description=__doc__.split("\n\n")[0])
    parser.add_argument("store", help="a sweep's out_dir or its results.sqlite")
    parser.add_argument("--figures", help="folder for loss_after, slopes and sharpness (PNG + SVG)")
    parser.add_argument("--markdown", help="also write the tables to this file")
    args = parser.parse_args(argv)
    store = Path(args.store)
    store = store / "results.sqlite" if store.is_dir() else store
    text = study_markdown(store, Path(args.figures) if args.figures else None)
    print(text)
    if args.markdown:
        atomic_write_text(Path(args.markdown), text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
