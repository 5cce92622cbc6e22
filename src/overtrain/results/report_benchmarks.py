"""The report's benchmark section, in the paper's form (its Figure 1 for one model family).

- ``benchmarks.png``: the benchmark average (accuracy, and the gold answer's log-likelihood per byte)
  against pre-training tokens, base vs tuned at the tuned LR, with the tuned curve's inflection and its
  interval (what was resampled and how many units are in the headline);
- ``benchmarks_each.png``: every benchmark's gold log-likelihood per byte, base vs tuned;
- tables: per budget (base, tuned, drop, tuned LR), and how well the noise probe on the same checkpoints
  predicts the tuned model's drop (Spearman across budgets).

With one budget (a single model such as SmolLM2-135M) there is no curve: the section is a table of
scores, base and tuned, per benchmark.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from overtrain.results.benchmarks import (
    READOUT_LABELS,
    StageCurve,
    curve_inflection,
    noise_predicts_drop,
    per_budget_table,
    stage_curve,
)
from overtrain.results.plots import Curve, InflectionMark, Panel, plot_panels

Report = Any
"""``overtrain.results.report.Report`` (figures, headlines, tables, folder), not imported: report.py imports this module."""

TOKENS_LABEL = "pre-training tokens"
SHORT_LABELS = {"acc": "accuracy", "gold_logprob_per_byte": "gold log-lik. per byte", "margin_per_byte": "gold margin per byte"}
STAGE_STYLE = {"base": {"color": "black", "line_style": "--", "marker": "s"}, "tuned": {"marker": "o"}}


def benchmark_section(base: pd.DataFrame, tuned: pd.DataFrame, noise: pd.DataFrame, report: Report) -> None:
    """Add the benchmark figures, tables and headlines to ``report`` (nothing when neither stage has rows)."""
    if base.empty and tuned.empty:
        return
    base, tuned = _without_token_count(base, tuned, report)
    if base.empty and tuned.empty:
        return
    budgets = per_budget_table(base, tuned)
    report.tables["Benchmarks: average over benchmarks per budget (base, tuned at the tuned LR)"] = budgets
    report.tables["Benchmarks: each benchmark (mean over fine-tuning seeds)"] = _each_benchmark_table(base, tuned)
    if budgets["tokens"].nunique() < 2:
        return
    panels = [_average_panel(base, tuned, readout, report) for readout in ("acc", "gold_logprob_per_byte")] + [_change_panel(budgets)]
    report.figures += plot_panels([panel for panel in panels if panel is not None], title="Benchmarks: base vs tuned",
                                  out_stem=report.folder / "benchmarks", columns=3)
    each = [_benchmark_panel(base, tuned, name) for name in sorted(set(base.get("benchmark", [])) | set(tuned.get("benchmark", [])))]
    report.figures += plot_panels([panel for panel in each if panel is not None], title="Each benchmark: gold log-likelihood per byte",
                                  out_stem=report.folder / "benchmarks_each", columns=4)
    predicts = noise_predicts_drop(noise, budgets)
    if not predicts.empty:
        report.tables["Does the noise probe predict the tuned model's benchmark drop? (Spearman across budgets)"] = predicts


def _without_token_count(base: pd.DataFrame, tuned: pd.DataFrame, report: Report) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Table (and headline) the models without a token count, a model probed on its own; return the rest."""
    unknown = {stage: frame[frame["tokens_seen"].isna()] if not frame.empty else frame for stage, frame in (("base", base), ("tuned", tuned))}
    if all(frame.empty for frame in unknown.values()):
        return base, tuned
    table = checkpoint_table(unknown["base"], unknown["tuned"])
    report.tables["Benchmarks: checkpoints without a token count (base, tuned at the tuned LR)"] = table
    for row in table[table["benchmark"] == "average"].to_dict("records"):
        parts = [f"{stage} acc {row[f'{stage} acc']:.3f}, gold log-lik. per byte {row[f'{stage} gold lp/byte']:.4f}"
                 for stage in ("base", "tuned") if f"{stage} acc" in row and pd.notna(row[f"{stage} acc"])]
        lr = f" (tuned lr {row['tuned lr']})" if pd.notna(row.get("tuned lr")) else ""
        report.headlines.append(f"benchmarks of {row['checkpoint']} (average of {row['benchmarks']}): {'; '.join(parts)}{lr}")
    known = [frame[frame["tokens_seen"].notna()] if not frame.empty else frame for frame in (base, tuned)]
    return known[0], known[1]


