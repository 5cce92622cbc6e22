"""Analysis on frames with known structure: pre-training seeds as units, factor families, the paper's claims."""

from __future__ import annotations

import numpy as np
import pandas as pd

from overtrain.results import analysis
from overtrain.sweep.config import load_sweep_config, pretrain_variants
from overtrain.sweep.plan import plan_jobs

TOKENS = [250_000, 500_000, 1_000_000, 2_000_000, 4_000_000, 8_000_000]


def _u_curve(minimum_at: float, depth: float = 0.2) -> np.ndarray:
    x = np.log(np.asarray(TOKENS, dtype=float))
    return 2.0 + depth * (x - np.log(minimum_at)) ** 2


def _finetune_rows(lr: float, minimum_at: float, pretrain_seeds: int) -> list[dict]:
    rows = []
    for pretrain_seed in range(pretrain_seeds):
        curve = _u_curve(minimum_at) + 0.01 * pretrain_seed
        for index, (tokens, after) in enumerate(zip(TOKENS, curve)):
            before = after - 0.1 * (index + 1)  # forgetting grows with tokens by construction
            rows.append({"task": "t", "lr": lr, "reg_lambda": 0.0, "seed": 0, "pretrain_seed": pretrain_seed,
                         "tokens_seen": tokens, "ood_loss_before": before, "ood_loss_after": after,
                         "forgetting": after - before, "id_loss_after": 1.0})
    return rows


def test_intervals_are_over_pretraining_seeds_when_there_are_several() -> None:
    frame = pd.DataFrame(_finetune_rows(1e-2, 1_000_000, pretrain_seeds=3))
    (summary,) = analysis.finetune_summary(frame)["t"]
    assert summary.inflection.units == 3 and summary.inflection.resampled == "pre-training seeds"
    assert summary.inflection.interval_kind == "bootstrap 95% (nominal)"
    single = pd.DataFrame(_finetune_rows(1e-2, 1_000_000, pretrain_seeds=1))
    (one,) = analysis.finetune_summary(single)["t"]
    assert one.inflection.resampled == "fine-tuning seeds (one pre-training seed)" and one.inflection.units == 1


def test_claims_read_a_larger_lr_moving_the_minimum_earlier() -> None:
    frame = pd.DataFrame(_finetune_rows(3e-3, 2_000_000, 3) + _finetune_rows(1e-2, 700_000, 3))
    claims = {claim.label: claim for claim in analysis.paper_claims(pd.DataFrame(), frame)}
    assert claims["(d) loss after fine-tuning is U-shaped"].holds
    assert claims["(d) larger LR, earlier minimum"].holds
    assert claims["(d) forgetting grows with tokens"].holds
    swapped = pd.DataFrame(_finetune_rows(3e-3, 700_000, 3) + _finetune_rows(1e-2, 2_000_000, 3))
    claims = {claim.label: claim for claim in analysis.paper_claims(pd.DataFrame(), swapped)}
    assert not claims["(d) larger LR, earlier minimum"].holds


def test_factor_families_get_their_own_curves() -> None:
    rows = [dict(r, **{"pretrain.train.weight_decay": 0.1}) for r in _finetune_rows(1e-2, 4_000_000, 3)]
    rows += [dict(r, **{"pretrain.train.weight_decay": 1.0}) for r in _finetune_rows(1e-2, 500_000, 3)]
    names = [summary.name for summary in analysis.finetune_summary(pd.DataFrame(rows))["t"]]
    assert names == ["weight_decay=0.1 lr=0.01", "weight_decay=1 lr=0.01"]


def test_pretrain_axes_plan_one_ladder_per_combination() -> None:
    config = load_sweep_config("src/overtrain/recipes/demo.yaml", ["out_dir=runs/x", "pretrain_axes.train.seed=[0,1,2]"])
    variants = pretrain_variants(config)
    assert [v.config.train.seed for v in variants] == [0, 1, 2]
    assert len({v.config.out_dir for v in variants}) == 3
    jobs = plan_jobs(config)
    probe_factors = {tuple(job.spec["factors"].items()) for job in jobs if job.kind != "pretrain"}
    assert probe_factors == {(("train.seed", seed),) for seed in (0, 1, 2)}


def test_a_row_without_the_metrics_of_its_kind_is_named_with_the_way_out(tmp_path) -> None:
    """A row whose metrics are ``{}`` (written by hand, or by another tool) used to fail as a bare KeyError in
    the report; now the row, what it lacks and how to get rid of it are named, and the fix works."""
    import sqlite3

    import pytest

    from overtrain.errors import OvertrainError
    from overtrain.results.records import Job, JobOutput
    from overtrain.results.store import ResultStore

    path = tmp_path / "results.sqlite"
    draws = [{"gamma": 1.0, "seed": 0, "perturbed_loss": 3.5, "delta": 0.5}]
    intact = Job("noise", {"checkpoint": "a", "mode": "relative", "gamma": 1.0}, label="noise a")
    hollow = Job("noise", {"checkpoint": "b", "mode": "relative", "gamma": 1.0}, label="noise b")
    with ResultStore(path) as store:
        store.put(intact, JobOutput(metrics={"tokens_seen": 1000, "base_loss": 3.0, "draws": draws}), {}, 1.0)
        store.put(hollow, JobOutput(metrics={}), {}, 1.0)
        with pytest.raises(OvertrainError, match=f"the noise row of job {hollow.key} \\(noise b\\) in results store {path} "
                                                 "lacks metrics.tokens_seen, metrics.base_loss, metrics.draws") as refused:
            analysis.noise_frame(store)
        assert analysis.finetune_frame(store).empty  # other kinds are unaffected
    with sqlite3.connect(path) as connection:  # the fix, as given
        connection.execute(refused.value.fix.split('"')[1])
    connection.close()
    with ResultStore(path) as store:
        assert analysis.noise_frame(store)["checkpoint"].tolist() == ["a"]


