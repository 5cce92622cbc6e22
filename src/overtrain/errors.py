"""The one exception type users see.

Every error a user can cause (a bad config key, a missing corpus, a corrupted checkpoint, a NaN loss)
is raised as :class:`OvertrainError` with a message that names the problem *and* the fix. The CLI
prints the message alone, without a traceback, and exits with status 2.
"""

from __future__ import annotations


class OvertrainError(Exception):
    """A problem with the user's input or environment, explained in words the user can act on."""

    def __init__(self, problem: str, fix: str | None = None) -> None:
        self.problem = problem
        self.fix = fix
        super().__init__(problem if fix is None else f"{problem}\n  fix: {fix}")
