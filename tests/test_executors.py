"""Executors and resume: dependencies, failures, local processes, Ray, and a sweep killed with SIGKILL."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from jobs_for_tests import (
    JOB_LOG_VARIABLE,
    integer_work_jobs,
    read_log,
    register_test_kinds,
    subprocess_environment,
)

from overtrain.errors import OvertrainError
from overtrain.results.records import Job, JobFailure
from overtrain.results.store import ResultStore
from overtrain.sweep.driver import RunSummary, run_jobs
from overtrain.sweep.executors import InProcessExecutor, LocalProcessExecutor, RayExecutor

register_test_kinds()


def key_metrics(store: ResultStore) -> dict[str, dict]:
    return {row.key: row.metrics for row in store.rows()}


def run_into(path: Path, jobs: list[Job], executor=None) -> tuple[RunSummary, dict[str, dict]]:
    with ResultStore(path) as store:
        summary = run_jobs(jobs, store, executor or InProcessExecutor(), progress=False)
        return summary, key_metrics(store)


def test_rerunning_a_finished_sweep_runs_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    jobs = integer_work_jobs(4)
    first, rows = run_into(tmp_path / "s.sqlite", jobs)
    assert (first.done, first.skipped, first.failed) == (4, 0, 0) and len(rows) == 4
    with ResultStore(tmp_path / "s.sqlite") as store:
        again = run_jobs(jobs, store, progress=True)
    assert (again.done, again.skipped, again.total) == (0, 4, 4)
    assert "all 4 jobs are already in" in capsys.readouterr().err


def test_local_processes_store_the_same_rows_as_in_process_with_one_thread_each(tmp_path: Path) -> None:
    jobs = integer_work_jobs(4)
    _, in_process = run_into(tmp_path / "a.sqlite", jobs)
    threads = Job("threads", {})
    summary, in_workers = run_into(tmp_path / "b.sqlite", [threads, *jobs], LocalProcessExecutor(workers=2))
    assert summary.done == 5 and in_workers.pop(threads.key) == {"omp": "1", "torch": 1}
    assert in_workers == in_process


@pytest.mark.parametrize("executor", [InProcessExecutor, LocalProcessExecutor], ids=["in-process", "processes"])
def test_dependencies_run_first_and_failures_block_dependents(tmp_path: Path, executor) -> None:
    checkpoint = tmp_path / "checkpoint.txt"
    write = Job("write_text", {"path": str(checkpoint), "text": "weights"}, label="pretrain")
    read = Job("read_text", {"path": str(checkpoint)}, depends_on=(write.key,), label="probe")
    broken = Job("fail", {"user_error": True, "gamma": -1.0}, label="bad noise")
    after_broken = Job("read_text", {"path": "never"}, depends_on=(broken.key,), label="after bad")
    crash = Job("fail", {}, label="crash")
    summary, rows = run_into(tmp_path / "s.sqlite", [read, after_broken, broken, write, crash], executor())
    assert rows[read.key] == {"text": "weights"} and set(rows) == {read.key, write.key}
    assert (summary.done, summary.failed, summary.blocked) == (2, 2, 1)
    assert summary.failures[broken.key] == "bad noise: gamma -1.0 is negative\n  fix: use gamma >= 0"
    assert summary.failures[crash.key] == "crash: ValueError: something broke inside the job"
    assert "its dependency" in summary.failures[after_broken.key]


def test_a_worker_killed_mid_job_fails_only_the_jobs_in_flight_with_it(tmp_path: Path) -> None:
    jobs = [Job("die", {}, label="oom"), *integer_work_jobs(3)]
    summary, rows = run_into(tmp_path / "s.sqlite", jobs, LocalProcessExecutor(workers=2))
    assert summary.failures[jobs[0].key].startswith("oom: its worker process died")
    # Two workers: at most the one job in flight beside the dead one fails with the pool (job 1, or job 2 if job 1
    # finished before the death was seen); every later job runs on a fresh pool.
    beside = set(summary.failures) - {jobs[0].key}
    assert len(beside) <= 1 and all(summary.failures[key].endswith("its worker process died (killed, or out of memory?)") for key in beside)
    assert set(rows) == {job.key for job in jobs[1:]} - beside and summary.done + summary.failed == 4


def test_failed_jobs_run_again_next_time(tmp_path: Path) -> None:
    jobs = [*integer_work_jobs(2), Job("fail", {})]
    first, _ = run_into(tmp_path / "s.sqlite", jobs)
    second, rows = run_into(tmp_path / "s.sqlite", jobs)
    assert (first.done, first.failed) == (2, 1) and (second.done, second.skipped, second.failed) == (0, 2, 1)
    assert len(rows) == 2


def test_unknown_and_cyclic_dependencies_are_reported_not_run(tmp_path: Path) -> None:
    orphan = Job("read_text", {"path": "a"}, depends_on=("0123456789abcdef",))
    first = Job("read_text", {"path": "b"})
    second = Job("read_text", {"path": "c"}, depends_on=(first.key,))
    cycle = [Job(first.kind, first.spec, depends_on=(second.key,)), second]
    summary, rows = run_into(tmp_path / "s.sqlite", [orphan, *cycle])
    assert rows == {} and summary.blocked == 3
    assert "neither finished nor part of this sweep" in summary.failures[orphan.key]
    assert "cycle" in summary.failures[first.key]


def test_an_unregistered_kind_fails_before_anything_runs(tmp_path: Path) -> None:
    jobs = [*integer_work_jobs(1), Job("no_such_kind", {})]
    with pytest.raises(OvertrainError, match="no_such_kind"):
        run_into(tmp_path / "s.sqlite", jobs)
    with ResultStore(tmp_path / "s.sqlite") as store:
        assert len(store) == 0


def test_ray_executor_without_ray_says_how_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(OvertrainError, match=r"overtrain\[ray\]"):
        run_into(tmp_path / "s.sqlite", integer_work_jobs(1), RayExecutor())


KILL_TEST_JOBS, KILL_TEST_ITERATIONS = 8, 60
"""Eight jobs of ~0.2 s each: long enough to kill the sweep part-way."""


def stored_count(path: Path) -> int:
    try:
        with sqlite3.connect(path, timeout=10) as connection:
            return connection.execute("SELECT COUNT(*) FROM results").fetchone()[0]
    except sqlite3.OperationalError:  # not created yet
        return 0


def start_sweep(store: Path, log: Path, count: int, executor: str, iterations: int = KILL_TEST_ITERATIONS) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "jobs_for_tests", str(store), str(count), executor]
    variables = {JOB_LOG_VARIABLE: str(log), "OVERTRAIN_TEST_ITERATIONS": str(iterations)}
    environment = subprocess_environment(**variables)
    # its own process group, like a command in a terminal, whose Ctrl-C signals the whole group
    return subprocess.Popen(command, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)


def kill_when_some_rows_exist(process: subprocess.Popen[bytes], store: Path, rows: int) -> None:
    deadline = time.monotonic() + 60
    while stored_count(store) < rows:
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the sweep stored nothing within 60 s"
        time.sleep(0.02)
    psutil = pytest.importorskip("psutil")  # installed with accelerate (the dev extra)
    workers = psutil.Process(process.pid).children(recursive=True)
    process.send_signal(signal.SIGKILL)
    assert process.wait(timeout=10) == -signal.SIGKILL
    _, alive = psutil.wait_procs(workers, timeout=10)
    assert alive == [], "worker processes outlived their killed driver"


@pytest.fixture(scope="module")
def uninterrupted_rows(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    store = tmp_path_factory.mktemp("uninterrupted") / "s.sqlite"
    return run_into(store, integer_work_jobs(KILL_TEST_JOBS, iterations=KILL_TEST_ITERATIONS))[1]


@pytest.mark.parametrize("executor", ["in-process", "processes"])
def test_a_sweep_killed_with_sigkill_resumes_where_it_stopped(
    tmp_path: Path, executor: str, uninterrupted_rows: dict[str, dict], monkeypatch: pytest.MonkeyPatch
) -> None:
    count, store = KILL_TEST_JOBS, tmp_path / "killed.sqlite"
    kill_when_some_rows_exist(start_sweep(store, tmp_path / "log1", count, executor), store, rows=2)
    with ResultStore(store) as opened:
        stored_before = {row.metrics["index"] for row in opened.rows()}
    assert 0 < len(stored_before) < count

    resumed = start_sweep(store, tmp_path / "log2", count, executor)
    output, errors = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, errors.decode()
    missing = set(range(count)) - stored_before
    assert output.decode().strip() == f"done={len(missing)} skipped={len(stored_before)} failed=0"
    assert sorted(read_log(tmp_path / "log2")) == sorted(missing)

    monkeypatch.setenv(JOB_LOG_VARIABLE, str(tmp_path / "log3"))
    again, rows = run_into(store, integer_work_jobs(count, iterations=KILL_TEST_ITERATIONS))
    assert (again.done, again.skipped) == (0, count) and read_log(tmp_path / "log3") == []
    assert rows == uninterrupted_rows


def test_workers_ignore_ctrl_c_and_an_abandoned_sweep_ends_them_at_once(request: pytest.FixtureRequest) -> None:
    # Ctrl-C in a terminal signals the driver and its workers. An idle worker used to die of it with a
    # traceback (breaking the pool), and the driver then waited for the running jobs before it could exit.
    psutil = pytest.importorskip("psutil")
    # Python handles Ctrl-C unless started with it ignored (as a background job is): workers must not inherit that.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    request.addfinalizer(lambda: signal.signal(signal.SIGINT, previous))
    executor = LocalProcessExecutor(workers=2)
    long_job = Job("integer_work", {"index": 0, "seed": 0, "iterations": 200_000, "size": 120}, label="minutes of work")
    short_job = Job("integer_work", {"index": 1, "seed": 1, "iterations": 1, "size": 8}, label="instant")
    results = executor.map_unordered([long_job, short_job])
    job, outcome, _ = next(results)
    assert job.key == short_job.key and not isinstance(outcome, JobFailure)  # one worker is idle now
    workers = [psutil.Process(pid) for pid in executor._pool._processes]
    assert len(workers) == 2
    for worker in workers:
        os.kill(worker.pid, signal.SIGINT)
    time.sleep(1.0)
    assert all(worker.is_running() and worker.status() != psutil.STATUS_ZOMBIE for worker in workers)
    started = time.monotonic()
    results.close()  # what a KeyboardInterrupt in the driver does to the generator
    _, alive = psutil.wait_procs(workers, timeout=10)
    assert alive == [] and time.monotonic() - started < 10, "the workers outlived the abandoned sweep"


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")
    environment = {"PYTHONPATH": subprocess_environment()["PYTHONPATH"]}
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": environment})
    yield ray
    ray.shutdown()


@pytest.mark.slow  # starting Ray takes 20-30 s on a busy 2-core machine
def test_ray_stores_the_same_rows_as_in_process(tmp_path: Path, local_ray) -> None:
    checkpoint = tmp_path / "checkpoint.txt"
    write = Job("write_text", {"path": str(checkpoint), "text": "weights"})
    jobs = [*integer_work_jobs(4), Job("read_text", {"path": str(checkpoint)}, depends_on=(write.key,)), write]
    summary, on_ray = run_into(tmp_path / "ray.sqlite", jobs, RayExecutor(num_cpus_per_job=1))
    checkpoint.unlink()
    _, in_process = run_into(tmp_path / "local.sqlite", jobs)
    assert summary.done == 6 and on_ray == in_process
