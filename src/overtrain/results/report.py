"""The report of a sweep: paper-style figures (PNG + SVG), one self-contained HTML page, a markdown summary.

``write_report(store_path, out_dir)`` reads the results store only, so it can be re-run at any time,
on a laptop, from a store a cluster filled.
"""

from __future__ import annotations

import base64
import html
import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from overtrain.atomic import atomic_write_text
from overtrain.errors import OvertrainError
from overtrain.results import analysis
from overtrain.results.plots import Curve, InflectionMark, Panel, plot_panels
from overtrain.results.store import ResultStore

TOKENS_LABEL = "pre-training tokens"


@dataclass
class Report:
    """What was written and the numbers a person reads first."""

    folder: Path
    figures: list[Path] = field(default_factory=list)
    headlines: list[str] = field(default_factory=list)
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)

    @property
    def html_path(self) -> Path:
        return self.folder / "report.html"


def _mark(summary: analysis.SettingSummary) -> InflectionMark:
    inflection = summary.inflection
    return InflectionMark(inflection.at, inflection.low, inflection.high)


def _curves(summaries: list[analysis.SettingSummary]) -> list[Curve]:
    return [Curve(s.name, s.tokens, s.mean, s.low, s.high, marker="o") for s in summaries]


def _inflection_text(summary: analysis.SettingSummary) -> str:
    return f"{summary.name}: {summary.inflection.describe()}; Spearman(damage, tokens) = {summary.sensitivity_spearman:+.2f}"


def _noise_section(noise: pd.DataFrame, report: Report) -> None:
    summaries = analysis.noise_summary(noise)
    base = noise.groupby("tokens_seen")["base_loss"].first().sort_index()
    base_curve = Curve("no noise", list(base.index), list(base.values), color="black", line_style="--", marker="s")
    marks = {s.name: _mark(s) for s in summaries if s.inflection.u_shaped}
    panels = [
        Panel([base_curve, *_curves(summaries)], TOKENS_LABEL, "held-out pre-training loss (nats/token)",
              "Gaussian perturbation: loss after noise", inflections=marks, x_in_tokens=True),
        Panel([Curve(s.name, s.tokens, s.damage_mean, marker="o") for s in summaries], TOKENS_LABEL,
              "loss increase from noise (nats/token)", "Progressive sensitivity", log_y=True, x_in_tokens=True),
    ]
    report.figures += plot_panels(panels, title="Noise probe", out_stem=report.folder / "noise")
    report.headlines += ["noise " + _inflection_text(s) for s in summaries]
    table = pd.DataFrame({"tokens": base.index, "base loss": base.values})
    for s in summaries:
        table[f"{s.name} perturbed"] = s.mean
        table[f"{s.name} delta"] = s.damage_mean
    report.tables["Noise probe (mean over seeds)"] = table


def _finetune_section(finetune: pd.DataFrame, report: Report) -> None:
    by_task = analysis.finetune_summary(finetune, "ood_loss_after")
    id_by_task = analysis.finetune_summary(finetune, "id_loss_after")
    panels = []
    for task, summaries in by_task.items():
        base = finetune[finetune["task"] == task].groupby("tokens_seen")["ood_loss_before"].first().sort_index()
        base_curve = Curve("before fine-tuning", list(base.index), list(base.values), color="black", line_style="--", marker="s")
        marks = {s.name: _mark(s) for s in summaries if s.inflection.u_shaped}
        panels.append(Panel([base_curve, *_curves(summaries)], TOKENS_LABEL, "pre-training loss after fine-tuning",
                            f"{task}: forgetting (OOD)", inflections=marks, x_in_tokens=True))
        panels.append(Panel(_curves(id_by_task[task]), TOKENS_LABEL, "task held-out loss after fine-tuning", f"{task}: ID",
                            x_in_tokens=True))
        report.headlines += [f"fine-tune {task} OOD " + _inflection_text(s) for s in summaries]
    report.figures += plot_panels(panels, title="Fine-tuning probe", out_stem=report.folder / "finetune")
    report.tables["Recommended checkpoint per fine-tuning setting"] = analysis.recommend_checkpoints(finetune)
    columns = ["task", "lr", "reg_lambda", "seed", "tokens_seen", "id_loss_after", "ood_loss_before", "ood_loss_after", "forgetting"]
    report.tables["Fine-tuning runs"] = finetune[columns].sort_values(["task", "lr", "reg_lambda", "tokens_seen", "seed"])


