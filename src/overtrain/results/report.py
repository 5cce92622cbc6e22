"""The report of a sweep: paper-style figures (PNG + SVG), one self-contained HTML page, a markdown summary.

``write_report(store_path, out_dir)`` reads the results store only, so it can be re-run at any time,
on a laptop, from a store a cluster filled.
"""

from __future__ import annotations

import base64
import html
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from overtrain.atomic import TEMPORARY_MARK, atomic_write_text
from overtrain.errors import OvertrainError
from overtrain.results import analysis
from overtrain.results.benchmarks import base_benchmark_frame, tuned_benchmark_frame
from overtrain.results.mixing import pooled_settings
from overtrain.results.plots import Curve, InflectionMark, Panel, plot_panels
from overtrain.results.report_benchmarks import benchmark_section
from overtrain.results.report_multimodal import multimodal_frame, multimodal_section
from overtrain.results.report_remedies import remedies_section
from overtrain.results.store import ResultStore, require_results_store
from overtrain.units import format_tokens

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
    bases = _base_losses(noise, "base_loss")
    base_curves = _base_curves(bases, "no noise")
    marks = {s.name: _mark(s) for s in summaries if s.inflection.u_shaped}
    panels = [
        Panel([*base_curves, *_curves(summaries)], TOKENS_LABEL, "held-out pre-training loss (nats/token)",
              "Gaussian perturbation: loss after noise", inflections=marks, x_in_tokens=True),
        Panel([Curve(s.name, s.tokens, s.damage_mean, marker="o") for s in summaries], TOKENS_LABEL,
              "loss increase from noise (nats/token)", "Progressive sensitivity", log_y=True, x_in_tokens=True),
    ]
    report.figures += plot_panels(panels, title="Noise probe", out_stem=report.folder / "noise")
    report.headlines += ["noise " + _inflection_text(s) for s in summaries]
    table = pd.concat([base.rename(f"{family} base loss".strip()) for family, base in bases.items()], axis=1)
    for s in summaries:
        table[f"{s.name} perturbed"] = pd.Series(s.mean, index=s.tokens)
        table[f"{s.name} delta"] = pd.Series(s.damage_mean, index=s.tokens)
    report.tables["Noise probe (mean over seeds)"] = table.rename_axis("tokens").reset_index()


def _base_losses(frame: pd.DataFrame, column: str) -> dict[str, pd.Series]:
    """A loss measured on the checkpoint before the probe (``column``: without noise, before fine-tuning) by
    tokens, one series per family of pre-training factors ('' for one family), each the mean over its
    checkpoints at a token count (one per pre-training seed): the first row's value stood for all of them
    before, next to probed losses that were means, and which seed it was depended on the rows' order."""
    factors = analysis.factor_names(frame)
    per_checkpoint = frame.drop_duplicates([*factors, "pretrain_seed" if "pretrain_seed" in frame else "checkpoint", "tokens_seen"])
    if not factors:
        return {"": per_checkpoint.groupby("tokens_seen")[column].mean().sort_index()}
    return {analysis.factor_label(values, factors): group.groupby("tokens_seen")[column].mean().sort_index()
            for values, group in per_checkpoint.groupby(factors)}


def _base_curves(bases: dict[str, pd.Series], label: str) -> list[Curve]:
    """The dashed reference curves of :func:`_base_losses`: black for one family, the family's name before ``label``."""
    return [Curve(f"{family} {label}".strip(), list(base.index), list(base.values), color="black" if len(bases) == 1 else None,
                  line_style="--", marker="s") for family, base in bases.items()]


def _finetune_section(finetune: pd.DataFrame, report: Report) -> None:
    by_task = analysis.finetune_summary(finetune, "ood_loss_after")
    id_by_task = analysis.finetune_summary(finetune, "id_loss_after")
    panels = []
    for task, summaries in by_task.items():
        base_curves = _base_curves(_base_losses(finetune[finetune["task"] == task], "ood_loss_before"), "before fine-tuning")
        marks = {s.name: _mark(s) for s in summaries if s.inflection.u_shaped}
        panels.append(Panel([*base_curves, *_curves(summaries)], TOKENS_LABEL, "pre-training loss after fine-tuning",
                            f"{task}: forgetting (OOD)", inflections=marks, x_in_tokens=True))
        panels.append(Panel(_curves(id_by_task[task]), TOKENS_LABEL, "task held-out loss after fine-tuning", f"{task}: ID",
                            x_in_tokens=True))
        report.headlines += [f"fine-tune {task} OOD " + _inflection_text(s) for s in summaries]
    report.figures += plot_panels(panels, title="Fine-tuning probe", out_stem=report.folder / "finetune")
    report.tables["Recommended checkpoint per fine-tuning setting"] = analysis.recommend_checkpoints(finetune)
    columns = ["task", "lr", "reg_lambda", "seed", "tokens_seen", "id_loss_after", "ood_loss_before", "ood_loss_after", "forgetting"]
    report.tables["Fine-tuning runs"] = finetune[columns].sort_values(["task", "lr", "reg_lambda", "tokens_seen", "seed"])


