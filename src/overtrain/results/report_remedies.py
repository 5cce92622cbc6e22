"""The report's remedies section: forgetting and ID gain against pre-training tokens per remedy, the trade-off
against plain fine-tuning's LR sweep, inflection shifts, and a ranking table per task (numbers from
:mod:`overtrain.results.remedies`)."""

from __future__ import annotations

from typing import Any

import pandas as pd

from overtrain.results import remedies as rm
from overtrain.results.plots import Curve, InflectionMark, Panel, plot_panels
from overtrain.units import format_tokens

TOKENS_LABEL = "pre-training tokens"


def has_remedies(readings: pd.DataFrame) -> bool:
    """Anything to compare: a remedy other than plain fine-tuning, or plain at two or more LRs (the tuned LR)."""
    return not readings.empty and (set(readings["kind"]) != {rm.PLAIN} or readings["lr"].nunique() > 1)


def remedies_section(finetune: pd.DataFrame, report: Any) -> None:
    """Add the remedies figures, headlines and tables to ``report`` (a :class:`~overtrain.results.report.Report`);
    nothing when the runs hold no remedy and a single LR."""
    readings = rm.remedy_readings(finetune)
    if not has_remedies(readings):
        return
    curves = rm.remedy_curves(readings)
    rankings = rm.ranking(readings, curves)
    panels = []
    for task, ranked in rankings.items():
        task_readings = readings[readings["task"] == task]
        shown = [c for c in curves if c.task == task and _shown_on_token_axis(c, comparison_lr(task_readings))]
        panels += _token_panels(task, shown)
        panels.append(_trade_off_panel(task, task_readings))
        report.headlines += _headlines(task, ranked)
        tokens = format_tokens(int(ranked["tokens"].iloc[0]))
        report.tables[f"Remedies on {task}: ranking at {tokens} tokens (the largest budget)"] = ranked
    report.figures += plot_panels(panels, title="Remedies", out_stem=report.folder / "remedies", columns=3)
    report.tables["Remedies: trade-off against plain fine-tuning's LR sweep, per budget (means over seeds)"] = rm.trade_off(readings)
    report.tables["Remedies: inflection of the pre-training loss after fine-tuning"] = pd.DataFrame(
        [{"task": c.task, "remedy": c.remedy, **{k: v for k, v in c.inflection.to_dict().items() if k not in ("tolerance", "relative_rise")}}
         for c in curves])


def comparison_lr(readings: pd.DataFrame) -> float:
    """The LR the training-time remedies ran at (the most common among them), else the middle plain LR: WiSE-FT
    readings are drawn on the token axis at this LR only (all of them are in the tables and the trade-off)."""
    trained = readings[~readings["kind"].isin([rm.PLAIN, rm.TUNED]) & ~readings["kind"].str.startswith(rm.WISE)]
    if not trained.empty:
        return float(trained["lr"].mode().iloc[0])
    lrs = sorted(readings["lr"].unique())
    return float(lrs[len(lrs) // 2])


def _shown_on_token_axis(curve: rm.RemedyCurve, lr: float) -> bool:
    return not curve.kind.startswith(rm.WISE) or curve.lr == lr


def _style(curve: rm.RemedyCurve) -> dict[str, Any]:
    if curve.kind == rm.PLAIN:
        return {"line_style": "--", "marker": "s"}
    if curve.kind.startswith(rm.WISE):
        return {"line_style": ":", "marker": "^"}
    return {"line_style": "-", "marker": "o"}


def _token_panels(task: str, curves: list[rm.RemedyCurve]) -> list[Panel]:
    def panel(pick, y_label: str, title: str, marks: bool = False) -> Panel:
        lines = [Curve(c.remedy, pick(c).tokens, pick(c).mean, pick(c).low, pick(c).high, **_style(c)) for c in curves]
        inflections = {c.remedy: InflectionMark(c.inflection.at, c.inflection.low, c.inflection.high) for c in curves
                       if marks and c.inflection.u_shaped}
        return Panel(lines, TOKENS_LABEL, y_label, title, inflections=inflections, x_in_tokens=True)

    return [panel(lambda c: c.forgetting, "forgetting (pre-training loss increase, nats/token)", f"{task}: forgetting"),
            panel(lambda c: c.id_gain, "ID gain (task loss decrease, nats/token)", f"{task}: ID gain"),
            panel(lambda c: c.ood_after, "pre-training loss after fine-tuning", f"{task}: inflection (dots: clear U)", marks=True)]


def _trade_off_panel(task: str, readings: pd.DataFrame) -> Panel:
    """ID gain (x) against forgetting (y) at the largest budget: plain's LR sweep as a line, each WiSE-FT alpha
    sweep as a dotted line from the pre-trained model (0, 0) to its run, the other remedies as points."""
    largest = readings["tokens_seen"].max()
    means = readings[readings["tokens_seen"] == largest].groupby(["remedy", "kind"], as_index=False).agg(
        lr=("lr", "mean"), alpha=("alpha", "mean"), id_gain=("id_gain", "mean"), forgetting=("forgetting", "mean"))
    plain = means[means["kind"] == rm.PLAIN].sort_values("lr")
    curves = [Curve("plain, LR sweep " + "/".join(f"{lr:g}" for lr in plain["lr"]), list(plain["id_gain"]), list(plain["forgetting"]),
                    color="black", line_style="--", marker="s")]
    for lr, run in plain.set_index("lr").iterrows():
        wise = means[means["kind"].str.startswith(rm.WISE) & (means["lr"] == lr) & ~means["kind"].str.contains(" of ")]
        if not wise.empty:
            wise = wise.sort_values("alpha")
            curves.append(Curve(f"WiSE-FT alphas, lr={lr:g}", [0.0, *wise["id_gain"], run["id_gain"]], [0.0, *wise["forgetting"], run["forgetting"]],
                                line_style=":", marker="^"))
    for row in means[(means["kind"] != rm.PLAIN) & ~means["kind"].str.startswith(rm.WISE)].to_dict("records"):
        curves.append(Curve(row["remedy"], [row["id_gain"]], [row["forgetting"]], line_style="", marker="o"))
    return Panel(curves, "ID gain (nats/token)", "forgetting (nats/token)", f"{task}: trade-off at {format_tokens(int(largest))} tokens",
                 log_x=False)


def _headlines(task: str, ranked: pd.DataFrame) -> list[str]:
    tokens = format_tokens(int(ranked["tokens"].iloc[0]))
    lines = []
    for row in ranked.to_dict("records"):
        if row["remedy"].startswith(rm.PLAIN):
            continue
        saved = "outside plain's LR sweep" if pd.isna(row["forgetting_saved"]) else f"{row['forgetting_saved']:+.4f} forgetting saved at equal ID gain"
        shift = f"; inflection shift {row['shift vs plain (same lr)']}" if row["shift vs plain (same lr)"] else ""
        lines.append(f"remedy {task}, ranked {row['rank']} of {len(ranked)} at {tokens}: {row['remedy']}: ID gain {row['id_gain']:.4f}, "
                     f"forgetting {row['forgetting']:.4f}, {saved}{shift}")
    return lines
