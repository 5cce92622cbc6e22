"""Remedies as sweep axes, the tuned LR, and the remedies analysis and report section (synthetic frames with known
answers; no training here: the remedies themselves are tested on a real checkpoint in test_remedies.py)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import overtrain
from overtrain.errors import OvertrainError
from overtrain.results.tuned import tuned_frame
from overtrain.sweep.config import finetune_grid, load_sweep_config
from overtrain.sweep.plan import plan_jobs

DEMO = Path(overtrain.__file__).parent / "recipes" / "demo.yaml"
HUB = "checkpoints=[hf:org/m@step1]"


def _finetune_jobs(*overrides: str):
    return [job for job in plan_jobs(load_sweep_config(None, [HUB, *overrides])) if job.kind == "finetune"]


def test_demo_job_keys_do_not_change_when_the_remedy_axes_are_at_default() -> None:
    # sha256 of the demo recipe's 108 fine-tuning job keys (sorted) as planned before the remedy axes existed;
    # with reg_lambdas=[0,0.01] (216 keys) as a second witness. A changed digest means every stored row re-runs.
    for extra, count, digest in [([], 108, "456b059b633e700e"), (["finetune.reg_lambdas=[0,0.01]"], 216, "f801f4f20b15058e")]:
        keys = sorted(job.key for job in plan_jobs(load_sweep_config(DEMO, extra)) if job.kind == "finetune")
        assert len(keys) == count and hashlib.sha256("".join(keys).encode()).hexdigest()[:16] == digest
    spelled_out = ["finetune.replay_fractions=[0]", "finetune.linear_probe_steps=[0]", "finetune.wise_alphas=[]"]
    assert {job.key for job in plan_jobs(load_sweep_config(DEMO, spelled_out))} == {job.key for job in plan_jobs(load_sweep_config(DEMO))}


def test_remedy_axes_cross_like_the_other_axes() -> None:
    jobs = _finetune_jobs("finetune.lrs=[1e-3,1e-2]", "finetune.replay_fractions=[0,0.25]", "finetune.linear_probe_steps=[0,5]")
    settings = {(job.spec["finetune"]["lr"], job.spec["finetune"].get("replay_fraction", 0.0), job.spec["finetune"].get("linear_probe_steps", 0))
                for job in jobs}
    assert len(jobs) == 8 and settings == {(lr, r, k) for lr in (1e-3, 1e-2) for r in (0.0, 0.25) for k in (0, 5)}
    assert "replay=0.25" in next(job.label for job in jobs if job.spec["finetune"].get("replay_fraction"))
    # singular spellings are one-value axes; linear_probe_steps names its own axis
    one = _finetune_jobs("finetune.replay_fraction=0.5", "finetune.linear_probe_steps=3")
    assert len(one) == 1 and one[0].spec["finetune"]["replay_fraction"] == 0.5 and one[0].spec["finetune"]["linear_probe_steps"] == 3


def test_variants_add_remedy_grids_without_crossing_every_axis() -> None:
    variants = "finetune.variants=[{lr: 0.01, replay_fractions: [0.125, 0.25]}, {lrs: [0.01], linear_probe_steps: 20}]"
    jobs = _finetune_jobs("finetune.lrs=[5e-3,1e-2,2e-2]", "finetune.wise_alphas=[0.5]", variants)
    specs = [job.spec["finetune"] for job in jobs]
    plain = [s for s in specs if "replay_fraction" not in s and "linear_probe_steps" not in s]
    assert sorted(s["lr"] for s in plain) == [5e-3, 1e-2, 2e-2]
    with pytest.raises(OvertrainError, match=r"finetune.variants\[2\] adds no job: every combination it names is already in the grid"):
        _finetune_jobs("finetune.lrs=[5e-3,1e-2,2e-2]", "finetune.wise_alphas=[0.5]", variants[:-1] + ", {lr: 0.01}]")  # a base job again
    assert sorted(s["replay_fraction"] for s in specs if "replay_fraction" in s) == [0.125, 0.25]
    assert [s["linear_probe_steps"] for s in specs if "linear_probe_steps" in s] == [20]
    assert len(jobs) == 6 and len({job.key for job in jobs}) == 6
    assert all(s["wise_alphas"] == [0.5] for s in specs)  # a variant keeps the section's other settings
    no_wise = _finetune_jobs("finetune.wise_alphas=[0.5]", "finetune.variants=[{replay_fraction: 0.25, wise_alphas: []}]")
    assert [job.spec["finetune"].get("wise_alphas") for job in no_wise] == [[0.5], None]


@pytest.mark.parametrize("variant, message", [
    ("[{replay_fraction: 1.5}]", "replay_fraction"),
    ("[{lrs: []}]", r"variants\[0\].lrs"),
    ("[{lr: -1}]", r"finetune.variants\[0\].lr=-1.0 is invalid"),  # named where it was set, not as the base's finetune.lr
    ("[{eval_tokens: 5}]", "cannot change"),
    ("[{lrz: [1]}]", "lrz"),
    ("[3]", "mapping"),
])
def test_bad_variants_are_explained(variant: str, message: str) -> None:
    with pytest.raises(OvertrainError, match=message):
        load_sweep_config(None, [HUB, f"finetune.variants={variant}"])


def _rows(**columns) -> pd.DataFrame:
    return pd.DataFrame(columns)


def test_tuned_frame_keeps_the_best_lr_per_checkpoint_seed_and_remedy() -> None:
    rows = []
    for checkpoint, tokens, losses in [("a", 100, {1e-3: 2.0, 1e-2: 1.5}), ("b", 200, {1e-3: 1.0, 1e-2: 1.2})]:
        for lr, loss in losses.items():
            for replay in (0.0, 0.25):
                # with replay the ordering of the LRs flips at checkpoint a: tuned per remedy setting, not once
                flipped = loss + (1.0 if (replay and checkpoint == "a" and lr == 1e-2) else 0.0)
                rows.append({"checkpoint": checkpoint, "tokens_seen": tokens, "task": "t", "seed": 0, "lr": lr, "reg_lambda": 0.0,
                             "replay_fraction": replay, "id_loss_after": flipped, "id_accuracy_after": None})
    frame = pd.DataFrame(rows)
    tuned = tuned_frame(frame)
    chosen = {(row.checkpoint, row.replay_fraction): row.lr for row in tuned.itertuples()}
    assert chosen == {("a", 0.0): 1e-2, ("b", 0.0): 1e-3, ("a", 0.25): 1e-3, ("b", 0.25): 1e-3}
    assert set(tuned["lrs_compared"]) == {2} and set(tuned["lr_grid"]) == {"0.001/0.01"}
    assert (tuned["linear_probe_steps"] == 0).all()  # a column older stores lack, filled in as "off"
    older = tuned_frame(frame[frame["replay_fraction"] == 0].drop(columns=["replay_fraction"]))
    assert dict(zip(older["checkpoint"], older["lr"])) == {"a": 1e-2, "b": 1e-3}
    assert tuned_frame(frame.iloc[0:0]).empty
    with pytest.raises(OvertrainError, match="metric"):
        tuned_frame(frame, metric="ood_loss_after")
    accuracy = frame.assign(id_accuracy_after=np.where(frame["lr"] == 1e-3, 0.9, 0.5))
    assert set(tuned_frame(accuracy, "id_accuracy_after")["lr"]) == {1e-3}


def test_finetune_grid_validates_every_variant_setting() -> None:
    config = load_sweep_config(None, [HUB, "finetune.variants=[{reg_lambda: 0.1}]"])
    assert [c.reg_lambda for c in finetune_grid(config.finetune)] == [0.0, 0.1]


# --- the remedies analysis on synthetic runs with known answers ---------------------------------------------------

BUDGETS = [1000 * 2**i for i in range(6)]


def _run(tokens: int, pretrain_seed: int, lr: float, gain: float, forgetting: float, *, reg_lambda: float = 0.0, replay: float = 0.0,
         lp_steps: int = 0, wise: list | None = None, ood_before: float = 2.0, seed: int = 0) -> dict:
    return {"checkpoint": f"seed{pretrain_seed}/{tokens}", "tokens_seen": tokens, "task": "t", "seed": seed, "pretrain_seed": pretrain_seed,
            "lr": lr, "reg_lambda": reg_lambda, "replay_fraction": replay, "linear_probe_steps": lp_steps,
            "id_loss_before": 1.0, "id_loss_after": 1.0 - gain, "ood_loss_before": ood_before, "ood_loss_after": ood_before + forgetting,
            "forgetting": forgetting, "wise": wise or []}


# plain LR sweep at every budget: (ID gain, forgetting) = (0.1, 0.01), (0.2, 0.03), (0.3, 0.07) at lr 1, 2, 4 (x1e-3)
PLAIN_SWEEP = {1e-3: (0.1, 0.01), 2e-3: (0.2, 0.03), 4e-3: (0.3, 0.07)}


def _trade_off_frame() -> pd.DataFrame:
    rows = []
    for tokens in BUDGETS[:3]:
        for seed in range(3):
            for lr, (gain, forgetting) in PLAIN_SWEEP.items():
                rows.append(_run(tokens, seed, lr, gain, forgetting))
                rows.append(_run(tokens, seed, lr, 0.5, 0.5, seed=1))  # fine-tuning seed 1: plain only, never compared with a remedy
            # the same plain run again, now with a WiSE-FT reading (the spec's WiSE variant): counted once as a run
            rows.append(_run(tokens, seed, 2e-3, 0.2, 0.03, wise=[{"alpha": 0.5, "id_loss": 0.9, "ood_loss": 2.0075}]))
            rows.append(_run(tokens, seed, 2e-3, 0.15, 0.01, replay=0.25))     # plain at gain 0.15: 0.02; at forgetting 0.01: 0.1
            rows.append(_run(tokens, seed, 2e-3, 0.25, 0.06, lp_steps=20))     # plain at gain 0.25: 0.05; at forgetting 0.06: 0.275
            rows.append(_run(tokens, seed, 2e-3, 0.05, 0.001, reg_lambda=0.1))  # gain below plain's sweep: nothing to compare with
    return pd.DataFrame(rows)


def test_trade_off_reads_plain_values_off_the_lr_sweep() -> None:
    from overtrain.results.remedies import remedy_readings, trade_off

    readings = remedy_readings(_trade_off_frame())
    assert set(readings["kind"]) == {"plain", "replay 0.25", "LP-FT 20", "L2 lambda=0.1", "WiSE-FT alpha=0.5", "tuned LR"}
    table = trade_off(readings)
    at = table[table["tokens_seen"] == BUDGETS[2]].set_index("remedy")
    assert at.loc["replay 0.25 lr=0.002", "plain_forgetting_at_equal_gain"] == pytest.approx(0.02)
    assert at.loc["replay 0.25 lr=0.002", "forgetting_saved"] == pytest.approx(0.01)
    assert at.loc["replay 0.25 lr=0.002", "gain_added"] == pytest.approx(0.05)
    assert at.loc["LP-FT 20 lr=0.002", "forgetting_saved"] == pytest.approx(-0.01)
    assert at.loc["LP-FT 20 lr=0.002", "plain_gain_at_equal_forgetting"] == pytest.approx(0.275)
    assert np.isnan(at.loc["L2 lambda=0.1 lr=0.002", "forgetting_saved"])  # no extrapolation below the sweep
    wise = at.loc["WiSE-FT alpha=0.5 lr=0.002"]  # (0.1, 0.0075): plain forgets 0.01 at that gain
    assert wise["forgetting_saved"] == pytest.approx(0.0025) and wise["lr"] == 2e-3
    # the tuned LR is the best ID loss per checkpoint and seed: lr 4e-3 (gain 0.3) for seed 0, 0.5 for seed 1
    assert at.loc["tuned LR", "id_gain"] == pytest.approx(0.4) and at.loc["tuned LR", "runs"] == 6
    assert at.loc["plain lr=0.002", "forgetting_saved"] == pytest.approx(0.0)
    assert at.loc["replay 0.25 lr=0.002", "runs"] == 3 and at.loc["plain lr=0.002", "runs"] == 6  # 3 pre-training x 2 fine-tuning seeds


def test_ranking_orders_remedies_by_forgetting_saved_at_equal_gain() -> None:
    from overtrain.results.remedies import ranking, remedy_readings

    table = ranking(remedy_readings(_trade_off_frame()))["t"]
    order = list(table["remedy"])
    assert order[0] == "replay 0.25 lr=0.002" and order[1] == "WiSE-FT alpha=0.5 lr=0.002"
    assert order.index("LP-FT 20 lr=0.002") == len(order) - 2 and order[-1] == "L2 lambda=0.1 lr=0.002"
    assert list(table["rank"]) == list(range(1, len(order) + 1)) and set(table["tokens"]) == {BUDGETS[2]}


def test_inflection_shift_is_the_ratio_of_the_minima_with_a_paired_bootstrap() -> None:
    from overtrain.results.remedies import inflection_shift, remedy_readings

    rows = []
    for i, tokens in enumerate(BUDGETS):
        for seed in range(3):
            offset = 0.01 * seed  # a per-seed offset moves no minimum: the bootstrap interval is the point itself
            rows.append(_run(tokens, seed, 2e-3, 0.2, 0.1 * (i - 2) ** 2 + offset))              # minimum at 4000 tokens
            rows.append(_run(tokens, seed, 2e-3, 0.2, 0.1 * (i - 3) ** 2 + offset, replay=0.25))  # minimum at 8000 tokens
            rows.append(_run(tokens, seed, 2e-3, 0.2, 0.1 * i + offset, reg_lambda=1.0))          # no interior minimum
    readings = remedy_readings(pd.DataFrame(rows))
    by = {name: part for name, part in readings.groupby("remedy")}
    shift = inflection_shift(by["replay 0.25 lr=0.002"], by["plain lr=0.002"])
    assert shift.ratio == pytest.approx(2.0) and shift.low == pytest.approx(2.0) and shift.high == pytest.approx(2.0)
    assert shift.interval_kind == "paired bootstrap 95% (nominal)" and shift.units == 3 and "x2.00" in shift.describe()
    assert inflection_shift(by["L2 lambda=1 lr=0.002"], by["plain lr=0.002"]) is None


def test_report_section_renders_figures_headlines_and_a_ranking(tmp_path: Path) -> None:
    from overtrain.results.report import Report, render_markdown
    from overtrain.results.report_remedies import remedies_section

    report = Report(tmp_path)
    remedies_section(_trade_off_frame(), report)
    assert {path.name for path in report.figures} == {"remedies.png", "remedies.svg"} and all(p.is_file() for p in report.figures)
    ranking_title = next(title for title in report.tables if title.startswith("Remedies on t: ranking"))
    assert report.tables[ranking_title]["remedy"].iloc[0] == "replay 0.25 lr=0.002"
    assert any("ranked 1 of" in line and ": replay 0.25 lr=0.002: " in line and "+0.0100 forgetting saved" in line for line in report.headlines)
    assert "Remedies on t: ranking" in render_markdown(report)
    plain_only = _trade_off_frame().query("replay_fraction == 0 and linear_probe_steps == 0 and reg_lambda == 0 and lr == 0.002")
    quiet = Report(tmp_path / "quiet")
    remedies_section(plain_only.assign(wise=[[]] * len(plain_only)), quiet)
    assert quiet.figures == [] and quiet.tables == {}  # one LR and no remedy: nothing to compare
