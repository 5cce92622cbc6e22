"""The unit of work of a sweep: a :class:`Job`, the function that runs it, and what it returns.

A job is data, never code or model objects: its ``kind`` names a job function in the registry below
(``kind -> "module:function"``) and its ``spec`` is the full JSON-serialisable description of the work
(checkpoint identity, gamma, seed, task, learning rate...). Because workers receive only the import path
and the spec, the same job runs in this process, in a spawned process, or on a Ray worker on another
machine, and its :attr:`Job.key` (a hash of kind + spec) is the same everywhere, which is what lets a
killed sweep skip the jobs it already finished. :class:`DependencyTracker` says which jobs may start
once others have finished (a probe waits for the pretrain job that writes its checkpoint).
"""

from __future__ import annotations

import collections
import hashlib
import importlib
import json
import os
import socket
import sys
import time
import traceback
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from overtrain.errors import OvertrainError

KEY_HEX_CHARS = 16
Metrics = dict[str, Any]
"""Metric name -> float | int | str | list (anything JSON can hold)."""


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no spaces: equal data gives equal text in any process or Python 3."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def _json_copy(value: Any, what: str) -> Any:
    try:
        return json.loads(canonical_json(value))
    except (TypeError, ValueError) as error:
        raise OvertrainError(
            f"{what} is not JSON-serialisable: {error}",
            "use only str, int, float (finite), bool, None, lists and dicts with str keys; "
            "pass checkpoints as paths, never as model objects",
        ) from error


@dataclass(frozen=True)
class Job:
    """One unit of work: ``kind`` selects the job function, ``spec`` is everything it needs.

    ``spec`` is copied through JSON on creation (tuples become lists), so the key is computed from
    exactly what a worker will receive. ``depends_on`` lists keys of jobs that must be finished before
    this one starts (a probe depends on the pretrain job that writes its checkpoint).
    """

    kind: str
    spec: Mapping[str, Any]
    depends_on: tuple[str, ...] = ()
    label: str = ""
    key: str = field(init=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.kind, str) or not self.kind:
            raise OvertrainError(f"job kind must be a non-empty string, got {self.kind!r}", None)
        if not isinstance(self.spec, Mapping):
            raise OvertrainError(f"job spec must be a mapping, got {type(self.spec).__name__}", None)
        object.__setattr__(self, "spec", _json_copy(dict(self.spec), f"the spec of a {self.kind!r} job"))
        object.__setattr__(self, "depends_on", tuple(self.depends_on))
        object.__setattr__(self, "key", job_key(self.kind, self.spec))
        if not self.label:
            object.__setattr__(self, "label", f"{self.kind} {self.key}")

    def __hash__(self) -> int:
        return hash(self.key)


def job_key(kind: str, spec: Mapping[str, Any]) -> str:
    """First 16 hex characters of sha256 over the canonical JSON of ``(kind, spec)``."""
    text = canonical_json({"kind": kind, "spec": spec})
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:KEY_HEX_CHARS]


@dataclass
class JobOutput:
    """What a job function returns: JSON metrics, optional artifact paths and provenance facts.

    ``provenance`` is for facts only the worker knows, such as the content hash of the checkpoint it
    loaded; it is merged into the stored row's provenance.
    """

    metrics: Metrics
    artifacts: dict[str, str] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)


@dataclass
class JobFailure:
    """A job that raised: the message the user reads, the exception type and the full traceback."""

    message: str
    error_type: str
    traceback: str = ""


_JOB_FUNCTIONS: dict[str, str] = {}


def register_job_kind(kind: str, import_path: str) -> None:
    """Make ``kind`` run ``import_path`` (``"package.module:function"``) in any worker."""
    if ":" not in import_path:
        raise OvertrainError(
            f"job function path {import_path!r} for kind {kind!r} has no ':'",
            "write it as 'package.module:function', e.g. 'overtrain.probes.noise:run_noise_job'",
        )
    _JOB_FUNCTIONS[kind] = import_path


def registered_job_kinds() -> dict[str, str]:
    """A copy of the registry: kind -> import path."""
    return dict(_JOB_FUNCTIONS)


def job_function_path(kind: str) -> str:
    """The import path registered for ``kind``; raises :class:`OvertrainError` if there is none."""
    try:
        return _JOB_FUNCTIONS[kind]
    except KeyError:
        known = ", ".join(sorted(_JOB_FUNCTIONS)) or "none"
        raise OvertrainError(
            f"no job function is registered for job kind {kind!r} (registered: {known})",
            f"call overtrain.jobs.register_job_kind({kind!r}, 'package.module:function') first",
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
    except Exception as error:  # noqa: BLE001 - a job's failure is data, reported to the driver
        return _failure_from(error), time.perf_counter() - start_seconds
    output.provenance = {"worker_host": socket.gethostname(), "worker_pid": os.getpid(), **output.provenance}
    return output, time.perf_counter() - start_seconds


def _check_output(output: Any, import_path: str) -> None:
    if not isinstance(output, JobOutput):
        raise OvertrainError(
            f"job function {import_path!r} returned {type(output).__name__}, not JobOutput",
            "return overtrain.jobs.JobOutput(metrics={...})",
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


class DependencyTracker:
    """Which jobs may start now, given which keys have finished or failed."""

    def __init__(self, jobs: list[Job], finished_keys: Collection[str]) -> None:
        self.unfinished = {job.key: job for job in jobs}
        self.unmet = {job.key: {d for d in job.depends_on if d not in finished_keys} for job in jobs}
        self.dependents: dict[str, list[str]] = collections.defaultdict(list)
        for key, dependencies in self.unmet.items():
            for dependency in dependencies:
                self.dependents[dependency].append(key)
        self.ready: collections.deque[Job] = collections.deque(job for job in jobs if not self.unmet[job.key])

    def unknown_dependencies(self) -> list[tuple[Job, str]]:
        """Jobs that depend on a key that is neither finished nor part of this sweep."""
        return [
            (self.unfinished[key], dependency)
            for key, dependencies in self.unmet.items()
            for dependency in sorted(dependencies)
            if dependency not in self.unfinished
        ]

    def mark_finished(self, key: str) -> None:
        """Record that ``key`` finished; jobs whose last unmet dependency it was become ready."""
        self.unfinished.pop(key, None)
        for dependent in self.dependents.pop(key, []):
            self.unmet[dependent].discard(key)
            if not self.unmet[dependent] and dependent in self.unfinished:
                self.ready.append(self.unfinished[dependent])

    def mark_failed(self, key: str) -> list[tuple[Job, str]]:
        """Drop ``key`` and, transitively, everything waiting on it; returns (blocked job, failed key)."""
        self.unfinished.pop(key, None)
        blocked, frontier = [], [key]
        while frontier:
            failed_key = frontier.pop()
            for dependent in self.dependents.pop(failed_key, []):
                if dependent in self.unfinished:
                    blocked.append((self.unfinished.pop(dependent), failed_key))
                    frontier.append(dependent)
        return blocked
