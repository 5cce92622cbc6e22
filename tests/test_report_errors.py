"""Stores and report folders a user gets wrong: one clear message (exit 2 from the CLI), no traceback, and
nothing left behind; an empty store says there is nothing to report."""

from __future__ import annotations

from pathlib import Path

import pytest
from jobs_for_tests import register_test_kinds

from overtrain.cli import main as cli_main
from overtrain.errors import OvertrainError
from overtrain.results import report as report_module
from overtrain.results.records import Job, JobOutput
from overtrain.results.report import write_report
from overtrain.results.store import ResultStore

register_test_kinds()


@pytest.fixture()
def pretrain_store(tmp_path: Path) -> Path:
    """A store holding two pre-training rows (enough for a report with a weight-norm figure)."""
    path = tmp_path / "results.sqlite"
    with ResultStore(path) as store:
        for tokens in (1000, 2000):
            job = Job("pretrain", {"budget": tokens})
            metrics = {"tokens_seen": tokens, "budget_tokens": tokens, "trunk_segment": False, "final_heldout_loss": 3.0 - tokens / 1e4,
                       "tokens_per_second": 1.0, "train_seconds": 1.0, "weight_norm": 10.0 + tokens / 1e3, "factors": {}}
            store.put(job, JobOutput(metrics), {"seed": 0}, 1.0)
    return path


def leftovers(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir())


def test_a_zero_byte_store_has_nothing_to_report_and_is_not_touched(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = tmp_path / "results.sqlite"
    store.touch()
    assert cli_main(["report", str(store)]) == 2
    err = capsys.readouterr().err
    assert "nothing to report" in err and "Traceback" not in err
    assert store.stat().st_size == 0 and leftovers(tmp_path) == ["results.sqlite"]  # no report/ folder, store unwritten


def test_an_empty_store_has_nothing_to_report(tmp_path: Path) -> None:
    ResultStore(tmp_path / "results.sqlite").close()
    with pytest.raises(OvertrainError, match="nothing to report: .* holds no finished job"):
        write_report(tmp_path / "results.sqlite", tmp_path / "report")
    assert not (tmp_path / "report").exists()


def test_a_store_of_other_job_kinds_has_nothing_to_report(tmp_path: Path) -> None:
    with ResultStore(tmp_path / "s.sqlite") as store:
        store.put(Job("integer_work", {"i": 1}), JobOutput({"checksum": 1}), {}, 1.0)
    with pytest.raises(OvertrainError, match="nothing to report"):
        write_report(tmp_path / "s.sqlite", tmp_path / "report")


def test_a_failed_report_leaves_no_folder_behind(pretrain_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_plot(*args, **kwargs):
        raise RuntimeError("matplotlib broke")

    monkeypatch.setattr(report_module, "plot_panels", broken_plot)
    with pytest.raises(RuntimeError, match="matplotlib broke"):
        write_report(pretrain_store, tmp_path / "out" / "report")
    assert leftovers(tmp_path) == ["results.sqlite"]  # neither out/ nor out/report nor a temporary folder


def test_a_report_is_written_whole(pretrain_store: Path, tmp_path: Path) -> None:
    report = write_report(pretrain_store, tmp_path / "report")
    assert report.html_path == tmp_path / "report" / "report.html" and report.html_path.is_file()
    assert all(path.parent == tmp_path / "report" and path.is_file() for path in report.figures)
    assert {"weight_norm.png", "summary.md"} <= set(leftovers(tmp_path / "report"))
    assert leftovers(tmp_path) == ["report", "results.sqlite"]


@pytest.mark.parametrize("where", ["a file", "under a file"])
def test_a_report_folder_that_cannot_be_written_is_one_message(pretrain_store: Path, tmp_path: Path, where: str,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "taken"
    blocker.write_text("not a folder")
    out = blocker if where == "a file" else blocker / "report"
    assert cli_main(["report", str(pretrain_store), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"cannot write the report to {out}" in err and "Traceback" not in err
    assert leftovers(tmp_path) == ["results.sqlite", "taken"]


def test_a_store_path_that_is_a_folder_or_cannot_be_created_is_one_message(tmp_path: Path) -> None:
    with pytest.raises(OvertrainError, match="is a folder, not a file"):
        ResultStore(tmp_path)
    (tmp_path / "file").write_text("x")
    with pytest.raises(OvertrainError, match="cannot open the results store .* for writing"):
        ResultStore(tmp_path / "file" / "results.sqlite")


def test_export_to_a_folder_or_an_unwritable_place_is_one_message(pretrain_store: Path, tmp_path: Path) -> None:
    (tmp_path / "out.csv").mkdir()
    (tmp_path / "file").write_text("x")
    with ResultStore(pretrain_store) as store:
        with pytest.raises(OvertrainError, match="it is a folder"):
            store.export(tmp_path / "out.csv")
        with pytest.raises(OvertrainError, match="cannot write"):
            store.export(tmp_path / "file" / "results.csv")


def test_report_on_a_file_that_is_not_a_store_says_what_to_pass(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Its fix was a sweep's ('choose another path for the store'), for a verb that only reads."""
    not_a_store = tmp_path / "notes.txt"
    not_a_store.write_text("not a database")
    assert cli_main(["report", str(not_a_store)]) == 2
    err = capsys.readouterr().err
    assert "is not an SQLite file" in err and "to read results, pass the results.sqlite a sweep or probe wrote" in err
    assert not_a_store.read_text() == "not a database"
