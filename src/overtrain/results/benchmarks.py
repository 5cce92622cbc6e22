"""Benchmark results in the paper's form: base and tuned models' scores against pre-training tokens.

Rows come from two places in a store: ``benchmarks`` jobs (the base checkpoints, stage ``base``) and
fine-tuning rows whose ``benchmarks_after`` holds the tuned model's scores (stage ``tuned``). The tuned
model of a checkpoint is the run at the *tuned LR*: per checkpoint, fine-tuning task and seed, the LR with
the lowest held-out ID loss (:func:`overtrain.results.tuned.tuned_frame`), among plain runs (no remedy).

Read-outs per benchmark: ``acc`` (the harness's accuracy), ``gold_logprob_per_byte`` (mean log-likelihood
of the gold answer per UTF-8 byte, nats) and ``margin_per_byte`` (gold minus the best wrong choice). The
benchmark *average* is the mean over benchmarks of each read-out.

The inflection of a tuned curve (where more pre-training starts to make the tuned model worse) is found
on its loss form (``1 - acc``, or ``-gold_logprob_per_byte``) with :func:`~overtrain.results.inflection.find_inflection`;
with one pre-training run per budget there is no pre-training seed to resample, so the interval is a
paired bootstrap over **benchmark items** (the same documents are scored at every budget), each item
weighted so that the mean over items is the mean over benchmarks; when the stored items do not line up
across budgets, over **benchmarks** instead. The interval says which and how many.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from overtrain.results.analysis import factor_columns, spearman
from overtrain.results.inflection import Inflection, find_inflection
from overtrain.results.store import ResultStore

READOUTS = ("acc", "gold_logprob_per_byte", "margin_per_byte")
READOUT_LABELS = {"acc": "accuracy", "gold_logprob_per_byte": "gold log-likelihood per byte (nats)",
                  "margin_per_byte": "gold margin per byte (nats)"}
"""Axis labels and headline names of the read-outs."""
BENCHMARK_COLUMNS = ["checkpoint", "tokens_seen", "stage", "benchmark", "documents", "acc", "acc_norm", "gold_logprob_per_byte",
                     "margin_per_byte", "items", "lr", "finetune_task", "finetune_seed"]
REMEDY_OFF = {"reg_lambda": 0.0, "replay_fraction": 0.0, "linear_probe_steps": 0}


def _score_rows(base: dict[str, Any], scores: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**base, "benchmark": name, "documents": score.get("documents"), "acc": score.get("acc"), "acc_norm": score.get("acc_norm"),
             "gold_logprob_per_byte": score.get("gold_logprob_per_byte"), "margin_per_byte": score.get("margin_per_byte"),
             "items": score.get("items")} for name, score in scores.items()]


def base_benchmark_frame(store: ResultStore) -> pd.DataFrame:
    """One row per (base checkpoint, benchmark) of the store's ``benchmarks`` jobs (columns: BENCHMARK_COLUMNS + factors)."""
    rows = []
    for row in store.rows(kind="benchmarks"):
        base = {"checkpoint": row.spec["checkpoint"], "tokens_seen": row.metrics.get("tokens_seen"), "stage": "base",
                "lr": np.nan, "finetune_task": None, "finetune_seed": np.nan, **factor_columns(row.metrics.get("factors", {}))}
        rows += _score_rows(base, row.metrics.get("benchmarks", {}))
    return pd.DataFrame(rows) if rows else pd.DataFrame(columns=BENCHMARK_COLUMNS)


def tuned_benchmark_frame(finetune: pd.DataFrame) -> pd.DataFrame:
    """One row per (checkpoint, fine-tuning task and seed, benchmark) of the runs at the tuned LR (plain
    fine-tuning only) that scored benchmarks after tuning; ``lrs_compared`` says how many LRs competed."""
    if finetune.empty or "benchmarks_after" not in finetune:
        return pd.DataFrame(columns=BENCHMARK_COLUMNS)
    scored = finetune[finetune["benchmarks_after"].map(lambda value: isinstance(value, dict) and bool(value))]
    for name, off in REMEDY_OFF.items():
        if name in scored:
            scored = scored[scored[name].fillna(off) == off]
    if scored.empty:
        return pd.DataFrame(columns=BENCHMARK_COLUMNS)
    tuned = tuned_runs(scored)
    rows = []
    for record in tuned.to_dict("records"):
        base = {"checkpoint": record["checkpoint"], "tokens_seen": record.get("tokens_seen"), "stage": "tuned", "lr": record["lr"],
                "finetune_task": record["task"], "finetune_seed": record["seed"], "lrs_compared": record.get("lrs_compared"),
                **{key: value for key, value in record.items() if key.startswith("pretrain")}}
        rows += _score_rows(base, record["benchmarks_after"])
    return pd.DataFrame(rows)


def tuned_runs(finetune: pd.DataFrame) -> pd.DataFrame:
    """The tuned-LR rows (lowest held-out ID loss per checkpoint, task and seed) with ``lrs_compared``."""
    try:
        from overtrain.results.tuned import tuned_frame
    except ImportError:  # a checkout without the tuned-LR module: the same choice, made here
        from overtrain.probes.finetune import select_tuned

        records = finetune.to_dict("records")
        chosen = pd.DataFrame(select_tuned(records, "id_loss_after"))
        compared = finetune.groupby(["checkpoint", "task", "seed"])["lr"].nunique().rename("lrs_compared").reset_index()
        return chosen.merge(compared, on=["checkpoint", "task", "seed"], how="left")
    return tuned_frame(finetune, "id_loss_after")