SHARPNESS_TITLES = {"hessian_top": ("top Hessian eigenvalue", "Top Hessian eigenvalue (Lanczos)"),
                    "hessian_trace": ("Hessian trace", "Hessian trace (Hutchinson)"),
                    "worst_case": ("worst-case loss increase (nats/token)", "Worst case at the Gaussian draw's norm")}


def _sharpness_section(sharpness: pd.DataFrame, report: Report) -> None:
    """Each sharpness measure against tokens: one panel per kind, one curve per group, gamma and factor family."""
    panels, summaries = [], []
    for kind, (y_label, title) in SHARPNESS_TITLES.items():
        rows = sharpness[sharpness["kind"] == kind]
        if rows.empty:
            continue
        kind_summaries = analysis.sharpness_summary(rows)
        summaries += kind_summaries
        panels.append(Panel(_curves(kind_summaries), TOKENS_LABEL, y_label, title, x_in_tokens=True))
    report.figures += plot_panels(panels, title="Sharpness probes", out_stem=report.folder / "sharpness")
    report.headlines += [f"sharpness {s.name}: {s.mean[0]:.4g} at {format_tokens(s.tokens[0])} -> {s.mean[-1]:.4g} at "
                         f"{format_tokens(s.tokens[-1])}; Spearman(sharpness, tokens) = {s.sensitivity_spearman:+.2f}" for s in summaries]
    table = pd.DataFrame({"tokens": sorted({t for s in summaries for t in s.tokens})})
    for s in summaries:
        table = table.merge(pd.DataFrame({"tokens": s.tokens, s.name: s.mean}), on="tokens", how="left")
    report.tables["Sharpness probes (mean over seeds)"] = table


def _weight_norm_section(pretrain: pd.DataFrame, report: Report) -> None:
    """The weight matrices' L2 norm against tokens, one curve per pre-training run (seed and factor values)."""
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
    panel = Panel(curves, TOKENS_LABEL, "L2 norm of the weight matrices", "Weight norm after pre-training (decayed matrices)", x_in_tokens=True)
    report.figures += plot_panels([panel], title="Weights", out_stem=report.folder / "weight_norm")


