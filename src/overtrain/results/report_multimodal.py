"""The report's multimodal section, in the paper's form: the VLM score and the OOD score of the LM part
against the pre-training tokens of the checkpoint each VLM was built on.

- VLM score: held-out VQA exact-match accuracy (mean over image sets); its best budget is the minimum
  of the VQA error (1 - accuracy), found like every inflection (:func:`find_inflection`);
- OOD score: the LM's pre-training held-out loss after both stages (and before, dashed);
- caption loss after stage 1 and after stage 2, per image set accuracy against its blind baseline.

Curves are means over units: pre-training seeds when the sweep has several (each unit's tuning seeds
averaged), else the tuning seeds of the one pre-training run; bands are the range over those units and
every inflection interval says what was resampled and how many units there were.
"""

from __future__ import annotations

import pandas as pd

from overtrain.probes.benchmarks import benchmark_average
from overtrain.results import analysis
from overtrain.results.plots import Curve, InflectionMark, Panel, plot_panels
from overtrain.results.store import ResultStore
from overtrain.units import format_tokens

TOKENS_LABEL = "pre-training tokens"
UNITS = "tuning seeds"
RUN_COLUMNS = ["lr", "seed", "tokens_seen", "vqa_accuracy", "choice_accuracy", "caption_loss_stage1", "caption_loss_after", "answer_loss",
               "ood_loss_before", "ood_loss_after", "forgetting"]


def multimodal_frame(store: ResultStore) -> pd.DataFrame:
    """One row per multimodal tuning run: its scalar read-outs, ``vqa_<set>`` and ``blind_<set>`` accuracies,
    ``vqa_error`` (1 - vqa_accuracy) and the pre-training factors."""
    rows = []
    for row in store.rows(kind="multimodal"):
        metrics = row.metrics
        flat = {key: value for key, value in metrics.items() if not isinstance(value, (dict, list))}
        for name, scores in metrics["vqa"].items():
            flat[f"vqa_{name}"] = scores["accuracy"]
            flat[f"blind_{name}"] = scores["blind_accuracy"]
            flat[f"choice_{name}"] = scores.get("choice_accuracy")
        flat["datasets"] = "+".join(metrics["datasets"])
        flat |= {f"bench_{name}": value for name, value in benchmark_average(metrics.get("benchmarks_after") or {}).items()}
        flat["vqa_error"] = 1.0 - metrics["vqa_accuracy"]
        flat["choice_error"] = 1.0 - metrics.get("choice_accuracy", float("nan"))
        rows.append(flat | analysis.factor_columns(metrics.get("factors", {})))
    return pd.DataFrame(rows)


def _summaries(frame: pd.DataFrame, value: str, damage: str) -> list[analysis.SettingSummary]:
    """Per pre-training factor value and lr: ``value`` vs tokens (mean and range over units), its minimum."""
    factors = analysis.factor_names(frame)
    summaries = []
    for values, group in frame.groupby([*factors, "lr"]):
        values = values if isinstance(values, tuple) else (values,)
        name = " ".join(filter(None, [analysis.factor_label(values[:-1], factors), f"lr={values[-1]:g}"]))
        summaries.append(analysis._summarize(name, group, value, damage, UNITS))
    return summaries


def _accuracy_curves(summaries: list[analysis.SettingSummary], prefix: str = "", line_style: str = "-") -> list[Curve]:
    """Accuracy = 1 - error, with the band flipped accordingly."""
    return [Curve(prefix + s.name, s.tokens, [1 - v for v in s.mean], [1 - v for v in s.high], [1 - v for v in s.low], marker="o",
                  line_style=line_style) for s in summaries]


def _loss_curves(summaries: list[analysis.SettingSummary]) -> list[Curve]:
    return [Curve(s.name, s.tokens, s.mean, s.low, s.high, marker="o") for s in summaries]


def _marks(summaries: list[analysis.SettingSummary]) -> dict[str, InflectionMark]:
    return {s.name: InflectionMark(s.inflection.at, s.inflection.low, s.inflection.high) for s in summaries if s.inflection.u_shaped}


