"""Two one-thread worker processes vs one two-thread worker process, on tiny torch training jobs.

For each model width, the same two jobs (4 residual MLP blocks, transformer-shaped (B, T, C) inputs,
AdamW) run under
  A. ``LocalProcessExecutor(workers=2, threads_per_worker=1)``: both at once, one thread each;
  B. ``LocalProcessExecutor(workers=1, threads_per_worker=2)``: one after the other, two threads.
Only the training loops are timed (worker start-up and torch import are excluded; in A a file barrier
starts both loops together, after 3 untimed warm-up steps). Each setup runs ``--repeats`` times,
alternating, and the fastest run counts. Prints the seconds of A and B and the ratio B / A (> 1: A is faster).

    python benchmarks/bench_executors.py                      # widths 64 128 256, ~4e10 FLOPs per job
    python benchmarks/bench_executors.py --widths 96 --flops 5e10
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from overtrain.results.records import Job, JobOutput
from overtrain.results.store import ResultStore
from overtrain.sweep.driver import run_jobs
from overtrain.sweep.executors import LocalProcessExecutor
from overtrain.sweep.workers import register_job_kind

BATCH, SEQUENCE = 16, 64  # 1,024 tokens per step, like the CPU presets
LAYERS = 4
MIN_STEPS = 10
WARMUP_STEPS = 3


def train_blocks_job(spec: Mapping[str, Any]) -> JobOutput:
    """Train ``LAYERS`` residual MLP blocks of ``width`` for ``steps`` steps; report when the loop ran."""
    import torch

    torch.manual_seed(spec["seed"])
    width = spec["width"]
    model = torch.nn.ModuleList(mlp_block(torch, width) for _ in range(LAYERS))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    inputs = torch.randn(BATCH, SEQUENCE, width)  # (B, T, C)
    train_steps(model, optimizer, inputs, WARMUP_STEPS)  # allocator and kernel warm-up, not timed
    wait_for_partners(Path(spec["barrier"]), f"{width}-{spec['seed']}", spec["parties"])
    loop_start = time.time()
    train_steps(model, optimizer, inputs, spec["steps"])
    return JobOutput(metrics={"loop_start": loop_start, "loop_end": time.time(), "threads": torch.get_num_threads()})


def train_steps(model: Any, optimizer: Any, inputs: Any, steps: int) -> None:
    """``steps`` AdamW steps on the mean square of the residual stream's output."""
    for _ in range(steps):
        hidden = inputs
        for block in model:
            hidden = hidden + block(hidden)  # (B, T, C)
        loss = hidden.pow(2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def mlp_block(torch: Any, width: int) -> Any:
    """LayerNorm -> Linear(C, 4C) -> GELU -> Linear(4C, C): the feed-forward half of a transformer block."""
    nn = torch.nn
    return nn.Sequential(nn.LayerNorm(width), nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))


def wait_for_partners(folder: Path, name: str, parties: int) -> None:
    """File barrier: the jobs that run at once start their loops together, after torch import and setup."""
    prefix = name.split("-", 1)[0]
    (folder / f"{name}.ready").touch()
    while len(list(folder.glob(f"{prefix}-*.ready"))) < parties:
        time.sleep(0.005)


def steps_for(width: int, flops: float) -> int:
    """Training steps that cost about ``flops`` (6 x parameters x tokens, 8 width^2 parameters per block)."""
    parameters = LAYERS * 8 * width * width
    return max(MIN_STEPS, int(flops / (6 * parameters * BATCH * SEQUENCE)))


def loop_seconds(widths: list[int], flops: float, workers: int, threads: int, folder: Path) -> dict[int, float]:
    """Width -> seconds from the first loop start to the last loop end of that width's two jobs."""
    barrier = folder / f"barrier-{workers}x{threads}"
    barrier.mkdir(parents=True)
    spec = {"barrier": str(barrier), "parties": workers}
    jobs = [
        Job("bench_train", {**spec, "width": width, "steps": steps_for(width, flops), "seed": seed})
        for width in widths
        for seed in (0, 1)
    ]
    executor = LocalProcessExecutor(workers=workers, threads_per_worker=threads)
    with ResultStore(folder / f"{workers}x{threads}.sqlite") as store:
        summary = run_jobs(jobs, store, executor, progress=False)
        assert summary.failed == 0, summary.failures
        rows = store.rows()
    assert all(row.metrics["threads"] == threads for row in rows)
    spans = {}
    for width in widths:
        metrics = [row.metrics for row in rows if row.spec["width"] == width]
        loop_starts, loop_ends = [m["loop_start"] for m in metrics], [m["loop_end"] for m in metrics]
        spans[width] = (
            max(loop_ends) - min(loop_starts)
            if workers > 1
            else sum(end - start for start, end in zip(loop_starts, loop_ends, strict=True))
        )
    return spans


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--widths", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--flops", type=float, default=4e10, help="training FLOPs per job (at least 10 steps)")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each setup; the fastest counts")
    arguments = parser.parse_args()
    register_job_kind("bench_train", "bench_executors:train_blocks_job")
    print(f"cpus {os.cpu_count()}, load average {os.getloadavg()[0]:.2f} (other work on the machine skews both)")
    two_processes: dict[int, float] = {}
    one_process: dict[int, float] = {}
    with tempfile.TemporaryDirectory() as folder:
        for repeat in range(arguments.repeats):  # alternate A and B; keep each one's best (least disturbed)
            for workers, threads, best in ((2, 1, two_processes), (1, 2, one_process)):
                spans = loop_seconds(arguments.widths, arguments.flops, workers, threads, Path(folder) / f"{repeat}")
                best.update({w: min(s, best.get(w, s)) for w, s in spans.items()})
                seconds_text = ", ".join(f"width {w}: {s:.2f} s" for w, s in spans.items())
                print(f"repeat {repeat} {workers} x {threads} thread(s): {seconds_text}", flush=True)
    print("width  steps  2 procs x 1 thread  1 proc x 2 threads  ratio (>1: two processes win)")
    for width in arguments.widths:
        a, b = two_processes[width], one_process[width]
        print(f"{width:5d}  {steps_for(width, arguments.flops):5d}  {a:16.2f} s  {b:16.2f} s  {b / a:6.2f}")


if __name__ == "__main__":
    main()
