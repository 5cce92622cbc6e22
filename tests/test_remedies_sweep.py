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
from overtrain.sweep.config import finetune_grid, load_sweep_config
from overtrain.sweep.plan import plan_jobs
from overtrain.results.tuned import tuned_frame

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
    variants = "finetune.variants=[{lr: 0.01, replay_fractions: [0.125, 0.25]}, {lrs: [0.01], linear_probe_steps: 20}, {lr: 0.01}]"
    jobs = _finetune_jobs("finetune.lrs=[5e-3,1e-2,2e-2]", "finetune.wise_alphas=[0.5]", variants)
    specs = [job.spec["finetune"] for job in jobs]
    plain = [s for s in specs if "replay_fraction" not in s and "linear_probe_steps" not in s]
    assert sorted(s["lr"] for s in plain) == [5e-3, 1e-2, 2e-2]  # {lr: 0.01} repeats a base job: it runs once
    assert sorted(s["replay_fraction"] for s in specs if "replay_fraction" in s) == [0.125, 0.25]
    assert [s["linear_probe_steps"] for s in specs if "linear_probe_steps" in s] == [20]
    assert len(jobs) == 6 and len({job.key for job in jobs}) == 6
    assert all(s["wise_alphas"] == [0.5] for s in specs)  # a variant keeps the section's other settings
    no_wise = _finetune_jobs("finetune.wise_alphas=[0.5]", "finetune.variants=[{replay_fraction: 0.25, wise_alphas: []}]")
    assert [job.spec["finetune"].get("wise_alphas") for job in no_wise] == [[0.5], None]


@pytest.mark.parametrize("variant, message", [
    ("[{replay_fraction: 1.5}]", "replay_fraction"),
    ("[{lrs: []}]", r"variants\[0\].lrs"),
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
