"""The sweep driver: plan a sweep, skip what the store already holds, run the rest on an executor, and
write each result to the store the moment it arrives.

The driver alone writes the store, so killing a sweep (even with SIGKILL) loses only the jobs in flight,
and running it again does only what is missing. One driver at a time: :func:`run_jobs` holds the
store's lock (:mod:`overtrain.sweep.lock`) and a second driver on the same store is refused, naming the
first. Before planning, the artefacts that stored rows point to (checkpoints) are checked
(:mod:`overtrain.sweep.artifacts`): a job whose output was deleted or damaged loses its row and runs again.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from overtrain.errors import OvertrainError
from overtrain.provenance import collect_provenance
from overtrain.results.records import Job, JobFailure, JobOutput
from overtrain.results.store import ResultRow, ResultStore
from overtrain.sweep.artifacts import FINGERPRINT_KEY, check_artifacts, fingerprint_artifacts
from overtrain.sweep.executors import BLOCKED_ERROR_TYPE, Executor, InProcessExecutor, Outcome
from overtrain.sweep.lock import driver_lock
from overtrain.sweep.workers import job_function_path, resolve_job_function


@dataclass
class RunSummary:
    """What :func:`run_jobs` did: counts, the failures with their messages, and the wall-clock time."""

    total: int
    skipped: int = 0
    """Jobs already in the store, not run again."""
    done: int = 0
    failed: int = 0
    """Jobs that raised; they are not stored and run again next time."""
    blocked: int = 0
    """Jobs not run because a dependency failed or is missing."""
    failures: dict[str, str] = field(default_factory=dict)
    """Job key -> 'label: message' for every failed or blocked job."""
    repaired: dict[str, str] = field(default_factory=dict)
    """Job key -> 'label: problem' for every stored job whose artefact was missing or damaged (run again)."""
    seconds: float = 0.0

    def __str__(self) -> str:
        text = f"{self.done} run, {self.skipped} already stored, {self.failed} failed"
        text += f", {self.blocked} blocked" if self.blocked else ""
        text += f", {len(self.repaired)} re-run for a missing or damaged artefact" if self.repaired else ""
        return f"{text} (of {self.total} jobs) in {self.seconds:.1f} s"


def run_jobs(jobs: Iterable[Job], store: ResultStore, executor: Executor | None = None, *, progress: bool = True) -> RunSummary:
    """Run the jobs not yet in ``store`` on ``executor`` (in-process by default); store each as it ends.

    One progress bar covers the whole sweep. A job that raises is counted as failed with its message,
    is not stored (so the next run retries it), and does not stop the others. The store's driver lock
    is held throughout: a second driver on the same store raises :class:`OvertrainError` naming this one.
    Stored jobs whose artefacts are missing or damaged are re-planned first (:func:`repair_damaged_jobs`).
    """
    with driver_lock(store.path):
        return _run_locked(list(jobs), store, executor, progress)


def _run_locked(jobs: list[Job], store: ResultStore, executor: Executor | None, progress: bool) -> RunSummary:
    start_seconds = time.perf_counter()
    unique_jobs = list({job.key: job for job in jobs}.values())
    repaired = repair_damaged_jobs(unique_jobs, store, progress)
    finished_keys = store.finished_keys()
    to_run = [job for job in unique_jobs if job.key not in finished_keys]
    summary = RunSummary(total=len(unique_jobs), skipped=len(unique_jobs) - len(to_run), repaired=repaired)
    if not to_run:
        _say(progress, f"all {summary.total} jobs are already in {store.path}; nothing to run")
        return summary
    _check_job_functions(to_run)
    base_provenance = collect_provenance()
    bar = _SweepProgress(summary, enabled=progress)
    try:
        for job, outcome, seconds in (executor or InProcessExecutor()).map_unordered(to_run, finished_keys):
            _record(job, outcome, seconds, store, base_provenance, summary)
            bar.advance(job, outcome)
    finally:
        bar.close()
    summary.seconds = time.perf_counter() - start_seconds
    _say(progress, f"sweep: {summary} -> {store.path}")
    return summary


def repair_damaged_jobs(jobs: list[Job], store: ResultStore, progress: bool = True) -> dict[str, str]:
    """Delete the rows of ``jobs`` whose artefacts are missing or damaged, so they run again; say which.

    A damaged artefact is moved aside (``NAME.damaged-TIME``, kept for inspection, never read again)
    so that its job can write it anew. Intact artefacts whose file times changed get fresh fingerprints.
    Returns job key -> 'label: problem' for every job re-planned.
    """
    planned = {job.key for job in jobs}
    repaired: dict[str, str] = {}
    for row in store.rows():
        if row.key not in planned or not row.artifacts:
            continue
        check = check_artifacts(row.artifacts, row.provenance)
        if check.problem is None:
            if check.refreshed is not None:
                store.update_provenance(row.key, {FINGERPRINT_KEY: check.refreshed})
            continue
        moved = [_move_aside(Path(path)) for path in row.artifacts.values() if Path(path).exists()]
        store.delete([row.key])
        repaired[row.key] = f"{row.label}: {check.problem}"
        where = "".join(f"; the damaged copy is kept as {path}" for path in moved)
        _say(progress, f"re-running {row.label}: {check.problem}{where}")
    return repaired


def stored_jobs_to_rerun(jobs: list[Job], rows: list[ResultRow]) -> dict[str, str]:
    """What :func:`repair_damaged_jobs` would re-plan, found without changing or hashing anything (a dry run's
    view): job key -> 'label: problem' for the stored rows of ``jobs`` whose artefacts are missing or changed
    size. A file whose modification time alone changed is hashed by the run, not here (it may be intact)."""
    planned = {job.key for job in jobs}
    rerun = {}
    for row in rows:
        if row.key in planned and row.artifacts:
            problem = check_artifacts(row.artifacts, row.provenance, hash_files=False).problem
            if problem is not None:
                rerun[row.key] = f"{row.label}: {problem}"
    return rerun


def _move_aside(path: Path) -> Path:
    """Rename a damaged artefact out of the way (its name no longer parses as a checkpoint)."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
    target = path.with_name(f"{path.name}.damaged-{stamp}")
    try:
        path.rename(target)
    except OSError as error:
        raise OvertrainError(
            f"{path} is damaged and must be written again, but it cannot be moved aside ({error.strerror or error})",
            f"delete or move {path} yourself, then rerun the sweep",
        ) from None
    return target


