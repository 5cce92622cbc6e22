"""One driver per store: two drivers started together never run a job twice; a second one is refused
with the holder's pid, host and start time; a lock left by a killed driver does not block the next one."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from jobs_for_tests import JOB_LOG_VARIABLE, integer_work_jobs, read_log, register_test_kinds, subprocess_environment

from overtrain.errors import OvertrainError
from overtrain.results.store import ResultStore
from overtrain.sweep.driver import run_jobs
from overtrain.sweep.lock import driver_lock, lock_path_of

register_test_kinds()
JOBS = 8
ITERATIONS = "40"  # ~0.5 s a job on an idle core: the two drivers overlap for seconds


def start_driver(store: Path, log: Path) -> subprocess.Popen[bytes]:
    environment = subprocess_environment(**{JOB_LOG_VARIABLE: str(log), "OVERTRAIN_TEST_ITERATIONS": ITERATIONS})
    command = [sys.executable, "-m", "jobs_for_tests", str(store), str(JOBS)]
    return subprocess.Popen(command, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_two_drivers_started_together_run_every_job_exactly_once(tmp_path: Path) -> None:
    store, log = tmp_path / "s.sqlite", tmp_path / "log"
    drivers = [start_driver(store, log), start_driver(store, log)]
    results = [(driver.wait(timeout=180), *(stream.decode() for stream in driver.communicate())) for driver in drivers]
    assert sorted(read_log(log)) == list(range(JOBS)), results  # no job ran twice, none was lost
    winners = [out for code, out, _ in results if code == 0 and out.strip() == f"done={JOBS} skipped=0 failed=0"]
    assert len(winners) == 1, results
    (loser,) = [result for result in results if result[1].strip() != f"done={JOBS} skipped=0 failed=0"]
    code, out, err = loser
    refused = code == 2 and "another sweep driver is running" in err and "pid " in err
    assert refused or out.strip() == f"done=0 skipped={JOBS} failed=0", loser  # refused, or started after the end
    with ResultStore(store) as opened:
        assert len(opened) == JOBS


def test_a_second_driver_is_refused_naming_the_holder(tmp_path: Path) -> None:
    store, log = tmp_path / "s.sqlite", tmp_path / "log"
    with driver_lock(store):
        second = start_driver(store, log)
        out, err = (stream.decode() for stream in second.communicate(timeout=120))
    assert second.returncode == 2, (out, err)
    assert f"pid {os.getpid()} on host {socket.gethostname()} since " in err
    assert "Traceback" not in err and read_log(log) == []


def test_the_lock_refuses_in_process_too_and_is_released_after_the_sweep(tmp_path: Path) -> None:
    store = tmp_path / "s.sqlite"
    with ResultStore(store) as opened, driver_lock(store):
        with pytest.raises(OvertrainError, match="another sweep driver is running"):
            run_jobs(integer_work_jobs(1), opened, progress=False)
    with ResultStore(store) as opened:
        assert run_jobs(integer_work_jobs(1), opened, progress=False).done == 1
        assert run_jobs(integer_work_jobs(1), opened, progress=False).skipped == 1  # released after each run


def test_a_lock_left_by_a_killed_driver_does_not_block_the_next(tmp_path: Path) -> None:
    store = tmp_path / "s.sqlite"
    hold = "import sys, time; from overtrain.sweep.lock import driver_lock\nwith driver_lock(sys.argv[1]):\n print('held', flush=True); time.sleep(120)"
    holder = subprocess.Popen([sys.executable, "-c", hold, str(store)], env=subprocess_environment(), stdout=subprocess.PIPE)
    assert holder.stdout is not None and holder.stdout.readline().strip() == b"held"
    with pytest.raises(OvertrainError, match=f"pid {holder.pid} on host"):
        with driver_lock(store):
            pass
    holder.send_signal(signal.SIGKILL)
    assert holder.wait(timeout=10) == -signal.SIGKILL
    assert f'"pid": {holder.pid}' in lock_path_of(store).read_text()  # the dead driver's file is still there
    with ResultStore(store) as opened:
        assert run_jobs(integer_work_jobs(2), opened, progress=False).done == 2
