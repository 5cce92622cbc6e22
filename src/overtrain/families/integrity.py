"""Integrity before compute: which revisions serve weights that are not their own, found without downloading.

Public families have branches that serve another checkpoint's weights: Pythia's ``step0`` equals ``step1``
(EleutherAI/pythia#83), 86 of pythia-2.8b's 154 branches serve final-era weights (#205), two pythia-12b
branches serve the final checkpoint's first shard (#206), and OLMo-2-1124-7B's stage-1 steps 101000, 175000
and 300000 serve identical shards (allenai/OLMo#915). The Hub lists every weight file's LFS sha256 with
the file tree (``HfApi().list_repo_tree(repo, revision=COMMIT)``; the LFS fields are there without
``expand=True``, which only adds last-commit and security data), so equal weights show as equal hashes.

Flags (:class:`Flag`), all but ``tokens-mismatch`` skipped unless asked:

- ``equals-final``: the weights are ``main``'s, and the revision is not the last step (which ``main``
  is expected to alias);
- ``duplicate``: the weights are another step's (every member of such a group is flagged: the hashes
  cannot tell which branch, if any, holds the right weights; among checkpoints overtrain wrote, whose
  steps are their own record, the latest of the group is kept);
- ``alias``: the same weights under a second name for the same step (only the first name is kept);
- ``shares-files``: some weight files, not all, are another revision's (a mixed checkpoint);
- ``no-weights``: the branch has no weight file;
- ``tokens-mismatch``: the name's token count disagrees with step x batch (kept; tokens from the name);
- ``damaged``: a local revision's weight file is cut short or not safetensors (skipped even with
  ``include_duplicates``).
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from overtrain.errors import OvertrainError
from overtrain.families.listing import FamilyListing, HubClient, Revision, default_client

SKIPPED = frozenset({"equals-final", "duplicate", "alias", "shares-files", "no-weights", "damaged"})
ALWAYS_SKIPPED = frozenset({"damaged"})
"""Flags no option includes: weights that cannot be read are not computed on."""
WeightFiles = Mapping[str, str]
"""``{file path: content hash}``; hashes are ``sha256:HEX`` (LFS) or ``git:OID`` (files kept in git)."""


@dataclass(frozen=True)
class Flag:
    """One integrity finding about a revision."""

    kind: str
    other: str | None = None
    """The revision the finding relates to (``main``, or the step it duplicates)."""

    def __str__(self) -> str:
        """``duplicate(step1)``, ``equals-final(main)``, ``no-weights``: the kind and the other revision."""
        return f"{self.kind}({self.other})" if self.other else self.kind


@dataclass(frozen=True)
class IntegrityReport:
    """Flags per revision name, the weight files they were read from, and which step ``main`` aliases."""

    flags: dict[str, tuple[Flag, ...]]
    weights: dict[str, dict[str, str]] = field(default_factory=dict)
    final_alias: str | None = None
    """The last step revision when its weights are ``main``'s (the expected case)."""

    def skipped(self, name: str) -> bool:
        return any(flag.kind in SKIPPED for flag in self.flags.get(name, ()))

    def weights_id(self, name: str) -> str | None:
        """A short id of a revision's weights: equal ids, equal weight files."""
        files = self.weights.get(name)
        if not files:
            return None
        joined = "\n".join(sorted(files.values()))
        return hashlib.sha256(joined.encode()).hexdigest()[:12]


def is_weight_file(path: str) -> bool:
    """Model weights: ``*.safetensors`` and ``pytorch_model*.bin`` / ``model*.bin``, not optimizer or RNG state."""
    name = path.rsplit("/", 1)[-1]
    if name.endswith(".safetensors"):
        return not name.startswith(("optimizer", "optim", "rng", "train"))
    return name.endswith(".bin") and name.startswith(("pytorch_model", "model"))


def weight_format(path: str) -> str:
    return "safetensors" if path.endswith(".safetensors") else "bin"


