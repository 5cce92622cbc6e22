"""Job functions for the executor and results tests, importable by name from any worker process.

Run as a module (``python -m jobs_for_tests STORE N_JOBS [EXECUTOR]``) it runs a small sweep into STORE:
the kill-and-resume test starts it as a real process and SIGKILLs it part-way.
Set ``OVERTRAIN_TEST_JOB_LOG`` to a file path to have every job append its index there when it runs.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from overtrain.errors import OvertrainError
from overtrain.results.records import Job, JobOutput
from overtrain.sweep.workers import register_job_kind

JOB_LOG_VARIABLE = "OVERTRAIN_TEST_JOB_LOG"
MODULUS = 1_000_003


def register_test_kinds() -> None:
    """Register every job kind of this module (each process that builds Jobs calls this)."""
    for kind, function in {
        "integer_work": "integer_work_job",
        "fail": "failing_job",
        "write_text": "write_text_job",
        "read_text": "read_text_job",
        "threads": "threads_job",
        "die": "dying_job",
        "write_checkpoint": "write_checkpoint_job",
    }.items():
        register_job_kind(kind, f"jobs_for_tests:{function}")


def integer_work_job(spec: Mapping[str, Any]) -> JobOutput:
    """Exact (integer) matrix powers: real CPU work with bit-identical results everywhere."""
    rng = np.random.default_rng(spec["seed"])
    matrix = rng.integers(0, 1000, size=(spec["size"], spec["size"]), dtype=np.int64)
    state = matrix.copy()
    for _ in range(spec["iterations"]):
        state = (state @ matrix) % MODULUS
    _log_run(spec["index"])
    return JobOutput(metrics={"checksum": int(state.sum()), "trace": int(np.trace(state)), "index": spec["index"]})


def failing_job(spec: Mapping[str, Any]) -> JobOutput:
    """Raises the error named in the spec."""
    if spec.get("user_error"):
        raise OvertrainError(f"gamma {spec.get('gamma')} is negative", "use gamma >= 0")
    raise ValueError("something broke inside the job")


def dying_job(spec: Mapping[str, Any]) -> JobOutput:
    """Kills its own process, like the out-of-memory killer would."""
    os.kill(os.getpid(), signal.SIGKILL)
    raise AssertionError("unreachable")


def write_text_job(spec: Mapping[str, Any]) -> JobOutput:
    """Writes a file, like a pretrain job writing a checkpoint."""
    Path(spec["path"]).write_text(spec["text"])
    return JobOutput(metrics={"length": len(spec["text"])}, artifacts={"file": spec["path"]})


def write_checkpoint_job(spec: Mapping[str, Any]) -> JobOutput:
    """Writes a folder shaped like a checkpoint (weights + overtrain.json with their sha256), like pretrain."""
    import hashlib
    import json

    folder = Path(spec["folder"])
    folder.mkdir(parents=True, exist_ok=True)
    weights = bytes(range(256)) * int(spec.get("kilobytes", 4)) * 4
    (folder / "model.safetensors").write_bytes(weights)
    checksums = {"model.safetensors": hashlib.sha256(weights).hexdigest()}
    (folder / "overtrain.json").write_text(json.dumps({"checksums": checksums}))
    _log_run(spec.get("index", -1))
    return JobOutput(metrics={"bytes": len(weights)}, artifacts={"checkpoint": str(folder)},
                     provenance={"checkpoint_sha256": checksums["model.safetensors"]})


def read_text_job(spec: Mapping[str, Any]) -> JobOutput:
    """Reads the file a dependency wrote, like a probe reading a checkpoint."""
    return JobOutput(metrics={"text": Path(spec["path"]).read_text()})


def threads_job(spec: Mapping[str, Any]) -> JobOutput:
    """Reports the thread settings the worker runs with."""
    import torch

    return JobOutput(metrics={"omp": os.environ.get("OMP_NUM_THREADS", ""), "torch": torch.get_num_threads()})


def _log_run(index: int) -> None:
    log_path = os.environ.get(JOB_LOG_VARIABLE)
    if log_path:
        with open(log_path, "a", encoding="utf-8") as log:
            log.write(f"{index}\n")


def integer_work_jobs(count: int, iterations: int = 12, size: int = 120) -> list[Job]:
    """``count`` independent integer-work jobs, labelled by index."""
    return [
        Job("integer_work", {"index": i, "seed": i, "iterations": iterations, "size": size}, label=f"work {i}")
        for i in range(count)
    ]


def read_log(path: Path) -> list[int]:
    """Indices logged by the jobs, in order."""
    return [int(line) for line in path.read_text().split()] if path.exists() else []


def subprocess_environment(**variables: str) -> dict[str, str]:
    """This environment plus ``variables``, with overtrain's sources and this folder on PYTHONPATH."""
    tests_folder = Path(__file__).resolve().parent
    paths = [str(tests_folder.parent / "src"), str(tests_folder), os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p), **variables}


def main(argv: list[str]) -> None:
    from overtrain.results.store import ResultStore
    from overtrain.sweep.driver import run_jobs
    from overtrain.sweep.executors import InProcessExecutor, LocalProcessExecutor

    store_path, count = argv[0], int(argv[1])
    executor = LocalProcessExecutor(workers=2) if argv[2:] == ["processes"] else InProcessExecutor()
    iterations = int(os.environ.get("OVERTRAIN_TEST_ITERATIONS", "12"))
    register_test_kinds()
    try:
        with ResultStore(store_path) as store:
            summary = run_jobs(integer_work_jobs(count, iterations=iterations), store, executor, progress=False)
    except OvertrainError as error:  # as the CLI does: the message alone, status 2
        print(error, file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:  # as the CLI does: one line, status 130
        print("interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    print(f"done={summary.done} skipped={summary.skipped} failed={summary.failed}")


if __name__ == "__main__":
    main(sys.argv[1:])