def _check_job_functions(jobs: list[Job]) -> None:
    """Fail before running anything if a job kind is unregistered or its function cannot be imported."""
    for kind in sorted({job.kind for job in jobs}):
        resolve_job_function(job_function_path(kind))


def _record(job: Job, outcome: Outcome, seconds: float, store: ResultStore, base: dict[str, Any], summary: RunSummary) -> None:
    if isinstance(outcome, JobOutput):
        provenance = {**base, "job_key": job.key, "seed": job.spec.get("seed"), **outcome.provenance}
        if outcome.artifacts:
            provenance[FINGERPRINT_KEY] = fingerprint_artifacts(outcome.artifacts)
        store.put(job, outcome, provenance, seconds)
        summary.done += 1
        return
    summary.failures[job.key] = f"{job.label}: {outcome.message}"
    if outcome.error_type == BLOCKED_ERROR_TYPE:
        summary.blocked += 1
    else:
        summary.failed += 1


class _SweepProgress:
    """One bar over the whole sweep (jobs, with ETA) on a terminal; a log line per job elsewhere."""

    def __init__(self, summary: RunSummary, enabled: bool) -> None:
        self.summary, self.enabled = summary, enabled
        self.started, self.finished = time.perf_counter(), summary.skipped
        self.bar = None
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=summary.total, initial=summary.skipped, unit="job", desc="sweep", dynamic_ncols=True)

    def advance(self, job: Job, outcome: Outcome) -> None:
        self.finished += 1
        if isinstance(outcome, JobFailure):
            self._line(f"FAILED {job.label}: {outcome.message}")
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix_str(f"failed={self.summary.failed + self.summary.blocked} last={job.label}")
        elif self.enabled:
            print(f"[sweep] {self.finished}/{self.summary.total} {job.label} | eta {self._eta()}", file=sys.stderr)

    def _eta(self) -> str:
        from overtrain.units import format_seconds

        ran = self.finished - self.summary.skipped
        rate = ran / max(time.perf_counter() - self.started, 1e-9)
        return format_seconds((self.summary.total - self.finished) / max(rate, 1e-9))

    def _line(self, message: str) -> None:
        if self.bar is not None:
            self.bar.write(message, file=sys.stderr)
        elif self.enabled:
            print(message, file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _say(enabled: bool, message: str) -> None:
    if enabled:
        print(message, file=sys.stderr)


def build_executor(config):
    from overtrain.sweep.executors import InProcessExecutor, LocalProcessExecutor, RayExecutor
    from overtrain.sweep.torchrun import torchrun_executor, torchrun_world_size

    if torchrun_world_size() > 1:
        return torchrun_executor(config.kind)
    if config.kind == "processes":
        return LocalProcessExecutor(workers=config.workers, threads_per_worker=config.threads_per_worker)
    if config.kind == "ray":
        return RayExecutor(address=config.ray_address, num_cpus_per_job=config.threads_per_worker, num_gpus_per_job=config.gpus_per_worker)
    return InProcessExecutor()


def run_sweep_file(path: str | None, overrides: list[str], dry_run: bool) -> int:
    from overtrain.atomic import ensure_writable_folder
    from overtrain.config import dump_yaml
    from overtrain.results.report import shown_headlines, write_report
    from overtrain.results.store import ResultStore, stored_keys, stored_rows
    from overtrain.sweep.config import load_sweep_config
    from overtrain.sweep.plan import describe_plan, plan_jobs
    from overtrain.sweep.preflight import SHOWN_PER_PROBLEM, check_sweep_inputs
    from overtrain.sweep.torchrun import follow_rank_zero, is_follower, release_followers

    config = load_sweep_config(path, overrides)
    jobs = plan_jobs(config)
    if is_follower():  # under torchrun, ranks > 0 run rank 0's jobs alongside it, print and store nothing
        return 0 if dry_run else follow_rank_zero()
    print(dump_yaml(config))
    print(f"plan: {describe_plan(jobs)}; executor {config.executor.kind}; store {config.store_path}")
    ensure_writable_folder(Path(config.out_dir), "the sweep's folder", "out_dir")  # a dry run too: creates nothing
    check_sweep_inputs(jobs, config.out_dir, jobs_run_here=config.executor.kind != "ray", finished=stored_keys(config.store_path))
    if dry_run:
        from overtrain.sweep.estimate import CalibrationError, estimate_sweep_seconds, format_estimate

        rows = stored_rows(config.store_path)
        rerun = stored_jobs_to_rerun(jobs, rows)  # the run re-plans these before anything else
        finished = {row.key for row in rows if row.key not in rerun} & {job.key for job in jobs}
        if finished or rerun:
            print(f"stored: {len(finished)} of {len(jobs)} jobs already finished; the estimate covers the {len(jobs) - len(finished)} left")
        if rerun:
            examples = "; ".join(list(rerun.values())[:SHOWN_PER_PROBLEM])
            print(f"damaged: {len(rerun)} stored job(s) point to a missing or damaged artefact and will run again ({examples})")
        try:
            print(format_estimate(estimate_sweep_seconds(config, jobs, finished)))
        except CalibrationError as error:  # the plan stands; only the estimate is missing
            print(f"estimate: not available on this machine ({error})")
        from overtrain.sweep.estimate import gpu_finetune_lines

        for line in gpu_finetune_lines(jobs):
            print(line)
        return 0
    with ResultStore(config.store_path) as store:  # creates its folder, or says why it cannot
        try:
            summary = run_jobs(jobs, store, build_executor(config.executor))
        finally:
            release_followers()
    if summary.failures:
        print("failed jobs:\n" + "\n".join(f"  {line}" for line in summary.failures.values()))
    if config.report and not stored_keys(config.store_path):
        print("no report: no job of this sweep has finished yet (the failures above say why)")
    elif config.report:
        report = write_report(config.store_path, config.report_dir)
        print("\n".join(["", "headlines:", *[f"  {line}" for line in shown_headlines(report)]]))
        print(f"\nreport: {report.html_path.resolve()}")
    return 1 if summary.failed or summary.blocked else 0
