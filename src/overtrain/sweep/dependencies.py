"""Which jobs may start now: a probe waits for the pre-training job that writes its checkpoint."""

from __future__ import annotations

import collections
from collections.abc import Collection

from overtrain.results.records import Job


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
