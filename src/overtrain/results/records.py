"""The unit of work of a sweep and of a stored row: a :class:`Job` (kind + spec, keyed by their hash) and
what running it returned (:class:`JobOutput` or :class:`JobFailure`).

A job is data, never code or model objects: its ``kind`` names a job function in the registry below
(``kind -> "module:function"``) and its ``spec`` is the full JSON-serialisable description of the work
(checkpoint identity, gamma, seed, task, learning rate...). Because workers receive only the import path
and the spec, the same job runs in this process, in a spawned process, or on a Ray worker on another
machine, and its :attr:`Job.key` (a hash of kind + spec) is the same everywhere, which is what lets a
killed sweep skip the jobs it already finished.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
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
