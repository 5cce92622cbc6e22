"""A sweep under ``torchrun``: rank 0 drives, every other rank runs the same job at the same time.

``torchrun --nproc_per_node 8 -m overtrain finetune CKPT ... --out DIR`` (or ``... sweep CONFIG``) starts
8 copies of the command. Rank 0 is the ordinary driver: it plans, skips the jobs already stored, holds the
store's lock, stores each result and writes the report. Before running a job it broadcasts the job's
function and spec; the other ranks (followers) run the same job with it, so the job's collective
operations (a fine-tuning run over the processes, :mod:`overtrain.probes.finetune_distributed`;
data-parallel pre-training) have every process. Followers never open the store: only rank 0 writes.
A job that fails raises on every rank alike when its settings are at fault; a rank that dies stops the
group (torchrun ends the others).
"""

from __future__ import annotations

import os
import sys

import torch.distributed as dist

from overtrain.errors import OvertrainError
from overtrain.pretrain.distributed import distributed_context
from overtrain.results.records import JobFailure
from overtrain.sweep.executors import InProcessExecutor, JobResult
from overtrain.sweep.workers import execute_job


def torchrun_world_size() -> int:
    """Processes ``torchrun`` started for this command (1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_follower() -> bool:
    """True on ranks other than 0 of a torchrun launch."""
    return torchrun_world_size() > 1 and int(os.environ.get("RANK", "0")) != 0


def _broadcast(message: object) -> object:
    context = distributed_context()
    box = [message]
    dist.broadcast_object_list(box, src=0, device=context.device if context.device.type == "cuda" else None)
    return box[0]


class TorchrunExecutor(InProcessExecutor):
    """Rank 0's executor: each job is announced to the followers, then run here (one job at a time)."""

    def _next_completed(self) -> JobResult:
        job, import_path = self._queue.popleft()
        _broadcast((import_path, dict(job.spec)))
        outcome, seconds = execute_job(import_path, job.spec)
        return job, outcome, seconds


def torchrun_executor(kind: str) -> TorchrunExecutor:
    """The executor of a sweep launched by torchrun; refuses executors that would run jobs elsewhere."""
    if kind != "in-process":
        raise OvertrainError(
            f"executor.kind={kind} under torchrun: the jobs would leave the processes torchrun started",
            "use executor.kind=in-process with torchrun (one job at a time over all its processes), or run without torchrun",
        )
    return TorchrunExecutor()


def release_followers() -> None:
    """Rank 0: tell the followers the sweep is over (call once, after the last job)."""
    if torchrun_world_size() > 1:
        _broadcast(None)


def follow_rank_zero() -> int:
    """A follower's whole sweep: run each job rank 0 announces until it says the sweep is over."""
    while True:
        message = _broadcast(None)
        if message is None:
            return 0
        import_path, spec = message
        outcome, _ = execute_job(import_path, spec)
        if isinstance(outcome, JobFailure):  # rank 0 reports and stores nothing for it; say it here too
            print(f"[rank {os.environ.get('RANK')}] job failed: {outcome.message}", file=sys.stderr)
