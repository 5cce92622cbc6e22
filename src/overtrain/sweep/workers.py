"""What runs a job wherever it lands (this process, a spawned process, a Ray worker): the registry of job
functions by kind (import paths, so nothing is imported until a worker needs it), thread limits, and a
call that turns a job's own exception into a :class:`JobFailure` instead of raising.
"""

from __future__ import annotations

import importlib
import json
import os
import socket
import sys
import time
import traceback
from collections.abc import Callable, Mapping
from typing import Any

from overtrain.errors import OvertrainError
from overtrain.results.records import JobFailure, JobOutput

_JOB_FUNCTIONS: dict[str, str] = {
    "pretrain": "overtrain.sweep.jobs:run_pretrain_job",
    "noise": "overtrain.sweep.jobs:run_noise_job",
    "finetune": "overtrain.sweep.jobs:run_finetune_job",
    "sharpness": "overtrain.sweep.jobs:run_sharpness_job",
    "vision-features": "overtrain.sweep.jobs:run_vision_features_job",
    "multimodal": "overtrain.sweep.jobs:run_multimodal_job",
    "benchmarks": "overtrain.sweep.jobs:run_benchmark_job",
}
"""Job kind -> ``"package.module:function"``; the built-in kinds, and any a caller registers."""


def register_job_kind(kind: str, import_path: str) -> None:
    """Make ``kind`` run ``import_path`` (``"package.module:function"``) in any worker."""
    if ":" not in import_path:
        raise OvertrainError(
            f"job function path {import_path!r} for kind {kind!r} has no ':'",
            "write it as 'package.module:function', e.g. 'overtrain.probes.noise:run_noise_job'",
        )
    _JOB_FUNCTIONS[kind] = import_path


def job_function_path(kind: str) -> str:
    """The import path registered for ``kind``; raises :class:`OvertrainError` if there is none."""
    try:
        return _JOB_FUNCTIONS[kind]
    except KeyError:
        known = ", ".join(sorted(_JOB_FUNCTIONS)) or "none"
        raise OvertrainError(
            f"no job function is registered for job kind {kind!r} (registered: {known})",
            f"call overtrain.sweep.workers.register_job_kind({kind!r}, 'package.module:function') first",
        ) from None


def resolve_job_function(import_path: str) -> Callable[[Mapping[str, Any]], JobOutput]:
    """Import ``"package.module:function"`` and return the function."""
    module_name, _, function_name = import_path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise OvertrainError(
            f"cannot import module {module_name!r} of job function {import_path!r}: {error}",
            "check the spelling and that the module is importable on every worker (PYTHONPATH)",
        ) from error
    function = getattr(module, function_name, None)
    if not callable(function):
        raise OvertrainError(
            f"module {module_name!r} has no function {function_name!r} (job function {import_path!r})",
            "check the name after ':' in the registered job function path",
        )
    return function


def limit_threads(threads: int) -> None:
    """Cap the thread pools of OpenMP/MKL/OpenBLAS (via the environment) and of torch if imported.

    The environment variables take effect for libraries imported later; torch, if already imported,
    is told directly.
    """
    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[variable] = str(threads)
    torch = sys.modules.get("torch")
    if torch is not None and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def execute_job(import_path: str, spec: Mapping[str, Any], threads: int | None = None) -> tuple[JobOutput | JobFailure, float]:
    """Run one job where it lands (any process or machine); never raises for a job's own error.

    Returns the output or the failure and the wall-clock seconds the job took. Adds the worker's
    hostname and process id to the output's provenance.
    """
    start_seconds = time.perf_counter()
    try:
        if threads is not None:
            limit_threads(threads)
        output = resolve_job_function(import_path)(spec)
        _check_output(output, import_path)
    except Exception as error:
        return _failure_from(error), time.perf_counter() - start_seconds
    output.provenance = {"worker_host": socket.gethostname(), "worker_pid": os.getpid(), **output.provenance}
    return output, time.perf_counter() - start_seconds


def _check_output(output: Any, import_path: str) -> None:
    if not isinstance(output, JobOutput):
        raise OvertrainError(
            f"job function {import_path!r} returned {type(output).__name__}, not JobOutput",
            "return overtrain.results.records.JobOutput(metrics={...})",
        )
    try:
        json.dumps(output.metrics)
        json.dumps(output.artifacts)
        json.dumps(output.provenance)
    except (TypeError, ValueError) as error:
        raise OvertrainError(
            f"job function {import_path!r} returned metrics that JSON cannot hold: {error}",
            "convert tensors and numpy values to float/int/str/list (e.g. with .item() or .tolist())",
        ) from error


def _failure_from(error: Exception) -> JobFailure:
    if isinstance(error, OvertrainError):
        message = str(error)
    else:
        message = f"{type(error).__name__}: {error}"
    return JobFailure(message=message, error_type=type(error).__name__, traceback=traceback.format_exc())