@dataclass(frozen=True)
class StageCurve:
    """One stage's benchmark curve over budgets: the mean per budget and the unit table the interval resamples."""

    tokens: list[int]
    mean: list[float]
    units: np.ndarray
    """(units, budgets): per-item (or per-benchmark) values whose mean over units is ``mean``."""
    resampled: str
    """What a unit is, with the count, e.g. ``benchmark items (500 over 10 benchmarks; one pre-training run per budget)``."""


def stage_curve(frame: pd.DataFrame, readout: str, benchmarks: list[str] | None = None) -> StageCurve | None:
    """The benchmark average of ``readout`` per budget for the rows of one stage (fine-tuning seeds and
    pre-training seeds averaged per document); None when fewer than two budgets have every benchmark."""
    frame = frame[frame[readout].notna()]
    names = sorted(benchmarks or frame["benchmark"].unique())
    per_budget = frame.groupby("tokens_seen")["benchmark"].agg(lambda values: set(values))
    tokens = sorted(int(t) for t, present in per_budget.items() if set(names) <= present)
    if len(tokens) < 2 or not names:
        return None
    items = _item_table(frame, readout, names, tokens)
    if items is not None:
        count = items.shape[0]
        return StageCurve(tokens, [float(v) for v in items.mean(axis=0)], items,
                          f"benchmark items ({count} over {len(names)} benchmarks; one pre-training run per budget)")
    table = np.array([[frame[(frame["benchmark"] == name) & (frame["tokens_seen"] == t)][readout].mean() for t in tokens] for name in names])
    return StageCurve(tokens, [float(v) for v in table.mean(axis=0)], table, f"benchmarks ({len(names)}; items did not line up across budgets)")


def _item_table(frame: pd.DataFrame, readout: str, names: list[str], tokens: list[int]) -> np.ndarray | None:
    """(items, budgets) of per-document values, each weighted by total / (benchmarks x its documents) so the
    mean over items is the mean over benchmarks; None if any benchmark's documents differ across budgets."""
    if readout not in ("acc", "gold_logprob_per_byte", "margin_per_byte"):
        return None
    blocks = []
    for name in names:
        columns = []
        for t in tokens:
            cell = frame[(frame["benchmark"] == name) & (frame["tokens_seen"] == t)]
            vectors = [np.asarray(items[readout], dtype=float) for items in cell["items"] if isinstance(items, dict) and readout in items]
            if not vectors or len({len(v) for v in vectors}) != 1:
                return None
            columns.append(np.mean(vectors, axis=0))  # fine-tuning / pre-training seeds averaged per document
        if len({len(c) for c in columns}) != 1:
            return None
        blocks.append(np.stack(columns, axis=1))  # (documents, budgets)
    total = sum(block.shape[0] for block in blocks)
    weighted = [block * (total / (len(blocks) * block.shape[0])) for block in blocks]
    return np.concatenate(weighted, axis=0)


def curve_inflection(curve: StageCurve, readout: str) -> Inflection:
    """The inflection of a benchmark curve on its loss form (higher read-outs are better, so the U is in
    ``1 - acc`` or in minus the log-likelihood)."""
    loss = 1.0 - curve.units if readout == "acc" else -curve.units
    return find_inflection(np.asarray(curve.tokens, dtype=float), loss, resampled=curve.resampled)


def per_budget_table(base: pd.DataFrame, tuned: pd.DataFrame) -> pd.DataFrame:
    """Per budget: the benchmark average of each read-out, base and tuned, the tuned LR(s) and the drop."""
    rows = {}
    for stage, frame in (("base", base), ("tuned", tuned)):
        if frame.empty:
            continue
        means = frame.groupby(["tokens_seen", "benchmark"])[list(READOUTS)].mean().groupby("tokens_seen").mean()
        for tokens, values in means.iterrows():
            entry = rows.setdefault(int(tokens), {"tokens": int(tokens)})
            for readout in READOUTS:
                entry[f"{stage} {readout}"] = values[readout]
            if stage == "tuned":
                lrs = sorted(frame[frame["tokens_seen"] == tokens]["lr"].unique())
                entry["tuned lr"] = ",".join(f"{lr:g}" for lr in lrs)
    table = pd.DataFrame(sorted(rows.values(), key=lambda row: row["tokens"]))
    for readout in ("acc", "gold_logprob_per_byte"):
        if f"base {readout}" in table and f"tuned {readout}" in table:
            table[f"drop {readout}"] = table[f"base {readout}"] - table[f"tuned {readout}"]
    order = ["tokens", *(f"{stage} {readout}" for stage in ("base", "tuned") for readout in READOUTS), "tuned lr", "drop acc", "drop gold_logprob_per_byte"]
    return table[[column for column in order if column in table]]


def noise_predicts_drop(noise: pd.DataFrame, budgets: pd.DataFrame) -> pd.DataFrame:
    """Spearman across budgets between the noise probe's loss increase (per gamma) and the tuned model's
    benchmark level and drop (base minus tuned average), per read-out."""
    if noise.empty or budgets.empty:
        return pd.DataFrame()
    delta = noise.groupby(["gamma", "tokens_seen"])["delta"].mean()
    rows = []
    for gamma in delta.index.get_level_values(0).unique():
        series = delta.loc[gamma]
        for column in [c for c in budgets.columns if c.startswith(("drop ", "tuned ")) and c != "tuned lr"]:
            joined = pd.concat([series, budgets.set_index("tokens")[column]], axis=1, join="inner").dropna()
            if len(joined) >= 3:
                rows.append({"gamma": gamma, "against": column, "budgets": len(joined),
                             "spearman": spearman(joined.iloc[:, 0].to_numpy(), joined.iloc[:, 1].to_numpy())})
    return pd.DataFrame(rows)