def checkpoint_table(base: pd.DataFrame, tuned: pd.DataFrame) -> pd.DataFrame:
    """Per checkpoint and benchmark (and their average): documents, base and tuned accuracy and gold
    log-likelihood per byte, and the tuned LR."""
    parts = []
    for stage, frame in (("base", base), ("tuned", tuned)):
        if frame.empty:
            continue
        means = frame.groupby(["checkpoint", "benchmark"]).agg(acc=("acc", "mean"), lp=("gold_logprob_per_byte", "mean"), documents=("documents", "max"))
        average = means.groupby("checkpoint").mean(numeric_only=True).assign(benchmark="average").set_index("benchmark", append=True)
        means = pd.concat([means, average]).rename(columns={"acc": f"{stage} acc", "lp": f"{stage} gold lp/byte", "documents": f"{stage} documents"})
        if stage == "tuned":
            lrs = frame.groupby("checkpoint")["lr"].agg(lambda values: ",".join(f"{lr:g}" for lr in sorted(set(values))))
            means["tuned lr"] = [lrs[checkpoint] for checkpoint, _ in means.index]
        parts.append(means)
    table = pd.concat(parts, axis=1).reset_index()
    counts = table[table["benchmark"] != "average"].groupby("checkpoint")["benchmark"].nunique()
    table["benchmarks"] = table["checkpoint"].map(counts)
    return table


def _stage_curve_or_none(frame: pd.DataFrame, readout: str) -> StageCurve | None:
    return None if frame.empty else stage_curve(frame, readout)


def _average_panel(base: pd.DataFrame, tuned: pd.DataFrame, readout: str, report: Report) -> Panel | None:
    curves, marks = [], {}
    for stage, frame in (("base", base), ("tuned", tuned)):
        curve = _stage_curve_or_none(frame, readout)
        if curve is None:
            continue
        label = "base" if stage == "base" else "tuned (tuned LR)"
        curves.append(Curve(label, curve.tokens, curve.mean, **STAGE_STYLE[stage]))
        inflection = curve_inflection(curve, readout)
        what = "1 - accuracy" if readout == "acc" else "minus the gold log-likelihood per byte"
        report.headlines.append(f"benchmark average {READOUT_LABELS[readout]}, {label}: {curve.mean[0]:.4f} at the first budget, "
                                f"{curve.mean[-1]:.4f} at the last; inflection of {what}: {inflection.describe()}"
                                + ("" if inflection.interior else f" ({inflection.units} {inflection.resampled})"))
        if stage == "tuned" and inflection.u_shaped:
            marks[label] = InflectionMark(inflection.at, inflection.low, inflection.high)
    if not curves:
        return None
    return Panel(curves, TOKENS_LABEL, READOUT_LABELS[readout], f"Benchmark average ({_count(base, tuned)}): {SHORT_LABELS[readout]}",
                 inflections=marks, x_in_tokens=True)


def _change_panel(budgets: pd.DataFrame) -> Panel | None:
    """What tuning does to the benchmark average at each budget: tuned minus base, per read-out (0: no change)."""
    curves = []
    for readout in ("gold_logprob_per_byte", "acc"):
        if f"drop {readout}" in budgets:
            rows = budgets.dropna(subset=[f"drop {readout}"])
            curves.append(Curve(SHORT_LABELS[readout], list(rows["tokens"]), list(-rows[f"drop {readout}"]), marker="o"))
    if not curves:
        return None
    zero = Curve("no change", [int(budgets["tokens"].min()), int(budgets["tokens"].max())], [0.0, 0.0], color="black", line_style=":")
    return Panel([zero, *curves], TOKENS_LABEL, "tuned minus base", "What tuning does to the benchmark average", x_in_tokens=True)


def _count(base: pd.DataFrame, tuned: pd.DataFrame) -> int:
    return len(set(base.get("benchmark", [])) | set(tuned.get("benchmark", [])))


def _benchmark_panel(base: pd.DataFrame, tuned: pd.DataFrame, name: str) -> Panel | None:
    curves = []
    for stage, frame in (("base", base), ("tuned", tuned)):
        rows = frame[frame["benchmark"] == name] if not frame.empty else frame
        if rows.empty or rows["gold_logprob_per_byte"].isna().all():
            continue
        means = rows.groupby("tokens_seen")["gold_logprob_per_byte"].mean().sort_index()
        curves.append(Curve(stage, [int(t) for t in means.index], list(means.values), **STAGE_STYLE[stage]))
    if not curves:
        return None
    return Panel(curves, TOKENS_LABEL, "gold log-lik. per byte", name, x_in_tokens=True)


def _each_benchmark_table(base: pd.DataFrame, tuned: pd.DataFrame) -> pd.DataFrame:
    """Per budget and benchmark: documents, base and tuned accuracy and gold log-likelihood per byte."""
    parts = []
    for stage, frame in (("base", base), ("tuned", tuned)):
        if frame.empty:
            continue
        means = frame.groupby(["tokens_seen", "benchmark"]).agg(documents=("documents", "max"), acc=("acc", "mean"),
                                                                gold_logprob_per_byte=("gold_logprob_per_byte", "mean"))
        parts.append(means.rename(columns={"acc": f"{stage} acc", "gold_logprob_per_byte": f"{stage} gold lp/byte", "documents": f"{stage} documents"}))
    return pd.concat(parts, axis=1).sort_index().reset_index().rename(columns={"tokens_seen": "tokens"})
