"""The dry run's time estimate: a calibration that fits any sweep in memory, and kinds it cannot count named."""

from __future__ import annotations

from pathlib import Path

import pytest

from overtrain.cli import main as cli_main
from overtrain.sweep.config import load_sweep_config
from overtrain.sweep.estimate import (
    CALIBRATION_LOGIT_BYTES,
    CalibrationError,
    SweepEstimate,
    calibration_rows,
    format_estimate,
    measure_train_tokens_per_second,
)

REPO = Path(__file__).resolve().parents[1]


def test_calibration_takes_the_whole_small_batch_and_one_row_of_a_paper_batch() -> None:
    assert calibration_rows(batch_size=32, seq_len=128, vocab_size=259) == 32  # the nano demo: its real step
    paper_rows = calibration_rows(batch_size=256, seq_len=1024, vocab_size=50_304)
    assert paper_rows == 1 and 4 * paper_rows * 1024 * 50_304 <= CALIBRATION_LOGIT_BYTES  # not 256 rows: ~53 GB of logits
    assert calibration_rows(batch_size=4, seq_len=65_536, vocab_size=259) == 1  # never zero rows


def test_a_calibration_that_runs_out_of_memory_is_a_calibration_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import overtrain.model.llama as llama

    def out_of_memory(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: not enough memory: you tried to allocate 53 GB")

    monkeypatch.setattr(llama, "build_model", out_of_memory)
    config = load_sweep_config(REPO / "configs" / "demo" / "sweep_small.yaml")
    with pytest.raises(CalibrationError, match=r"a calibration step of 32 x 128 tokens failed: .*not enough memory"):
        measure_train_tokens_per_second(config.pretrain, threads=1)


def test_the_dry_run_still_plans_when_the_calibration_fails(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    import overtrain.sweep.estimate as estimate

    def failing(config, threads):
        raise CalibrationError("a calibration step of 1 x 1024 tokens failed: not enough memory")

    monkeypatch.setattr(estimate, "measure_train_tokens_per_second", failing)
    monkeypatch.chdir(tmp_path)
    assert cli_main(["sweep", str(REPO / "configs" / "demo" / "sweep_small.yaml"), "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "plan: 11 jobs" in printed
    assert "estimate: not available on this machine (a calibration step of 1 x 1024 tokens failed: not enough memory)" in printed
    assert not any(tmp_path.iterdir())  # a dry run writes nothing


def test_the_estimate_names_the_job_kinds_it_does_not_count() -> None:
    line = format_estimate(SweepEstimate({"pretrain": 61.0, "noise": 3.0}, 1234.0, {"multimodal": 12, "benchmarks": 6}))
    assert line.startswith("estimate on this machine (1,234 training tokens/s per worker): pretrain 1m01s, noise 0m03s; total 1m04s")
    assert "not counted: 6 benchmarks, 12 multimodal job(s)" in line
    assert format_estimate(SweepEstimate({}, 1234.0)).endswith("per worker): total 0m00s")
