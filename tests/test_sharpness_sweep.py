"""Sharpness as a sweep probe: the section, its plan-time checks, the job, the verb and the report section."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from helpers import merged_overrides, write_stdlib_text_corpus, write_untrained_checkpoint
from test_sweep import tiny_sweep_overrides

from overtrain.cli import main as cli_main
from overtrain.results import analysis
from overtrain.results.store import ResultStore
from overtrain.sweep.config import load_sweep_config
from overtrain.sweep.plan import plan_jobs

SHARPNESS = ["sharpness.kinds=[hessian_top,hessian_trace,worst_case]", "sharpness.gammas=[1,2]", "sharpness.seeds=[0]",
             "sharpness.groups=[all,attention]", "sharpness.eval_tokens=256", "sharpness.probes=2", "sharpness.tol=1e-2",
             "sharpness.max_iters=6", "sharpness.steps=2", "sharpness.batch_size=4"]


@pytest.fixture(scope="module")
def sharpness_sweep(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """A three-budget WSD ladder with the sharpness probes and one fine-tuning setting (no noise probe)."""
    root = tmp_path_factory.mktemp("sharpness_sweep")
    base = [o for o in tiny_sweep_overrides(root, write_stdlib_text_corpus(root / "corpus", documents=20)) if not o.startswith("noise.")]
    overrides = merged_overrides(base, ["finetune.lrs=[1e-2]", "finetune.steps=3", "finetune.eval_tokens=256", *SHARPNESS])
    assert cli_main(["sweep", *overrides]) == 0
    return root, overrides


def test_a_sweep_with_a_sharpness_section_stores_every_read_out_and_reports_it(sharpness_sweep: tuple[Path, list[str]]) -> None:
    root, overrides = sharpness_sweep
    config = load_sweep_config(None, overrides)
    jobs = plan_jobs(config)
    assert [job.kind for job in jobs].count("sharpness") == 3  # one job per checkpoint
    with ResultStore(config.store_path) as store:
        assert store.finished_keys() == {job.key for job in jobs}
        rows = store.rows(kind="sharpness")
        frame = analysis.sharpness_frame(store)
    assert sorted(row.metrics["tokens_seen"] for row in rows) == [4096, 8192, 16384]
    for row in rows:
        records = row.metrics["records"]
        # per group: 1 eigenvalue + 1 trace (one seed) + 2 worst cases (two gammas)
        assert sorted((r["group"], r["kind"], r["gamma"]) for r in records) == sorted(
            (group, kind, gamma) for group in ("all", "attention")
            for kind, gamma in (("hessian_top", None), ("hessian_trace", None), ("worst_case", 1.0), ("worst_case", 2.0)))
        worst = {r["gamma"]: r for r in records if r["kind"] == "worst_case" and r["group"] == "all"}
        assert worst[2.0]["radius"] == pytest.approx(2 * worst[1.0]["radius"])
        assert all(r["value"] >= -1e-6 for r in worst.values())  # SAM's first step never lowers the loss much
        assert row.provenance.get("checkpoint_sha256") and row.metrics["base_loss"] > 0
    assert set(frame["measure"]) == {"hessian_top", "hessian_trace", "worst_case gamma=1", "worst_case gamma=2",
                                     "hessian_top [attention]", "hessian_trace [attention]",
                                     "worst_case gamma=1 [attention]", "worst_case gamma=2 [attention]"}
    report = root / "sweep" / "report"
    assert (report / "sharpness.png").is_file() and (report / "finetune.png").is_file()
    summary = (report / "summary.md").read_text()
    assert "## Sharpness probes (mean over seeds)" in summary
    assert "## Does sharpness predict forgetting? (Spearman across budgets)" in summary
    assert "- sharpness hessian_top: " in summary and "Spearman(sharpness, tokens)" in summary


def test_the_dry_run_prints_the_plan_with_the_sharpness_jobs(sharpness_sweep: tuple[Path, list[str]], tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    _, overrides = sharpness_sweep
    assert cli_main(["sweep", *merged_overrides(overrides, [f"out_dir={tmp_path / 'dry'}"]), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "3 sharpness" in out and "sharpness " in out.split("estimate on this machine")[1]
    assert not (tmp_path / "dry").exists()


def test_sharpness_settings_are_checked_when_the_sweep_is_loaded(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    checkpoints = "checkpoints=[hf:org/m@v1]"
    for override, message in [
        ("sharpness.kinds=[]", "sharpness.kinds=[] is empty"),
        ("sharpness.kinds=[hessian_top,hessian_top]", "repeats a value"),
        ("sharpness.kinds=[hessian]", "sharpness.kinds[0] = 'hessian' is not allowed"),
        ("sharpness.gammas=[-1]", "sharpness.gammas holds -1.0, which is negative"),
        ("sharpness.gammas=[]", "sharpness.gammas=[] is empty"),
        ("sharpness.seeds=[]", "sharpness.seeds=[] is empty"),
        ("sharpness.groups=[]", "sharpness.groups=[] is empty"),
        ("sharpness.groups=[mlp,mlp]", "repeats a value"),
        ("sharpness.probes=1", "sharpness.probes=1 is invalid"),
        ("sharpness.tol=0", "sharpness.tol=0.0 is invalid"),
        ("sharpness.max_iters=0", "sharpness.max_iters=0 is invalid"),
        ("sharpness.steps=0", "sharpness.steps=0 is invalid"),
        ("sharpness.worst_tol=1", "sharpness.worst_tol=1.0 is invalid"),
        ("sharpness.groups=[all,norms]", "the norm gains have none"),
        ("sharpness.eval_tokens=0", "sharpness.eval_tokens=0 is invalid"),
        ("sharpness.gama=[1]", "did you mean"),
    ]:
        assert cli_main(["sweep", checkpoints, f"out_dir={tmp_path}", "sharpness={}", override, "--dry-run"]) == 2, override
        err = capsys.readouterr().err
        assert message in err and err.count("error:") == 1, (override, err)
    assert not (tmp_path / "results.sqlite").exists()
    # gammas only matter to worst_case: hessian kinds alone accept any gammas and leave them out of the key
    config = load_sweep_config(None, [checkpoints, "sharpness.kind=hessian_top", "sharpness.gammas=[]"])
    (job,) = plan_jobs(config)
    assert job.kind == "sharpness" and "gammas" not in job.spec and "probes" not in job.spec and job.spec["kinds"] == ["hessian_top"]
    assert load_sweep_config(None, [checkpoints, "sharpness.seeds=3"]).sharpness.seeds == [0, 1, 2]


def test_sharpness_verb_is_a_resumable_sweep_with_the_sweeps_job_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    checkpoints = [write_untrained_checkpoint(run, seed=0, step=step, tokens_seen=256 * step) for step in (1,)]
    (tmp_path / "eval.txt").write_text(Path(__file__).read_text())
    out = tmp_path / "out"
    arguments = ["sharpness", str(checkpoints[0]), "kinds=[hessian_top,worst_case]", "gammas=[1,2]", "max_iters=4", "steps=2",
                 f"eval_data={tmp_path / 'eval.txt'}", "eval_tokens=128", "report=false", "--out", str(out)]
    assert cli_main(arguments) == 0
    printed = capsys.readouterr().out
    assert "hessian_top" in printed and "worst_case" in printed
    with ResultStore(out / "results.sqlite") as store:
        (row,) = store.rows(kind="sharpness")
    assert [(r["kind"], r["gamma"]) for r in row.metrics["records"]] == [("hessian_top", None), ("worst_case", 1.0), ("worst_case", 2.0)]
    sweep = load_sweep_config(None, [f"checkpoints=[{json.dumps(str(checkpoints[0]))}]", "sharpness.kinds=[hessian_top,worst_case]",
                                     "sharpness.gammas=[1,2]", "sharpness.max_iters=4", "sharpness.steps=2",
                                     f"sharpness.eval_data={tmp_path / 'eval.txt'}", "sharpness.eval_tokens=128"])
    assert [job.key for job in plan_jobs(sweep)] == [row.key]
    assert cli_main(arguments) == 0  # resumes: nothing left to run
    assert "nothing to run" in capsys.readouterr().err
    assert cli_main(["report", str(out)]) == 0  # one checkpoint: tabled, not curved
    assert "Sharpness probes: one budget only" in (out / "report" / "summary.md").read_text()
    bad = ["sharpness", str(checkpoints[0]), "groups=[no_such_tensor*]", "kind=hessian_trace", f"eval_data={tmp_path / 'eval.txt'}",
           "eval_tokens=128", "report=false", "--out", str(tmp_path / "bad")]
    assert cli_main(bad) == 2  # a group that matches no tensor is refused before the store opens, with the fix
    assert "sharpness group 'no_such_tensor*' matches no tensor of 1 model(s)" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
    with pytest.raises(SystemExit):
        cli_main(["sharpness", "--help"])
    flat = " ".join(capsys.readouterr().out.split())
    assert "kinds=" in flat and "~11 forward passes" in flat and "eval_tokens=16384" in flat


def test_sharpness_predicts_forgetting_within_each_factor_family() -> None:
    tokens = [1_000, 2_000, 4_000, 8_000]
    sharp, tune = [], []
    for decay, sign in ((0.0, 1), (0.1, -1)):
        for index, t in enumerate(tokens):
            factors = {"pretrain.train.weight_decay": decay}
            sharp.append({"tokens_seen": t, "kind": "hessian_top", "group": "all", "gamma": float("nan"), "seed": 0,
                          "value": 1.0 + index, "measure": "hessian_top", **factors})
            tune.append({"task": "t", "lr": 1e-3, "reg_lambda": 0.0, "tokens_seen": t, "forgetting": sign * index, **factors})
    table = analysis.sharpness_predicts_forgetting(pd.DataFrame(sharp), pd.DataFrame(tune))
    assert list(table["family"]) == ["weight_decay=0", "weight_decay=0.1"]
    assert list(table["spearman"]) == pytest.approx([1.0, -1.0]) and set(table["budgets"]) == {4}
    (summary_a, _) = analysis.sharpness_summary(pd.DataFrame(sharp))
    assert summary_a.name == "weight_decay=0 hessian_top" and summary_a.sensitivity_spearman == pytest.approx(1.0)
