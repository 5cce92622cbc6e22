"""benchmarks/bench_pretrain_nano.py --processes: the figures over processes come from each process's rounds.

The benchmark itself is not run here (it times; tests assert behaviour): its per-process records are made up
with known times, and the summary must read them as the single-process table does."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import pytest

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_pretrain_nano.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_pretrain_nano", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _record(compiled_seconds: list[float], sdpa_seconds: list[float], eager_seconds: list[float]) -> dict:
    """One process's record as ``--json`` writes it: 1000 tokens a round, 1 FLOP a token, a 1000 FLOP/s peak."""
    return {"cpu_seconds": {"overtrain (train.compile=true)": compiled_seconds, "transformers loop (sdpa attention)": sdpa_seconds,
                            "transformers loop (eager attention)": eager_seconds},
            "baseline_cpu_seconds": [min(pair) for pair in zip(sdpa_seconds, eager_seconds)],
            "peaks_cpu": [1000.0] * len(compiled_seconds), "tokens": 1000, "flops_per_token": 1.0,
            "compiled": "overtrain (train.compile=true)",
            "baselines": ["transformers loop (sdpa attention)", "transformers loop (eager attention)"]}


def test_each_process_is_read_against_the_faster_baseline_of_each_round(bench):
    # round 1: sdpa is faster (2.0 s), round 2: eager is (3.0 s); the compiled loop takes 1.0 s both times
    record = _record([1.0, 1.0], sdpa_seconds=[2.0, 4.0], eager_seconds=[5.0, 3.0])
    rate, ratio, share = bench._process_figures(record)["overtrain (train.compile=true)"]
    assert rate == pytest.approx(1000.0)
    assert ratio == pytest.approx(2.5)  # the median of 2.0 and 3.0
    assert share == pytest.approx(1.0)
    assert "2.50x" in bench._process_summary(record)
    assert bench._process_summary(record).endswith("each round 400)")  # 1000 tokens over the median of 2.0 and 3.0 s


def test_the_goal_line_takes_the_median_over_processes_and_counts_those_at_2x(bench, capsys):
    records = [_record([1.0] * 3, [ratio] * 3, [9.0] * 3) for ratio in (1.8, 2.1, 2.4)]
    bench._print_over_processes(records, argparse.Namespace(rounds=3, steps=8))
    out = capsys.readouterr().out
    assert "over 3 processes (3 rounds x 8 steps each)" in out
    goal = out.splitlines()[-1]
    assert "compiled loop 2.10x" in goal and "resampling 3 processes" in goal
    assert "2x or more in 2 of 3; met" in goal
    compiled_row = next(row for row in out.splitlines() if row.startswith("overtrain"))
    assert "2.10x [1.80-2.40]" in compiled_row


def test_a_single_process_interval_resamples_its_rounds(bench):
    assert bench._ratio_interval([1.0, 1.0, 1.0], [2.0, 2.0, 2.0]) == (pytest.approx(2.0), pytest.approx(2.0))
    low, high = bench._median_interval([1.0, 2.0, 3.0, 4.0, 5.0])
    assert 1.0 <= low < 3.0 < high <= 5.0