def tree_weight_files(entries: Iterable[Any]) -> dict[str, str]:
    """``{path: hash}`` of the weight files in a ``list_repo_tree`` answer (RepoFile/RepoFolder objects)."""
    files = {}
    for entry in entries:
        if not hasattr(entry, "blob_id") or not is_weight_file(entry.path):
            continue  # a RepoFolder, or not a weight file
        lfs = getattr(entry, "lfs", None)
        files[entry.path] = f"sha256:{lfs.sha256}" if lfs is not None else f"git:{entry.blob_id}"
    return files


def hub_weight_files(client: HubClient, repo: str, revision: Revision) -> dict[str, str]:
    """The weight files of one revision, read from the Hub's file tree at its listed commit."""
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled, RevisionNotFoundError

    try:
        return tree_weight_files(client.list_repo_tree(repo, revision=revision.commit or revision.name))
    except OfflineModeIsEnabled:
        raise OvertrainError(
            f"reading the file tree of {repo}@{revision.name} needs the Hub, and HF_HUB_OFFLINE is set",
            "unset HF_HUB_OFFLINE, or skip the check with --include-duplicates (not recommended)",
        ) from None
    except RevisionNotFoundError:
        raise OvertrainError(
            f"{repo}@{revision.name} (commit {revision.commit}) is gone from the Hub since it was listed",
            "list the family again",
        ) from None
    except (HfHubHTTPError, OSError) as error:
        raise OvertrainError(f"could not read the file tree of {repo}@{revision.name}: {error}", "check the network and try again") from None


def fetch_hub_weights(listing: FamilyListing, client: HubClient | None = None, workers: int = 8) -> dict[str, dict[str, str]]:
    """Weight files of every revision and of ``main``: one tree request per revision, ``workers`` at a time."""
    client = client or default_client()
    revisions = [*listing.revisions, *([listing.final] if listing.final else [])]
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        found = pool.map(lambda revision: hub_weight_files(client, listing.family.repo, revision), revisions)
        return {revision.name: files for revision, files in zip(revisions, found)}


def check_family(listing: FamilyListing, client: HubClient | None = None, workers: int = 8) -> IntegrityReport:
    """Read every revision's weight hashes from the Hub and flag the revisions that are not what they say."""
    weights = fetch_hub_weights(listing, client, workers)
    return integrity_report(listing.revisions, weights, listing.final.name if listing.final else None)


def integrity_report(revisions: Sequence[Revision], weights: dict[str, dict[str, str]], final: str | None) -> IntegrityReport:
    """Flags from weight hashes (see the module docstring); ``revisions`` in training order."""
    order = [revision.name for revision in revisions]
    steps = {revision.name: revision.step if revision.step is not None else revision.order for revision in revisions}
    flags, final_alias = find_duplicates(weights, order, steps, final)
    _keep_the_last_of_our_repeats(flags, weights, steps, {revision.name for revision in revisions if revision.tokens_source == OURS})
    for revision in revisions:
        if not revision.tokens_consistent:
            flags[revision.name].append(Flag("tokens-mismatch"))
    return IntegrityReport({name: tuple(flags[name]) for name in order}, dict(weights), final_alias)


OURS = "overtrain.json"
"""The ``tokens_source`` of a revision overtrain trained: its step and tokens are its own record, not a name."""


def _keep_the_last_of_our_repeats(flags: dict[str, list[Flag]], weights: Mapping[str, WeightFiles], steps: Mapping[str, int],
                                  ours: set[str]) -> None:
    """Among checkpoints overtrain wrote, equal weights at two steps are no publishing error: no update happened
    between them (a run's last step is taken at LR 0 by schedules that decay to zero, so a checkpoint one
    step before the end holds the final weights). The latest of such a group is kept (the run's own end)
    and the others are flagged as its duplicates; before, every member was skipped, the final model with them."""
    duplicated = [name for name, found in flags.items() if name in ours and [flag.kind for flag in found] == ["duplicate"]]
    for group in {tuple(members) for members in _identical_groups(weights, duplicated).values() if len(members) > 1}:
        last = max(group, key=lambda name: steps[name])
        for name in group:
            flags[name] = [] if name == last else [Flag("duplicate", last)]


