"""Sweeps end to end on a tiny ladder: plan, run, store, resume, analysis and report."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import write_stdlib_text_corpus

from overtrain.cli import main as cli_main
from overtrain.results.analysis import spearman
from overtrain.results.report import write_report
from overtrain.results.store import ResultStore
from overtrain.sweep.config import load_sweep_config
from overtrain.sweep.driver import run_jobs
from overtrain.sweep.executors import InProcessExecutor
from overtrain.sweep.plan import plan_jobs


def tiny_sweep_overrides(root: Path, corpus: Path) -> list[str]:
    return [
        f"out_dir={root / 'sweep'}",
        f"pretrain.data.corpus={corpus}",
        f"pretrain.data.cache_dir={root / 'cache'}",
        "pretrain.data.vocab_size=512",
        "pretrain.data.heldout_fraction=0.15",
        "pretrain.model.d_model=32",
        "pretrain.model.n_layers=2",
        "pretrain.model.n_heads=2",
        "pretrain.train.batch_size=8",
        "pretrain.train.seq_len=32",
        "pretrain.train.warmup_tokens=512",
        "pretrain.train.eval_tokens=1024",
        "pretrain.train.threads=1",
        "pretrain.train.dtype=fp32",
        "pretrain.ladder.budgets_tokens=[4096,8192,16384]",
        "pretrain.ladder.mode=wsd-branches",
        "noise.gammas=[1.0,4.0]",
        "noise.seeds=[0,1]",
        "noise.eval_tokens=1024",
        "finetune.tasks=[wordnet-class]",
        "finetune.lrs=[1e-3,1e-2]",
        "finetune.seeds=[0]",
        "finetune.steps=5",
        "finetune.batch_size=4",
        "finetune.max_train=50",
        "finetune.max_heldout=9",
        "finetune.eval_tokens=1024",
    ]


@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    root = tmp_path_factory.mktemp("sweep")
    overrides = tiny_sweep_overrides(root, write_stdlib_text_corpus(root / "corpus"))
    assert cli_main(["sweep", *overrides]) == 0
    return root, overrides


def test_sweep_stores_one_row_per_job_and_writes_the_report(finished_sweep: tuple[Path, list[str]]) -> None:
    root, overrides = finished_sweep
    config = load_sweep_config(None, overrides)
    jobs = plan_jobs(config)
    assert [job.kind for job in jobs].count("pretrain") == 5  # 2 trunk segments, 2 branches, the trunk's end
    with ResultStore(config.store_path) as store:
        assert store.finished_keys() == {job.key for job in jobs}
        noise_rows = store.rows(kind="noise")
        assert sorted(row.metrics["tokens_seen"] for row in noise_rows) == [4096, 8192, 16384]
        assert all(len(row.metrics["draws"]) == 4 for row in noise_rows)
        assert all(row.provenance.get("checkpoint_sha256") for row in noise_rows)
    report = root / "sweep" / "report"
    for name in ("report.html", "summary.md", "noise.png", "noise.svg", "finetune.png"):
        assert (report / name).is_file(), name
    html = (report / "report.html").read_text()
    assert "data:image/png;base64," in html and "gamma=4" in html


def test_rerunning_a_finished_sweep_runs_no_job(finished_sweep: tuple[Path, list[str]]) -> None:
    _, overrides = finished_sweep
    config = load_sweep_config(None, overrides)
    with ResultStore(config.store_path) as store:
        summary = run_jobs(plan_jobs(config), store, InProcessExecutor(), progress=False)
    assert summary.done == 0 and summary.skipped == summary.total


def test_dry_run_of_a_finished_sweep_counts_what_is_stored_and_changes_nothing(
    finished_sweep: tuple[Path, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    _, overrides = finished_sweep
    config = load_sweep_config(None, overrides)
    store_bytes = config.store_path.read_bytes()
    assert cli_main(["sweep", *overrides, "--dry-run"]) == 0
    jobs = len(plan_jobs(config))
    printed = capsys.readouterr().out
    assert f"stored: {jobs} of {jobs} jobs already finished; the estimate covers the 0 left" in printed
    assert "total 0m00s" in printed
    assert config.store_path.read_bytes() == store_bytes


def test_the_estimate_counts_a_segment_from_its_finished_predecessor(finished_sweep: tuple[Path, list[str]]) -> None:
    from overtrain.sweep.estimate import pretrain_tokens_left
    from overtrain.sweep.plan import pretrain_tokens_by_job

    _, overrides = finished_sweep
    jobs = plan_jobs(load_sweep_config(None, overrides))
    segments = [job for job in jobs if job.kind == "pretrain" and "stop_at_tokens" in job.spec]
    first, second = sorted(segments, key=lambda job: job.spec["stop_at_tokens"] or float("inf"))[:2]
    assert list(second.depends_on) == [first.key]
    whole_plan = pretrain_tokens_by_job(jobs)
    left, trunk_left = pretrain_tokens_left(jobs, {first.key})
    assert left == sum(whole_plan.values()) - whole_plan[first.key]
    assert trunk_left == sum(whole_plan[job.key] for job in segments) - whole_plan[first.key]
    # the second segment trains from the first one's stop: counted alone it would start at zero
    assert whole_plan[second.key] == second.spec["stop_at_tokens"] - first.spec["stop_at_tokens"]
    assert pretrain_tokens_left(jobs, {job.key for job in jobs}) == (0, 0)


def test_a_rerun_with_a_changed_pretraining_setting_is_refused_before_any_job(
    finished_sweep: tuple[Path, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    _, overrides = finished_sweep
    assert cli_main(["sweep", *overrides, "--dry-run"]) == 0  # unchanged settings: no conflict
    capsys.readouterr()
    config = load_sweep_config(None, overrides)
    store_bytes = config.store_path.read_bytes()
    for extra in ([], ["--dry-run"]):
        assert cli_main(["sweep", *overrides, "pretrain.train.lr=0.0123", *extra]) == 2
        error = capsys.readouterr().err
        assert "pre-training run folder(s) of this sweep already hold runs with other settings" in error
        assert "train.lr" in error and "give this sweep its own out_dir" in error
    assert config.store_path.read_bytes() == store_bytes  # refused before the store was touched


def test_a_dry_run_counts_a_job_with_a_missing_checkpoint_as_to_run_and_names_it(
    finished_sweep: tuple[Path, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    root, overrides = finished_sweep
    weights = next((root / "sweep").rglob("step-*-tokens-*/model.safetensors"))
    hidden = weights.with_name("hidden-during-the-test")
    weights.rename(hidden)  # renamed back below: size and modification time stay what the store recorded
    try:
        assert cli_main(["sweep", *overrides, "--dry-run"]) == 0
    finally:
        hidden.rename(weights)
    out = capsys.readouterr().out
    jobs = len(plan_jobs(load_sweep_config(None, overrides)))
    assert f"stored: {jobs - 1} of {jobs} jobs already finished" in out
    assert "damaged: 1 stored job(s) point to a missing or damaged artefact and will run again" in out
    assert str(weights.parent) in out
    assert cli_main(["sweep", *overrides, "--dry-run"]) == 0
    assert f"stored: {jobs} of {jobs} jobs already finished" in capsys.readouterr().out


def test_a_finished_sweep_whose_corpus_was_moved_is_not_refused(finished_sweep: tuple[Path, list[str]],
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """Only the jobs that will run are checked: a finished sweep reruns nothing and needs no corpus."""
    root, overrides = finished_sweep
    corpus = root / "corpus"
    moved = corpus.rename(root / "corpus-moved-during-the-test")
    try:
        assert cli_main(["sweep", *overrides, "--dry-run"]) == 0
        assert cli_main(["sweep", *overrides, "report=false"]) == 0
        assert "jobs are already in" in capsys.readouterr().err
    finally:
        moved.rename(corpus)


def test_a_truncated_checkpoint_and_missing_eval_data_are_refused_before_the_store_opens(
    finished_sweep: tuple[Path, list[str]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import os
    import shutil

    root, _ = finished_sweep
    source = next((root / "sweep").rglob("step-*-tokens-*"))
    damaged = tmp_path / "damaged"
    shutil.copytree(source, damaged)
    os.truncate(damaged / "model.safetensors", 100)
    out = tmp_path / "out"
    for extra in ([], ["--dry-run"]):
        code = cli_main(["noise", str(damaged), "gammas=[1.0]", f"eval_data={tmp_path / 'no-such.txt'}", *extra, "--out", str(out)])
        error = capsys.readouterr().err
        assert code == 2 and "2 inputs of this sweep would be refused by its jobs" in error
        assert "model.safetensors is truncated, extended or not a safetensors file" in error and "no-such.txt does not exist" in error
    assert not (out / "results.sqlite").exists()
    edited = tmp_path / "edited"  # a damaged small file: hashed by the dry run as the job would
    shutil.copytree(source, edited)
    (edited / "config.json").write_text((edited / "config.json").read_text().replace("{", "{ ", 1))
    assert cli_main(["noise", str(edited), "gammas=[1.0]", "--dry-run", "--out", str(out)]) == 2
    assert f"{edited}: config.json does not match the recorded checksum" in capsys.readouterr().err
    assert not (out / "results.sqlite").exists()


def test_a_report_names_settings_that_differ_between_rows_of_one_checkpoint(
    finished_sweep: tuple[Path, list[str]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root, _ = finished_sweep
    checkpoints = sorted(str(path) for path in (root / "sweep").rglob("step-*-tokens-*"))[:2]
    out = tmp_path / "out"
    common = ["gammas=[1.0]", "seeds=1", "report=false", "--out", str(out)]
    assert cli_main(["noise", *checkpoints, "eval_tokens=512", *common]) == 0
    assert cli_main(["report", str(out)]) == 0
    assert "WARNING" not in (out / "report" / "summary.md").read_text()  # one setting: nothing pooled
    assert cli_main(["noise", *checkpoints, "eval_tokens=1024", *common]) == 0
    capsys.readouterr()
    assert cli_main(["report", str(out)]) == 0
    summary = (out / "report" / "summary.md").read_text()
    assert "WARNING: noise rows of one checkpoint were measured with different settings" in summary
    assert "eval_tokens (1.02k, 512)" in summary


def test_a_report_without_headlines_says_why_and_an_empty_store_path_is_refused(
    finished_sweep: tuple[Path, list[str]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from overtrain.results.report import NO_HEADLINES

    root, _ = finished_sweep
    checkpoint = sorted(str(path) for path in (root / "sweep").rglob("step-*-tokens-*"))[0]
    out = tmp_path / "out"
    assert cli_main(["noise", checkpoint, "gammas=[1.0]", "seeds=1", "--out", str(out)]) == 0  # one checkpoint: no curve
    assert f"headlines:\n  {NO_HEADLINES}" in capsys.readouterr().out
    assert f"## Headlines\n\n- {NO_HEADLINES}" in (out / "report" / "summary.md").read_text()
    assert cli_main(["report", ""]) == 2
    assert "the results store to report on is empty text" in capsys.readouterr().err


def test_a_row_records_how_many_tokens_its_loss_was_measured_on(finished_sweep: tuple[Path, list[str]], tmp_path: Path) -> None:
    root, overrides = finished_sweep
    with ResultStore(load_sweep_config(None, overrides).store_path) as store:
        assert {row.provenance["eval_tokens_measured"] for row in store.rows(kind="noise")} == {1024}  # noise.eval_tokens
    checkpoint = str(sorted((root / "sweep").rglob("step-*-tokens-*"))[0])
    out = tmp_path / "out"
    assert cli_main(["noise", checkpoint, "gammas=[1.0]", "seeds=1", "eval_tokens=100000000", "report=false", "--out", str(out)]) == 0
    with ResultStore(out / "results.sqlite") as store:
        (row,) = store.rows(kind="noise")
    measured = row.provenance["eval_tokens_measured"]
    assert 0 < measured < 100_000_000  # capped by the held-out split, and said so
    assert row.provenance["eval_source"].startswith("heldout split of")
    assert cli_main(["report", str(out)]) == 0  # and the report says it too
    summary = (out / "report" / "summary.md").read_text()
    table = summary.split("What the probes measured the pre-training loss on", 1)[1]
    assert "| noise | heldout split of" in table and f"| 100000000 | {measured} | 1 |" in table


def test_report_can_be_rebuilt_from_the_store(finished_sweep: tuple[Path, list[str]], tmp_path: Path) -> None:
    root, _ = finished_sweep
    (tmp_path / "multimodal.png").write_bytes(b"a figure of an earlier report")  # this store has no multimodal rows
    (tmp_path / "notes.txt").write_text("mine")
    report = write_report(root / "sweep" / "results.sqlite", tmp_path)
    assert report.headlines and any(line.startswith("noise gamma=4") for line in report.headlines)
    assert not (tmp_path / "multimodal.png").exists() and (tmp_path / "noise.png").is_file()  # no figure the report does not show
    assert (tmp_path / "notes.txt").read_text() == "mine"  # other files are left alone


def test_the_reports_list_of_its_figures_names_every_figure_it_writes() -> None:
    """A rebuilt report removes the figures of this list that it did not draw now, and only those."""
    import re

    from overtrain.results.report import REPORT_FIGURES

    sources = (Path(__file__).parent.parent / "src" / "overtrain" / "results").glob("*.py")
    stems = {stem for path in sources for stem in re.findall(r'out_stem=report\.folder / "(\w+)"', path.read_text())}
    assert stems and {f"{stem}.png" for stem in stems} <= REPORT_FIGURES


def test_spearman_is_a_rank_correlation() -> None:
    assert spearman([1, 2, 3, 4], [10, 20, 30, 1000]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)


def test_sweep_without_checkpoints_is_explained() -> None:
    from overtrain.errors import OvertrainError

    with pytest.raises(OvertrainError, match="names no checkpoints"):
        load_sweep_config(None, ["noise.gammas=[1]"])


def test_demo_recipe_is_valid_and_big_enough(capsys: pytest.CaptureFixture[str]) -> None:
    from overtrain.cli.sweep import demo_spec_path

    config = load_sweep_config(demo_spec_path())
    jobs = plan_jobs(config)
    assert len(config.pretrain.ladder.budgets_tokens) >= 5
    assert len(config.noise.gammas) >= 2 and len(config.pretrain_axes["train"]["seed"]) >= 3
    assert len(config.finetune.lrs) >= 3 and config.finetune.tasks
    assert {job.kind for job in jobs} == {"pretrain", "noise", "finetune"}
    assert cli_main(["demo", "--dry-run"]) == 0
    assert "estimate on this machine" in capsys.readouterr().out