def _weight_norm_section(pretrain: pd.DataFrame, report: Report) -> None:
    """The weights' L2 norm against tokens, one curve per pre-training run (seed and factor values)."""
    if "weight_norm" not in pretrain:
        return
    keys = [c for c in pretrain.columns if c.startswith(analysis.FACTOR_PREFIX)] + (["pretrain_seed"] if "pretrain_seed" in pretrain else [])
    groups = pretrain.groupby(keys) if keys else [((), pretrain)]
    curves = []
    for values, group in groups:
        values = values if isinstance(values, tuple) else (values,)
        label = " ".join(f"{k.rsplit('.', 1)[-1].replace('pretrain_seed', 'seed')}={v}" for k, v in zip(keys, values)) or "weights"
        ordered = group.sort_values("tokens_seen")
        curves.append(Curve(label, list(ordered["tokens_seen"]), list(ordered["weight_norm"]), marker="o"))
    panel = Panel(curves, TOKENS_LABEL, "L2 norm of all weights", "Weight norm after pre-training", x_in_tokens=True)
    report.figures += plot_panels([panel], title="Weights", out_stem=report.folder / "weight_norm")


def write_report(store_path: Path, out_dir: Path) -> Report:
    """Write figures, report.html and summary.md for the results in ``store_path``."""
    if not Path(store_path).is_file():
        raise OvertrainError(f"no results store at {store_path}", "run `overtrain sweep SPEC.yaml` first, or pass the path of results.sqlite")
    report = Report(Path(out_dir))
    report.folder.mkdir(parents=True, exist_ok=True)
    with ResultStore(store_path) as store:
        noise, finetune = analysis.noise_frame(store), analysis.finetune_frame(store)
        pretrain = analysis.pretrain_frame(store)
    report.headlines += [claim.headline() for claim in analysis.paper_claims(noise, finetune)]
    if not pretrain.empty:
        report.tables["Pre-training runs"] = pretrain.sort_values("tokens_seen")
        _weight_norm_section(pretrain, report)
    if not noise.empty:
        _noise_section(noise, report)
    if not finetune.empty:
        _finetune_section(finetune, report)
    if not noise.empty and not finetune.empty:
        report.tables["Does the noise probe predict forgetting? (Spearman across budgets)"] = analysis.noise_predicts_forgetting(noise, finetune)
    atomic_write_text(report.html_path, render_html(report))
    atomic_write_text(report.folder / "summary.md", render_markdown(report))
    return report


def _format_cell(value) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.4g}"
    return html.escape(str(value))


def _html_table(frame: pd.DataFrame) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    body = "".join("<tr>" + "".join(f"<td>{_format_cell(v)}</td>" for v in row) + "</tr>" for row in frame.itertuples(index=False))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_html(report: Report) -> str:
    images = [
        f'<figure><img alt="{p.stem}" src="data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()}"></figure>'
        for p in report.figures if p.suffix == ".png"
    ]
    headlines = "".join(f"<li>{html.escape(line)}</li>" for line in report.headlines)
    tables = "".join(f"<h2>{html.escape(title)}</h2>{_html_table(frame)}" for title, frame in report.tables.items())
    style = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}"
             "img{max-width:100%}table{border-collapse:collapse;font-size:13px;margin-bottom:1.5em}"
             "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#f3f3f3}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>overtrain report</title><style>{style}</style></head>"
            f"<body><h1>Catastrophic overtraining: report</h1><h2>Headlines</h2><ul>{headlines}</ul>{''.join(images)}{tables}</body></html>")


def render_markdown(report: Report) -> str:
    lines = ["# overtrain report", "", "## Headlines", ""] + [f"- {line}" for line in report.headlines] + [""]
    lines += [f"![{p.stem}]({p.name})" for p in report.figures if p.suffix == ".png"] + [""]
    for title, frame in report.tables.items():
        lines += [f"## {title}", "", _markdown_table(frame), ""]
    return "\n".join(lines)


def _markdown_table(frame: pd.DataFrame) -> str:
    header = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "---|" * len(frame.columns)
    rows = ["| " + " | ".join(_format_cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *rows])
