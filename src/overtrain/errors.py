"""The one exception type users see.

Every error a user can cause (a bad config key, a missing corpus, a corrupted checkpoint, a NaN loss)
is raised as :class:`OvertrainError` with a message that names the problem *and* the fix. The CLI
prints the message alone, without a traceback, and exits with status 2.
"""

from __future__ import annotations

import re


class OvertrainError(Exception):
    """A problem with the user's input or environment, explained in words the user can act on."""

    def __init__(self, problem: str, fix: str | None = None) -> None:
        self.problem = problem
        self.fix = fix
        super().__init__(problem if fix is None else f"{problem}\n  fix: {fix}")


class SettingProblems:
    """Collects every invalid setting of a config, so that one error names them all (and every fix)."""

    def __init__(self, key_prefix: str = "", sections: tuple[str, ...] = ()) -> None:
        self.messages: list[str] = []
        self.fixes: list[str] = []
        self.key_prefix = key_prefix
        """Prepended to the keys of :meth:`add`: a section checked inside a bigger config (a sweep's
        ``pretrain.``) names its keys as the user writes them."""
        self.sections = sections
        """The checked config's sections (``train``, ...): with a ``key_prefix``, the free text of
        :meth:`add_text` gets it before every ``SECTION.key`` it names, as :meth:`add`'s keys do."""

    def add(self, key: str, value: object, allowed: str) -> None:
        key = self.key_prefix + key
        self.add_text(f"{key}={value!r} is invalid", f"{key}: use {allowed}")

    def require(self, condition: bool, key: str, value: object, allowed: str) -> None:
        if not condition:
            self.add(key, value, allowed)

    def add_text(self, message: str, fix: str) -> None:
        message, fix = self._prefixed(message), self._prefixed(fix)
        if message not in self.messages:  # two checks may find the same problem; name it once
            self.messages.append(message)
            self.fixes.append(fix)

    def _prefixed(self, text: str) -> str:
        if not (self.key_prefix and self.sections and text):
            return text
        sections = "|".join(map(re.escape, self.sections))
        return re.sub(rf"(?<![\w./\\-])(?=(?:{sections})\.[A-Za-z_])", self.key_prefix, text)

    def raise_if_any(self, summary: str = "invalid settings") -> None:
        """One problem as itself; several as ``N <summary>:`` and a list, with each distinct fix once."""
        if len(self.messages) == 1:
            raise OvertrainError(self.messages[0], self.fixes[0])
        if self.messages:
            listed = "".join(f"\n  - {message}" for message in self.messages)
            raise OvertrainError(f"{len(self.messages)} {summary}:{listed}", "; ".join(dict.fromkeys(fix for fix in self.fixes if fix)))
