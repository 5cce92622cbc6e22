"""The revisions of a Hub family, as the Hub lists them: ``HfApi().list_repo_refs(repo)``.

Every revision is a branch that exists, with the commit sha the branch pointed to when it was listed; no
name is made up from a formula. Step and tokens come from the branch name and the family's rule
(:mod:`overtrain.families.registry`). ``main`` is kept apart as the final revision: the integrity check
compares every branch with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from overtrain.checkpoints.hub import missing_repository_error
from overtrain.errors import OvertrainError
from overtrain.families.registry import Family, find_family, infer_family

FINAL_BRANCH = "main"


class HubClient(Protocol):
    """The two ``huggingface_hub.HfApi`` methods a family needs (tests pass a recording)."""

    def list_repo_refs(self, repo_id: str, **kwargs: Any) -> Any: ...

    def list_repo_tree(self, repo_id: str, **kwargs: Any) -> Any: ...


@dataclass(frozen=True)
class Revision:
    """One checkpoint of a family: a Hub branch at a commit, or a local folder."""

    name: str
    """Branch name (``step1000``) or folder name."""
    step: int | None
    tokens: int | None
    tokens_source: str
    """``step x N``, ``name``, ``estimate``, ``overtrain.json`` or ``unknown``."""
    parameters: int | None
    source: str
    """The Hub repository (``EleutherAI/pythia-160m``), or the folder that holds the family."""
    commit: str | None = None
    """Commit sha the branch pointed to when listed (None for local folders)."""
    order: int = 0
    tokens_consistent: bool = True
    path: Path | None = None
    """The checkpoint folder, for local families."""

    @property
    def tokens_per_parameter(self) -> float | None:
        if self.tokens is None or not self.parameters:
            return None
        return self.tokens / self.parameters

    @property
    def reference(self) -> str:
        """What a probe accepts: ``hf:ORG/NAME@COMMIT`` (pinned to the listed commit) or the folder."""
        if self.path is not None:
            return str(self.path)
        return f"hf:{self.source}@{self.commit or self.name}"


@dataclass(frozen=True)
class FamilyListing:
    """A family's checkpoint revisions in training order, its final revision, and what else was listed."""

    family: Family
    revisions: tuple[Revision, ...]
    final: Revision | None
    """``main`` (Hub) or None: the weights the family ends with."""
    other_branches: tuple[str, ...] = ()
    """Branches that are not checkpoints of this family (``stage2-ingredient1-...``, ``v1.0``)."""

    def revision(self, name: str) -> Revision:
        """The revision called ``name``; an error that lists near names if there is none."""
        for revision in self.revisions:
            if revision.name == name:
                return revision
        raise missing_revision(name, [revision.name for revision in self.revisions], self.family.name)


def missing_revision(name: str, names: list[str], family: str) -> OvertrainError:
    import difflib

    close = difflib.get_close_matches(name, names, n=3)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    shown = ", ".join(names) if len(names) <= 5 else f"{', '.join(names[:3])} ... {', '.join(names[-2:])}"  # each name once
    return OvertrainError(
        f"revision {name!r} is not a checkpoint of {family} (it has {len(names)}: {shown})",
        f"{hint}run `overtrain family {family}` to list them",
    )


def default_client() -> HubClient:
    """``huggingface_hub.HfApi()``: the real client, imported only when a family is listed."""
    from huggingface_hub import HfApi

    return HfApi()


def list_family(source: str | Family, client: HubClient | None = None) -> FamilyListing:
    """List the checkpoint branches of a Hub family (``pythia-160m``, ``hf:allenai/OLMo-2-1124-7B``)."""
    family = find_family(source) if isinstance(source, str) else source
    client = client or default_client()
    branches = {ref.name: ref.target_commit for ref in _list_refs(client, family.repo).branches}
    family = infer_family(family, list(branches))
    return listing_from_branches(family, branches)


def listing_from_branches(family: Family, branches: dict[str, str]) -> FamilyListing:
    """Revisions parsed from ``{branch: commit}``; an error if none is a checkpoint branch."""
    revisions, others = [], []
    for name, commit in branches.items():
        parsed = family.parse(name)
        if parsed is None:
            others.append(name)
            continue
        count = family.tokens(parsed)
        revisions.append(Revision(
            name, parsed.step, count.tokens, count.source, family.parameters, family.repo, commit, parsed.order, count.consistent
        ))
    if not revisions:
        raise OvertrainError(
            f"{family.repo} has no checkpoint branches named like {family.scheme} checkpoints "
            f"(branches: {', '.join(sorted(branches)[:8]) or 'none'})",
            "pass a repository that publishes intermediate checkpoints as branches, e.g. pythia-160m or olmo2-7b",
        )
    revisions.sort(key=lambda revision: (revision.order, revision.name))
    final = None
    if FINAL_BRANCH in branches:
        final = Revision(FINAL_BRANCH, None, None, "unknown", family.parameters, family.repo, branches[FINAL_BRANCH], order=-1)
        others.remove(FINAL_BRANCH)
    return FamilyListing(family, tuple(revisions), final, tuple(sorted(others)))


def _list_refs(client: HubClient, repo: str) -> Any:
    """``client.list_repo_refs(repo)`` with the Hub's errors turned into ones a user can act on."""
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        HFValidationError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
    )

    try:
        return client.list_repo_refs(repo)
    except HFValidationError as error:  # the Hub's own rules are stricter than ORG/NAME (no '--', no leading '-' or '.')
        raise OvertrainError(
            f"{repo!r} is not a valid Hub repository id ({error})", "write hf:ORG/NAME as huggingface.co spells it, e.g. hf:EleutherAI/pythia-160m"
        ) from None
    except OfflineModeIsEnabled:
        raise OvertrainError(
            f"listing the branches of {repo} needs the Hub, and HF_HUB_OFFLINE is set",
            "unset HF_HUB_OFFLINE on a machine with network; offline, list a local folder of checkpoints instead",
        ) from None
    except (RepositoryNotFoundError, GatedRepoError) as error:
        raise missing_repository_error(repo, error) from None
    except (HfHubHTTPError, OSError) as error:
        raise OvertrainError(f"could not list the branches of {repo}: {error}", "check the network and try again") from None