def multimodal_section(frame: pd.DataFrame, noise: pd.DataFrame, report) -> None:
    """Figures, headlines and tables of the multimodal runs in ``frame`` (rows with a token count, >= 2 budgets)."""
    vqa = _summaries(frame, "vqa_error", "vqa_error")
    ood = _summaries(frame, "ood_loss_after", "forgetting")
    choice = _summaries(frame, "choice_error", "choice_error")
    captions = _summaries(frame, "caption_loss_after", "caption_loss_after")
    before = frame.groupby("tokens_seen")["ood_loss_before"].mean().sort_index()
    base = Curve("before tuning", list(before.index), list(before.values), color="black", line_style="--", marker="s")
    panels = [
        Panel(_accuracy_curves(vqa), TOKENS_LABEL, "held-out VQA accuracy (exact match)", "VLM score",
              inflections=_marks(vqa), x_in_tokens=True),
        Panel(_accuracy_curves(choice), TOKENS_LABEL, "held-out accuracy of the lowest-loss answer", "VLM score (answer choice)",
              inflections=_marks(choice), x_in_tokens=True),
        Panel([base, *_loss_curves(ood)], TOKENS_LABEL, "pre-training loss of the LM (nats/token)", "OOD score: after multimodal tuning",
              inflections=_marks(ood), x_in_tokens=True),
        Panel(_loss_curves(captions), TOKENS_LABEL, "held-out caption loss (nats/token)", "Caption loss after both stages", x_in_tokens=True),
    ]
    sets = [c.removeprefix("blind_") for c in frame.columns if c.startswith("blind_")]
    for name in sets:
        exact = _accuracy_curves(_summaries(frame.assign(vqa_error=1 - frame[f"vqa_{name}"]), "vqa_error", "vqa_error"), "exact ")
        chosen = _accuracy_curves(_summaries(frame.assign(vqa_error=1 - frame[f"choice_{name}"]), "vqa_error", "vqa_error"), "choice ", "--")
        blind = frame.groupby("tokens_seen")[f"blind_{name}"].mean().sort_index()
        blind_curve = Curve("blind baseline", list(blind.index), list(blind.values), color="gray", line_style=":")
        panels.append(Panel([blind_curve, *exact, *chosen], TOKENS_LABEL, "held-out accuracy", f"{name}: VQA exact match and answer choice",
                            x_in_tokens=True))
    report.figures += plot_panels(panels, title="Multimodal (LLaVA-style) tuning", out_stem=report.folder / "multimodal")
    for v, c, o in zip(vqa, choice, ood):
        best = v.inflection
        report.headlines.append(
            f"multimodal {v.name}: VQA accuracy {1 - v.mean[0]:.3f} at {format_tokens(v.tokens[0])} -> {1 - v.mean[-1]:.3f} at "
            f"{format_tokens(v.tokens[-1])} (answer choice {1 - c.mean[0]:.3f} -> {1 - c.mean[-1]:.3f}), best at {format_tokens(best.at)} ({best.interval_kind} {format_tokens(best.low)}-"
            f"{format_tokens(best.high)} over {best.units} {best.resampled}; drop past it {best.rise:+.3f}{', a U' if best.u_shaped else ', not a U'}); "
            f"OOD after tuning: {o.inflection.describe()}; Spearman(forgetting, tokens) = {o.sensitivity_spearman:+.2f}")
    report.tables["Multimodal: VLM and OOD score per budget (mean over units)"] = _score_table(frame, sets)
    report.tables["Multimodal tuning runs"] = frame[[c for c in RUN_COLUMNS if c in frame]].sort_values(["lr", "tokens_seen", "seed"])
    bench_columns = [column for column in frame.columns if column.startswith("bench_")]
    if bench_columns:  # the OOD benchmark score of the LM part after multimodal tuning
        table = frame.groupby(["lr", "tokens_seen"], as_index=False)[bench_columns].mean()
        report.tables["Multimodal: benchmark average of the LM part after tuning (mean over tuning seeds)"] = table
    if not noise.empty:
        as_finetune = frame.assign(task="multimodal", reg_lambda=0.0)
        report.tables["Does the noise probe predict the VLM's forgetting? (Spearman across budgets)"] = \
            analysis.noise_predicts_forgetting(noise, as_finetune)


def _score_table(frame: pd.DataFrame, sets: list[str]) -> pd.DataFrame:
    columns = ["vqa_accuracy", "choice_accuracy", *(f"vqa_{name}" for name in sets), *(f"choice_{name}" for name in sets),
               *(f"blind_{name}" for name in sets), "caption_loss_stage1",
               "caption_loss_after", "ood_loss_before", "ood_loss_after", "forgetting"]
    table = frame.groupby(["lr", "tokens_seen"], as_index=False)[columns].mean()
    table.insert(2, "runs", frame.groupby(["lr", "tokens_seen"]).size().to_numpy())
    return table