def test_checkpoints_of_several_runs_are_told_apart_not_averaged(tmp_path) -> None:
    """Probing two runs' checkpoints (another seed, another width) used to give one curve averaging different
    models at each token count, with the base loss of the first row only. Now each probe row records the
    settings fixed within its run, and the report turns those that differ into pre-training factors: seeds
    become units of the intervals, widths curve families, and the base loss is the mean over seeds, per
    family. A job's key does not depend on which other checkpoints the sweep names."""
    from helpers import write_untrained_checkpoint

    from overtrain.results.records import Job, JobOutput
    from overtrain.results.report import write_report
    from overtrain.results.store import ResultStore
    from overtrain.sweep.jobs import run_noise_job

    a, b = (write_untrained_checkpoint(tmp_path / name, seed=seed) for name, seed in (("a", 0), ("b", 1)))
    noise = lambda *references: plan_jobs(load_sweep_config(None, [
        f"out_dir={tmp_path / 'sweep'}", f"checkpoints={[str(r) for r in references]}", "noise.gammas=[1]", "noise.seeds=1",
        f"noise.eval_data={tmp_path / 'text.txt'}", "noise.eval_tokens=64"]))
    (tmp_path / "text.txt").write_text("def f(x):\n    return x + 1\n" * 40)
    assert noise(a)[0].key == noise(a, b)[0].key  # a's job is a's job, whatever else is probed
    recorded = run_noise_job(noise(b)[0].spec).metrics["run_settings"]
    assert recorded["train.seed"] == 1 and recorded["model.d_model"] == 32 and "train.lr" not in recorded

    def settings(seed: int, width: int = 32) -> dict:
        return {"train.seed": seed, "model.d_model": width, "model.init_std_overrides": {"*norm*": 0.0}}

    assert analysis.run_factor_columns([settings(0), settings(1)]) == [{"pretrain_seed": 0}, {"pretrain_seed": 1}]
    assert analysis.run_factor_columns([settings(0), settings(0, 64)]) == [{"pretrain.model.d_model": 32}, {"pretrain.model.d_model": 64}]
    assert analysis.run_factor_columns([settings(0), None]) == [{}, {}]  # a row without the record: as before
    overrides = [settings(0) | {"model.init_std_overrides": {}}, settings(0)]
    assert analysis.run_factor_columns(overrides) == [{"pretrain.model.init_std_overrides": "{}"},
                                                      {"pretrain.model.init_std_overrides": '{"*norm*": 0.0}'}]
    with ResultStore(tmp_path / "results.sqlite") as store:
        for seed, (base, delta) in enumerate(((3.0, 0.5), (3.2, 0.1))):
            for tokens in (256, 512):
                job = Job("noise", {"checkpoint": f"run{seed}/{tokens}", "mode": "init"}, label=f"noise {seed}")
                draws = [{"gamma": 1.0, "seed": 0, "perturbed_loss": base + delta, "delta": delta}]
                metrics = {"tokens_seen": tokens, "base_loss": base, "draws": draws, "factors": {}, "run_settings": settings(seed)}
                store.put(job, JobOutput(metrics=metrics), {}, 1.0)
    table = write_report(tmp_path / "results.sqlite", tmp_path / "report").tables["Noise probe (mean over seeds)"]
    assert table.round(6).to_dict("records") == [{"tokens": tokens, "base loss": 3.1, "gamma=1 perturbed": 3.4, "gamma=1 delta": 0.3}
                                                 for tokens in (256, 512)]


def test_the_loss_before_fine_tuning_is_the_mean_over_pre_training_seeds() -> None:
    """Its curve took the first row's value per token count, so which seed it showed depended on the order
    in which the jobs finished (two demo runs drew 3.34 and 3.17 at 250k)."""
    from overtrain.results.report import _base_losses

    frame = pd.DataFrame([{"checkpoint": f"seed{seed}/{tokens}", "tokens_seen": tokens, "pretrain_seed": seed, "lr": lr,
                           "ood_loss_before": before + tokens / 1e6}
                          for seed, before in ((0, 3.0), (1, 3.2), (2, 3.4)) for tokens in (250_000, 500_000) for lr in (1e-3, 2e-3)])
    (only,) = _base_losses(frame.sample(frac=1.0, random_state=0), "ood_loss_before").values()
    assert only.round(6).to_dict() == {250_000: 3.45, 500_000: 3.7}
