"""Run jobs in this process, in local worker processes, or on a Ray cluster; resume killed sweeps.

All executors share one scheduler (:meth:`Executor.map_unordered`): a job is submitted only when every
job it ``depends_on`` has finished, a job whose dependency failed is reported as blocked instead of run,
and results are yielded as they arrive. Workers receive the job function's import path and the spec
(paths, never model objects), so the same job runs anywhere.

Local processes use the *spawn* start method: a script that runs a sweep on
:class:`LocalProcessExecutor` must guard its entry point with ``if __name__ == "__main__":``.
"""

from __future__ import annotations

import collections
import concurrent.futures
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import threading
from collections.abc import Collection, Iterable, Iterator
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from overtrain.errors import OvertrainError
from overtrain.results.records import Job, JobFailure, JobOutput
from overtrain.sweep.dependencies import DependencyTracker
from overtrain.sweep.workers import execute_job, job_function_path, limit_threads

Outcome = JobOutput | JobFailure
JobResult = tuple[Job, Outcome, float]
"""(job, its output or failure, wall-clock seconds the job took)."""
BLOCKED_ERROR_TYPE = "DependencyNotMet"


def _blocked(job: Job, message: str) -> JobResult:
    return job, JobFailure(message=f"not run: {message}", error_type=BLOCKED_ERROR_TYPE), 0.0


class Executor:
    """Runs jobs somewhere; subclasses say how to start, submit, collect and shut down."""

    capacity: int = 1
    """How many jobs may be in flight at once."""

    def map_unordered(self, jobs: Iterable[Job], finished_keys: Collection[str] = ()) -> Iterator[JobResult]:
        """Run ``jobs`` respecting ``depends_on``; yield (job, output or failure, seconds) as each ends.

        ``finished_keys`` are keys done earlier (e.g. already in the store): dependencies on them are met.
        Jobs whose dependency failed, is unknown, or lies on a cycle are yielded as failures, not run.
        """
        jobs = list({job.key: job for job in jobs}.values())
        paths = {job.kind: job_function_path(job.kind) for job in jobs}
        tracker = DependencyTracker(jobs, set(finished_keys))
        for job, dependency in tracker.unknown_dependencies():
            if job.key in tracker.unfinished:
                yield _blocked(job, f"its dependency {dependency} is neither finished nor part of this sweep")
                yield from (_blocked(j, f"its dependency {k} was not run") for j, k in tracker.mark_failed(job.key))
        if not tracker.unfinished:
            return
        self._start()
        try:
            yield from self._drive(tracker, paths)
        except BaseException:  # Ctrl-C, an error, or a caller that stopped early: the jobs in flight are abandoned
            self._abort()
            raise
        finally:
            self._shutdown()

    def _drive(self, tracker: DependencyTracker, paths: dict[str, str]) -> Iterator[JobResult]:
        in_flight = 0
        while tracker.unfinished:
            while tracker.ready and in_flight < self.capacity:
                job = tracker.ready.popleft()
                self._submit(job, paths[job.kind])
                in_flight += 1
            if in_flight == 0:  # nothing can start: the rest wait on each other
                for job in list(tracker.unfinished.values()):
                    yield _blocked(job, "it is part of a dependency cycle (or waits on one)")
                return
            job, outcome, seconds = self._next_completed()
            in_flight -= 1
            yield job, outcome, seconds
            if isinstance(outcome, JobFailure):
                yield from (_blocked(j, f"its dependency {k} failed") for j, k in tracker.mark_failed(job.key))
            else:
                tracker.mark_finished(job.key)

    def _start(self) -> None:
        """Prepare to run (start workers, connect to a cluster)."""

    def _submit(self, job: Job, import_path: str) -> None:
        raise NotImplementedError

    def _next_completed(self) -> JobResult:
        """Block until a submitted job ends and return it."""
        raise NotImplementedError

    def _shutdown(self) -> None:
        """Release workers; called even when the caller stops early or an error occurs."""

    def _abort(self) -> None:
        """Stop the jobs in flight now, before :meth:`_shutdown` (after Ctrl-C, an error or an early stop):
        nothing is lost that a rerun needs, since a job stores its row only when it ends, writes its files
        atomically, and a pre-training run resumes from its newest checkpoint."""


class InProcessExecutor(Executor):
    """Runs each job in this process, one at a time, in submission order (the default; best for debugging)."""

    def __init__(self) -> None:
        self._queue: collections.deque[tuple[Job, str]] = collections.deque()

    def _submit(self, job: Job, import_path: str) -> None:
        self._queue.append((job, import_path))

    def _next_completed(self) -> JobResult:
        job, import_path = self._queue.popleft()
        outcome, seconds = execute_job(import_path, job.spec)
        return job, outcome, seconds

    def _shutdown(self) -> None:
        self._queue.clear()


