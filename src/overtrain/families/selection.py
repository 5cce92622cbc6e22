"""Which revisions of a family to use: all, every k-th, log-spaced in tokens, or a named list.

``select=`` on the command line takes ``all``, ``every:K``, ``log:N``, or revision names (``[step1000,step2000]``
or ``step1000,step2000``). Selections apply to the revisions the integrity check kept; naming a flagged
revision is an error that says why it was skipped.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from overtrain.errors import OvertrainError
from overtrain.families.listing import Revision, missing_revision

SELECT_HELP = "select=all | every:K | log:N | [REV,REV,...]"


@dataclass(frozen=True)
class Selection:
    """A parsed ``select=`` value."""

    kind: str
    """``all``, ``every`` (every k-th), ``log`` (n points log-spaced in tokens) or ``names``."""
    count: int = 0
    names: tuple[str, ...] = ()


def parse_selection(value: object) -> Selection:
    """``'every:4'`` -> Selection('every', 4); ``['step1', 'step2']`` -> Selection('names', names=...)."""
    if value is None or value == "all":
        return Selection("all")
    if isinstance(value, (list, tuple)):
        return _named(tuple(str(name).strip() for name in value), repr(list(value)))
    text = str(value).strip()
    for kind in ("every", "log"):
        if text.startswith(f"{kind}:"):
            number = text[len(kind) + 1:]
            if not number.isdigit() or int(number) < 1:
                raise OvertrainError(f"select={text}: {kind}: needs a whole number >= 1", f"write e.g. select={kind}:4")
            return Selection(kind, int(number))
    return _named(tuple(name.strip() for name in text.strip("[]").split(",") if name.strip()), repr(text))


def _named(names: tuple[str, ...], written: str) -> Selection:
    """A selection by names, refused when it names none (nothing would be computed) or one twice."""
    if not names or not all(names):
        raise OvertrainError(f"select={written} names no revision" if not names else f"select={written} holds an empty name",
                             SELECT_HELP)
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise OvertrainError(f"select={written} names {', '.join(repeated)} more than once", "name each revision once")
    return Selection("names", names=names)


def select(
    revisions: Sequence[Revision], selection: Selection, skipped: Mapping[str, str] | None = None, family: str = "SOURCE"
) -> list[Revision]:
    """The revisions ``selection`` picks from ``revisions`` (training order); ``skipped``: name -> why."""
    if selection.kind == "all":
        return list(revisions)
    if selection.kind == "every":
        return every_kth(revisions, selection.count)
    if selection.kind == "log":
        return log_spaced(revisions, selection.count)
    return named(revisions, selection.names, skipped or {}, family)


def every_kth(revisions: Sequence[Revision], k: int) -> list[Revision]:
    """Revisions 0, k, 2k, ... and always the last one (the longest-trained checkpoint)."""
    chosen = list(revisions[::k])
    if revisions and chosen[-1] is not revisions[-1]:
        chosen.append(revisions[-1])
    return chosen


def log_spaced(revisions: Sequence[Revision], n: int) -> list[Revision]:
    """Up to ``n`` revisions nearest to ``n`` points spaced evenly in log(tokens), first and last included.

    Revisions at 0 tokens (``step0``) have no place on a log axis and are not chosen; fewer than ``n``
    come back when several points share a nearest revision.
    """
    unknown = [revision.name for revision in revisions if revision.tokens is None]
    if unknown:
        raise OvertrainError(
            f"log spacing needs token counts, and {len(unknown)} revisions have none ({', '.join(unknown[:3])})",
            "use select=every:K or name the revisions",
        )
    positive = [revision for revision in revisions if revision.tokens and revision.tokens > 0]
    if not positive:
        return []
    low, high = math.log(positive[0].tokens), math.log(positive[-1].tokens)
    targets = [low + (high - low) * i / (n - 1) for i in range(n)] if n > 1 else [high]
    chosen: list[Revision] = []
    for target in targets:
        nearest = min(positive, key=lambda revision: abs(math.log(revision.tokens) - target))
        if nearest not in chosen:
            chosen.append(nearest)
    return sorted(chosen, key=lambda revision: (revision.order, revision.name))


def named(revisions: Sequence[Revision], names: Sequence[str], skipped: Mapping[str, str], family: str = "SOURCE") -> list[Revision]:
    """The revisions called ``names``, in training order; an unknown or skipped name is an error."""
    by_name = {revision.name: revision for revision in revisions}
    for name in names:
        if name in skipped:
            raise OvertrainError(
                f"revision {name} was skipped by the integrity check: {skipped[name]}",
                "pick another revision, or pass --include-duplicates to use it anyway",
            )
        if name not in by_name:
            raise missing_revision(name, list(by_name), family)
    chosen = {name: by_name[name] for name in names}
    return sorted(chosen.values(), key=lambda revision: (revision.order, revision.name))
