"""Wall time of the demo and of each of its phases, from a fresh folder (or from a finished store).

    python benchmarks/bench_demo.py                 # runs `overtrain demo out_dir=runs/bench_demo` from scratch
    python benchmarks/bench_demo.py runs/demo       # reads the phase times of a finished demo's store

Phases overlap (the executor runs probes of small budgets while larger budgets still train), so each
phase is reported both as the sum of its jobs' seconds and as its wall-clock span.
"""

from __future__ import annotations

import shutil
import sys
import time
from datetime import datetime
from pathlib import Path

from overtrain.results.store import ResultStore


def phase_table(store_path: Path) -> list[tuple[str, int, float, float, float]]:
    """(kind, jobs, summed job seconds, first start, last end) per job kind, times in unix seconds."""
    rows = {}
    with ResultStore(store_path) as store:
        for row in store.rows():
            end = datetime.fromisoformat(row.finished_at).timestamp()
            kind = rows.setdefault(row.kind, [0, 0.0, float("inf"), 0.0])
            kind[0] += 1
            kind[1] += row.seconds
            kind[2] = min(kind[2], end - row.seconds)
            kind[3] = max(kind[3], end)
    return [(kind, *values) for kind, values in rows.items()]


def main() -> None:
    if len(sys.argv) > 1:
        out_dir, wall = Path(sys.argv[1]), None
    else:
        from overtrain.cli import main as cli_main

        out_dir = Path("runs/bench_demo")
        shutil.rmtree(out_dir, ignore_errors=True)
        started = time.perf_counter()
        status = cli_main(["demo", f"out_dir={out_dir}", f"pretrain.out_dir={out_dir / 'pretrain'}"])
        wall = time.perf_counter() - started
        if status != 0:
            sys.exit(status)
    table = phase_table(out_dir / "results.sqlite")
    first = min(start for *_, start, _ in table)
    print(f"{'phase':<10}{'jobs':>6}{'job seconds':>13}{'wall span (s)':>15}{'from':>8}{'to':>8}")
    for kind, jobs, seconds, start, end in table:
        print(f"{kind:<10}{jobs:>6}{seconds:>13.0f}{end - start:>15.0f}{start - first:>8.0f}{end - first:>8.0f}")
    last = max(end for *_, end in table)
    print(f"all jobs: {last - first:.0f} s wall" + (f"; whole command incl. tokenizing and report: {wall:.0f} s" if wall else ""))


if __name__ == "__main__":
    main()