def write_report(store_path: Path, out_dir: Path) -> Report:
    """Write figures, report.html and summary.md for the results in ``store_path``.

    Raises :class:`OvertrainError` (and writes nothing) when the store is missing, empty or holds no
    row a report can show ("nothing to report"), or when ``out_dir`` cannot be written. The report is
    built in a temporary sibling folder and moved into ``out_dir`` only when complete, so a failed
    report leaves neither an empty nor a half-written folder behind.
    """
    store_path, final = Path(store_path), Path(out_dir)
    frames = _read_store(store_path)
    staging = _staging_folder(final)
    try:
        report = _build_report(frames, Report(staging))
        _publish(staging, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    report.folder = final
    report.figures = [final / path.name for path in report.figures]
    return report


@dataclass
class _Frames:
    noise: pd.DataFrame
    finetune: pd.DataFrame
    pretrain: pd.DataFrame
    sharpness: pd.DataFrame = field(default_factory=pd.DataFrame)
    benchmarks: pd.DataFrame = field(default_factory=pd.DataFrame)
    multimodal: pd.DataFrame = field(default_factory=pd.DataFrame)
    pooled_settings: list[str] = field(default_factory=list)
    """Warnings: rows of one checkpoint measured under settings the tables do not draw apart (results.mixing)."""
    evaluation_text: pd.DataFrame = field(default_factory=pd.DataFrame)
    """What the probes measured the pre-training loss on (analysis.evaluation_text_frame)."""


def _nothing_to_report(store_path: Path, why: str) -> OvertrainError:
    return OvertrainError(
        f"nothing to report: the results store {store_path} {why}",
        "run `overtrain sweep SPEC.yaml` until jobs finish (it writes the report itself), then `overtrain report` again",
    )


def _read_store(store_path: Path) -> _Frames:
    """The three frames of a store that has something to report; the store is not written to."""
    if store_path.is_dir():
        raise OvertrainError(f"results store {store_path} is a folder", f"pass the store file, e.g. {store_path / 'results.sqlite'}")
    if not store_path.is_file():
        raise OvertrainError(f"no results store at {store_path}", "run `overtrain sweep SPEC.yaml` first, or pass the path of results.sqlite")
    if store_path.stat().st_size == 0:
        raise _nothing_to_report(store_path, "is an empty file")
    require_results_store(store_path)  # read-only: a file it refuses is left as it was
    with ResultStore(store_path) as store:
        if len(store) == 0:
            raise _nothing_to_report(store_path, "holds no finished job")
        frames = _Frames(analysis.noise_frame(store), analysis.finetune_frame(store), analysis.pretrain_frame(store),
                         analysis.sharpness_frame(store))
        frames.multimodal = multimodal_frame(store)
        frames.benchmarks = base_benchmark_frame(store)
        frames.pooled_settings = pooled_settings(store, _frame_columns(frames))
        frames.evaluation_text = analysis.evaluation_text_frame(store)
    if frames.noise.empty and frames.finetune.empty and frames.pretrain.empty and frames.sharpness.empty \
            and frames.multimodal.empty and frames.benchmarks.empty:
        raise _nothing_to_report(store_path, "holds no pre-training, noise, fine-tuning or sharpness result")
    return frames


def _frame_columns(frames: _Frames) -> dict[str, list[str]]:
    """The columns each probe kind's rows become: the settings the report draws apart."""
    return {"noise": list(frames.noise.columns), "finetune": list(frames.finetune.columns), "sharpness": list(frames.sharpness.columns),
            "benchmarks": list(frames.benchmarks.columns), "multimodal": list(frames.multimodal.columns)}


MIN_BUDGETS_FOR_CURVES = 2


def _on_token_axis(frame: pd.DataFrame, title: str, report: Report) -> pd.DataFrame:
    """Rows whose checkpoint has a known token count, when there are enough budgets to draw a curve.

    Rows of checkpoints without a token count (a Hugging Face model probed on its own) are tabled instead:
    they have no place on a curve over pre-training tokens.
    """
    if frame.empty:
        return frame
    known = frame["tokens_seen"].notna()
    if (~known).any():
        report.tables[f"{title}: checkpoints without a token count"] = frame[~known].drop(columns=["tokens_seen"])
    on_axis = frame[known].astype({"tokens_seen": "int64"})
    if on_axis["tokens_seen"].nunique() < MIN_BUDGETS_FOR_CURVES:
        if not on_axis.empty:
            report.tables[f"{title}: one budget only"] = on_axis
        return on_axis.iloc[0:0]
    return on_axis


def _build_report(frames: _Frames, report: Report) -> Report:
    noise = _on_token_axis(frames.noise, "Noise probe", report)
    finetune = _on_token_axis(frames.finetune.drop(columns=["benchmarks_after"], errors="ignore"), "Fine-tuning probe", report)  # per-document scores: tabled by the benchmark section
    sharpness = _on_token_axis(frames.sharpness, "Sharpness probes", report)
    pretrain = frames.pretrain
    report.headlines += [f"WARNING: {warning}" for warning in frames.pooled_settings]
    report.headlines += [claim.headline() for claim in analysis.paper_claims(noise, finetune)]
    if not frames.evaluation_text.empty:
        report.tables["What the probes measured the pre-training loss on"] = frames.evaluation_text
    if not pretrain.empty:
        report.tables["Pre-training runs"] = pretrain.sort_values("tokens_seen")
        _weight_norm_section(pretrain, report)
    if not noise.empty:
        _noise_section(noise, report)
    if not finetune.empty:
        _finetune_section(finetune, report)
        remedies_section(finetune, report)  # tuned LR, L2, replay, LP-FT, WiSE-FT against plain fine-tuning
    if not noise.empty and not finetune.empty:
        report.tables["Does the noise probe predict forgetting? (Spearman across budgets)"] = analysis.noise_predicts_forgetting(noise, finetune)
    benchmark_section(frames.benchmarks, tuned_benchmark_frame(frames.finetune), noise, report)
    if not sharpness.empty:
        _sharpness_section(sharpness, report)
        if not finetune.empty:
            report.tables["Does sharpness predict forgetting? (Spearman across budgets)"] = analysis.sharpness_predicts_forgetting(sharpness, finetune)
    multimodal = _on_token_axis(frames.multimodal, "Multimodal tuning", report)
    if not multimodal.empty:
        multimodal_section(multimodal, noise, report)
    if not finetune.empty and analysis.factor_names(finetune):  # a sweep over pre-training factors: the fine-tuning-U study's tables
        from overtrain.results.study import study_tables

        report.tables.update(study_tables(finetune, sharpness))
    atomic_write_text(report.html_path, render_html(report))
    atomic_write_text(report.folder / "summary.md", render_markdown(report))
    return report


def _unwritable_report_folder(folder: Path, reason: str) -> OvertrainError:
    return OvertrainError(f"cannot write the report to {folder} ({reason})", "pass --out a folder you can write (or make this one writable)")


def _staging_folder(final: Path) -> Path:
    """A fresh temporary folder beside ``final`` (in its nearest existing ancestor), refusing unusable targets."""
    if final.exists() and not final.is_dir():
        raise _unwritable_report_folder(final, "it is a file, not a folder")
    ancestor = next((folder for folder in [final.parent, *final.parent.parents] if folder.exists()), Path("."))
    if not ancestor.is_dir():
        raise _unwritable_report_folder(final, f"{ancestor} is a file, not a folder")
    try:
        if final.is_dir():  # an existing report folder must take new files
            tempfile.TemporaryFile(dir=final).close()
        return Path(tempfile.mkdtemp(prefix=final.name + TEMPORARY_MARK, dir=ancestor))
    except OSError as error:
        raise _unwritable_report_folder(final, error.strerror or str(error)) from None


REPORT_FIGURES = frozenset(f"{stem}{suffix}" for stem in ("noise", "finetune", "sharpness", "weight_norm", "benchmarks", "benchmarks_each",
                                                            "remedies", "multimodal") for suffix in (".png", ".svg"))
"""Every figure file a report can write (the ``out_stem`` names of its sections; a test keeps the list whole)."""


def _publish(staging: Path, final: Path) -> None:
    """Move the finished files into ``final`` (figures first, report.html last); create it only now. Figures
    of an earlier report that this one does not draw (a section whose rows are gone) are removed after, so
    that the folder holds no report figure the report does not show; files of other names are left alone."""
    created = not final.exists()
    files = sorted(staging.iterdir(), key=lambda path: (path.name in ("summary.md", "report.html"), path.name))
    try:
        final.mkdir(parents=True, exist_ok=True)
        for path in files:
            os.replace(path, final / path.name)
        drawn = {path.name for path in files}
        for stale in [final / name for name in REPORT_FIGURES - drawn if (final / name).is_file()]:
            stale.unlink()
    except OSError as error:
        if created and final.is_dir() and not any(final.iterdir()):
            final.rmdir()
        raise _unwritable_report_folder(final, error.strerror or str(error)) from None


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
    headlines = "".join(f"<li>{html.escape(line)}</li>" for line in shown_headlines(report))
    tables = "".join(f"<h2>{html.escape(title)}</h2>{_html_table(frame)}" for title, frame in report.tables.items())
    style = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}"
             "img{max-width:100%}table{border-collapse:collapse;font-size:13px;margin-bottom:1.5em}"
             "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#f3f3f3}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>overtrain report</title><style>{style}</style></head>"
            f"<body><h1>Catastrophic overtraining: report</h1><h2>Headlines</h2><ul>{headlines}</ul>{''.join(images)}{tables}</body></html>")


NO_HEADLINES = ("none: these results hold no curve over pre-training tokens to read a headline from "
                "(a probe of one checkpoint, say); the tables below list every result")


def shown_headlines(report: Report) -> list[str]:
    """The report's headlines, or one line saying why there are none (never an empty section)."""
    return report.headlines or [NO_HEADLINES]


def render_markdown(report: Report) -> str:
    lines = ["# overtrain report", "", "## Headlines", ""] + [f"- {line}" for line in shown_headlines(report)] + [""]
    lines += [f"![{p.stem}]({p.name})" for p in report.figures if p.suffix == ".png"] + [""]
    for title, frame in report.tables.items():
        lines += [f"## {title}", "", _markdown_table(frame), ""]
    return "\n".join(lines)


def _markdown_table(frame: pd.DataFrame) -> str:
    header = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "---|" * len(frame.columns)
    rows = ["| " + " | ".join(_format_cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *rows])
