"""A family, checked and selected, as one typed value and as the table ``overtrain family`` prints.

:func:`plan_family` is the whole stage: list the revisions (Hub or local), check their weights, skip the
flagged ones unless asked, apply the selection. Later stages (instruction tuning, benchmarks) take
``plan.chosen``: revisions whose ``reference`` a probe loads.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from overtrain.errors import OvertrainError
from overtrain.families.integrity import (
    ALWAYS_SKIPPED,
    Flag,
    IntegrityReport,
    check_family,
    integrity_report,
    kept_revisions,
    with_flags,
)
from overtrain.families.listing import FamilyListing, HubClient, Revision, list_family
from overtrain.families.local import damaged_weight_file, is_local_source, list_local_family, local_weight_files
from overtrain.families.selection import Selection, parse_selection, select
from overtrain.units import format_tokens


@dataclass(frozen=True)
class FamilyPlan:
    """What :func:`plan_family` found and chose."""

    listing: FamilyListing
    report: IntegrityReport
    selection: Selection
    include_duplicates: bool
    chosen: tuple[Revision, ...]
    """The revisions to compute on, in training order."""

    @property
    def skipped(self) -> list[Revision]:
        return [r for r in self.listing.revisions if self.report.skipped(r.name)]


def plan_family(
    source: str, selection: object = "all", include_duplicates: bool = False, client: HubClient | None = None, workers: int = 8
) -> FamilyPlan:
    """List ``source`` (a known family, ``hf:ORG/NAME`` or a local folder), check it, and select revisions."""
    parsed = parse_selection(selection)
    if not str(source).strip():  # Path("") is the working directory, which would be listed as a family
        raise OvertrainError("the family source is empty", "pass a family name (overtrain family lists them), hf:ORG/NAME, or a run, ladder or folder of checkpoints")
    if is_local_source(source):
        listing = list_local_family(source)
        weights = {revision.name: local_weight_files(revision) for revision in listing.revisions}
        damaged = {revision.name: Flag("damaged", name) for revision in listing.revisions
                   for name in [damaged_weight_file(revision)] if name}
        report = with_flags(integrity_report(listing.revisions, weights, final=None), damaged)
    else:
        listing = list_family(source, client)
        report = check_family(listing, client, workers)
    kept = kept_revisions(listing.revisions, report, include_duplicates)
    skipped = {} if include_duplicates else {
        name: ", ".join(map(str, flags)) for name, flags in report.flags.items() if report.skipped(name)
    }
    chosen = select(kept, parsed, skipped, family=source)
    return FamilyPlan(listing, report, parsed, include_duplicates, tuple(chosen))


COLUMNS = ("use", "revision", "step", "tokens", "tokens/param", "sha", "weights", "flags")


def table_rows(plan: FamilyPlan) -> list[tuple[str, ...]]:
    """One row of strings per revision: use (yes/skip/blank), name, step, tokens, tokens/param, sha, weights, flags."""
    chosen = {revision.name for revision in plan.chosen}
    rows = []
    for revision in plan.listing.revisions:
        use = "yes" if revision.name in chosen else ("skip" if plan.report.skipped(revision.name) and not plan.include_duplicates else "")
        rows.append((
            use, revision.name, "-" if revision.step is None else str(revision.step), _tokens(revision),
            _ratio(revision.tokens_per_parameter),
            (revision.commit or "")[:12] or "-", plan.report.weights_id(revision.name) or "-",
            " ".join([*map(str, plan.report.flags.get(revision.name, ())), *(["= main (final)"] if revision.name == plan.report.final_alias else [])]),
        ))
    return rows


def _ratio(value: float | None) -> str:
    """Tokens per parameter: ``0.0298``, ``15.2``, ``4,263``."""
    if value is None:
        return "-"
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def _tokens(revision: Revision) -> str:
    if revision.tokens is None:
        return "?"
    return ("~" if revision.tokens_source == "estimate" else "") + format_tokens(revision.tokens)


def format_table(plan: FamilyPlan) -> str:
    """The table ``overtrain family`` prints, with a header line and a summary line."""
    listing, family = plan.listing, plan.listing.family
    rows = [COLUMNS, *table_rows(plan)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    right = {2, 3, 4}
    lines = [_header(plan)]
    for row in rows:
        cells = [cell.rjust(widths[i]) if i in right else cell.ljust(widths[i]) for i, cell in enumerate(row)]
        lines.append("  ".join(cells).rstrip())
    lines.append(_summary(plan))
    if family.note:
        lines.append(f"note: {family.note}")
    if listing.other_branches:
        lines.append(f"other branches (not checkpoints of this family): {_shortlist(listing.other_branches)}")
    return "\n".join(lines)


def _header(plan: FamilyPlan) -> str:
    listing, family = plan.listing, plan.listing.family
    parameters = f"{format_tokens(family.parameters)} parameters" if family.parameters else "parameters unknown"
    final = f", main at {listing.final.commit[:12]} (weights {plan.report.weights_id('main') or '-'})" if listing.final and listing.final.commit else ""
    where = family.repo if family.repo != family.name else ""
    return f"{family.name}{f' ({where})' if where else ''}: {len(listing.revisions)} checkpoints{final}; {parameters}"


def _summary(plan: FamilyPlan) -> str:
    skipped = len(plan.skipped)
    kept = len(kept_revisions(plan.listing.revisions, plan.report, plan.include_duplicates))
    damaged = sum(1 for flags in plan.report.flags.values() if any(flag.kind in ALWAYS_SKIPPED for flag in flags))
    text = f"{len(plan.chosen)} selected ({_selection_text(plan.selection)}) of {kept} kept; {skipped} flagged"
    if skipped and not plan.include_duplicates:
        text += " and skipped" + (" (--include-duplicates keeps them)" if skipped > damaged else "")
    elif skipped:
        text += ", kept because of --include-duplicates" + (f" except {damaged} damaged" if damaged else "")
    return text


def _selection_text(selection: Selection) -> str:
    if selection.kind in ("every", "log"):
        return f"select={selection.kind}:{selection.count}"
    return "select=all" if selection.kind == "all" else f"select={','.join(selection.names)}"


def _shortlist(names: Sequence[str], limit: int = 6) -> str:
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")