class LocalProcessExecutor(Executor):
    """Runs jobs in ``workers`` spawned processes of ``threads_per_worker`` threads each.

    On small CPU machines several one-thread jobs beat one multi-thread job for tiny models
    (see ``benchmarks/bench_executors.py``).
    """

    def __init__(self, workers: int = 2, threads_per_worker: int = 1) -> None:
        if workers < 1 or threads_per_worker < 1:
            raise OvertrainError(
                f"LocalProcessExecutor needs workers >= 1 and threads_per_worker >= 1, "
                f"got workers={workers}, threads_per_worker={threads_per_worker}",
                "pass positive numbers, e.g. workers=2, threads_per_worker=1",
            )
        self.workers = workers
        self.threads_per_worker = threads_per_worker
        self.capacity = workers
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None
        self._futures: dict[concurrent.futures.Future[Any], tuple[Job, concurrent.futures.ProcessPoolExecutor]] = {}

    def _start(self) -> None:
        self._pool = concurrent.futures.ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_initialize_worker,
            initargs=(self.threads_per_worker,),
        )

    def _submit(self, job: Job, import_path: str) -> None:
        assert self._pool is not None, "_start() runs before _submit()"
        try:
            future = self._pool.submit(execute_job, import_path, job.spec, self.threads_per_worker)
        except BrokenProcessPool:
            # A worker died before its failure was collected: the jobs in flight on the old pool fail
            # when collected; this job goes to a fresh pool.
            self._restart_broken_pool()
            future = self._pool.submit(execute_job, import_path, job.spec, self.threads_per_worker)
        self._futures[future] = (job, self._pool)

    def _next_completed(self) -> JobResult:
        done, _ = concurrent.futures.wait(self._futures, return_when=concurrent.futures.FIRST_COMPLETED)
        future = next(iter(done))
        job, pool = self._futures.pop(future)
        try:
            outcome, seconds = future.result()
        except BrokenProcessPool:
            if pool is self._pool:  # the other jobs in flight on it fail too, without a second restart
                self._restart_broken_pool()
            message = "its worker process died (killed, or out of memory?)"
            return job, JobFailure(message=message, error_type="BrokenProcessPool"), 0.0
        except Exception as error:
            return job, JobFailure(message=f"{type(error).__name__}: {error}", error_type=type(error).__name__), 0.0
        return job, outcome, seconds

    def _restart_broken_pool(self) -> None:
        # Every job in flight on a broken pool fails with it; new submissions need a fresh pool.
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        self._start()

    def _shutdown(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        self._pool, self._futures = None, {}

    def _abort(self) -> None:
        # Waiting for the running jobs (shutdown(wait=True)) would keep a Ctrl-C'd sweep alive for as long as
        # its longest job; the workers are ended instead.
        if self._pool is not None:
            for worker in list((getattr(self._pool, "_processes", None) or {}).values()):  # the pool's own table of its processes
                if worker.is_alive():
                    worker.terminate()
            self._pool.shutdown(wait=False, cancel_futures=True)
        self._pool, self._futures = None, {}


def _initialize_worker(threads: int) -> None:
    """Runs first in each spawned worker: ignore Ctrl-C, cap OpenMP/MKL/BLAS threads, exit when the driver dies.

    Ctrl-C in a terminal signals the whole process group. Workers that took it each died with a traceback
    of their own, and one that survived while its pool shut down could leave the driver waiting on it
    forever (2 of 8 tries); the driver alone handles it, and ends the workers (:meth:`LocalProcessExecutor._abort`).
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    limit_threads(threads)
    threading.Thread(target=_exit_when_parent_dies, name="watch-driver", daemon=True).start()


def _exit_when_parent_dies() -> None:
    # A driver killed with SIGKILL cannot stop its pool; without this its workers would wait forever
    # on a queue whose write end they themselves hold open.
    parent = multiprocessing.parent_process()
    if parent is not None:
        multiprocessing.connection.wait([parent.sentinel])
        os._exit(1)


class RayExecutor(Executor):
    """Runs jobs as Ray tasks of ``num_cpus_per_job`` CPUs (and ``num_gpus_per_job`` GPUs) each, on a cluster
    or a local Ray instance. Ray points each GPU task at its own GPU(s) (CUDA_VISIBLE_DEVICES).

    ``address=None`` connects to ``RAY_ADDRESS`` or starts a local Ray; if Ray is already initialised
    in this process it is used as is. Every worker must be able to import overtrain and the job
    functions, and must see the checkpoint paths in the specs (shared file system).
    """

    def __init__(self, address: str | None = None, num_cpus_per_job: int = 1, num_gpus_per_job: float = 0) -> None:
        self.address = address
        self.num_cpus_per_job = num_cpus_per_job
        self.num_gpus_per_job = num_gpus_per_job
        self.capacity = sys.maxsize  # Ray queues tasks itself; the driver only holds back dependents
        self._remote: Any = None
        self._pending: dict[Any, Job] = {}

    def _start(self) -> None:
        ray = _import_ray()
        if not ray.is_initialized():
            ray.init(address=self.address, include_dashboard=False)
        remote = ray.remote(num_cpus=self.num_cpus_per_job, num_gpus=self.num_gpus_per_job, max_retries=0)
        self._remote = remote(execute_job)

    def _submit(self, job: Job, import_path: str) -> None:
        reference = self._remote.remote(import_path, job.spec, self.num_cpus_per_job)
        self._pending[reference] = job

    def _next_completed(self) -> JobResult:
        ray = _import_ray()
        (reference,), _ = ray.wait(list(self._pending), num_returns=1)
        job = self._pending.pop(reference)
        try:
            outcome, seconds = ray.get(reference)
        except Exception as error:
            return job, JobFailure(message=f"Ray task failed: {error}", error_type=type(error).__name__), 0.0
        return job, outcome, seconds

    def _shutdown(self) -> None:
        if self._pending:
            ray = _import_ray()
            for reference in self._pending:
                ray.cancel(reference, force=True)
        self._pending = {}


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as error:
        raise OvertrainError(
            "the Ray executor needs the 'ray' package, which is not installed",
            "pip install 'overtrain[ray]' (or run with the in-process or local-process executor)",
        ) from error
    return ray