def with_flags(report: IntegrityReport, added: Mapping[str, Flag]) -> IntegrityReport:
    """``report`` with one more flag for each revision named in ``added``."""
    flags = {name: (*found, added[name]) if name in added else found for name, found in report.flags.items()}
    return IntegrityReport(flags, report.weights, report.final_alias)


def _identity_keys(files: WeightFiles) -> list[tuple[str, tuple[str, ...]]]:
    """One key per weight format: two revisions are the same weights when a key is shared."""
    by_format: dict[str, list[str]] = defaultdict(list)
    for path, hash_ in files.items():
        by_format[weight_format(path)].append(hash_)
    return [(fmt, tuple(sorted(hashes))) for fmt, hashes in sorted(by_format.items())]


def _identical_groups(weights: Mapping[str, WeightFiles], names: Sequence[str]) -> dict[str, list[str]]:
    """``{name: its group}``: names connected through a shared identity key, groups in ``names`` order."""
    parent = {name: name for name in names}

    def root(name: str) -> str:
        while parent[name] != name:
            parent[name] = parent[parent[name]]
            name = parent[name]
        return name

    first_with_key: dict[tuple[str, tuple[str, ...]], str] = {}
    for name in names:
        for key in _identity_keys(weights[name]):
            if key in first_with_key:
                parent[root(name)] = root(first_with_key[key])
            else:
                first_with_key[key] = name
    groups: dict[str, list[str]] = defaultdict(list)
    for name in names:
        groups[root(name)].append(name)
    return {name: groups[root(name)] for name in names}


def find_duplicates(
    weights: Mapping[str, WeightFiles], order: Sequence[str], steps: Mapping[str, int], final: str | None
) -> tuple[dict[str, list[Flag]], str | None]:
    """Flags per revision in ``order`` (training order), and the last step when ``final`` aliases it."""
    flags: dict[str, list[Flag]] = {name: [] for name in order}
    present = [name for name in order if weights.get(name)]
    for name in order:
        if not weights.get(name):
            flags[name].append(Flag("no-weights"))
    compared = present + ([final] if final and weights.get(final) else [])
    groups = _identical_groups(weights, compared)
    final_group = groups.get(final, []) if final else []
    final_alias = present[-1] if present and present[-1] == order[-1] and present[-1] in final_group else None
    for name in present:
        if name in final_group and name != final_alias:
            flags[name].append(Flag("equals-final", final))
            continue
        others = [other for other in groups[name] if other not in (name, final, final_alias)]
        if not others:
            continue
        if all(steps[other] == steps[name] for other in others):
            if groups[name][0] != name:
                flags[name].append(Flag("alias", groups[name][0]))
        else:
            flags[name].append(Flag("duplicate", others[0]))
    _flag_shared_files(weights, present, compared, groups, flags, exempt={final_alias})
    return flags, final_alias


def _flag_shared_files(
    weights: Mapping[str, WeightFiles], present: Sequence[str], compared: Sequence[str],
    groups: Mapping[str, list[str]], flags: dict[str, list[Flag]], exempt: set[str | None],
) -> None:
    """``shares-files`` for revisions with some, not all, weight files of another (not already flagged)."""
    holders: dict[str, set[str]] = defaultdict(set)
    for name in compared:
        for hash_ in weights[name].values():
            holders[hash_].add(name)
    for name in present:
        if flags[name] or name in exempt:
            continue
        sharing = {other for hash_ in weights[name].values() for other in holders[hash_]} - set(groups[name])
        if sharing:
            flags[name].append(Flag("shares-files", max(sharing, key=list(compared).index)))  # main, if it is one


def kept_revisions(revisions: Sequence[Revision], report: IntegrityReport | None, include_duplicates: bool = False) -> list[Revision]:
    """The revisions to compute on: all when ``include_duplicates`` (or no report), else the unflagged ones."""
    if report is None:
        return list(revisions)
    if include_duplicates:
        return [revision for revision in revisions if not any(flag.kind in ALWAYS_SKIPPED for flag in report.flags.get(revision.name, ()))]
    return [revision for revision in revisions if not report.skipped(revision.name)]
