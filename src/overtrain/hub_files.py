"""Files of a Hugging Face Hub repository at a revision, and the errors a user can act on.

``hf:ORG/NAME@REVISION`` (or ``ORG/NAME@REVISION``) names a repository at a branch, tag or commit;
:func:`download_repo_files` fetches the files matching some patterns through
``huggingface_hub.snapshot_download`` (its cache layout ``models--ORG--NAME/refs/REVISION`` -> commit,
``snapshots/COMMIT/...``). Offline (``HF_HUB_OFFLINE=1``) a revision resolves from the cache alone.

A leaf below every stage: model checkpoints (:mod:`overtrain.checkpoints.hub`), pre-trained tokenizers
(:mod:`overtrain.data.tokenizer`) and family listings share one message for each way a download fails.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from overtrain.errors import OvertrainError

HUB_PREFIX = "hf:"
DEFAULT_REVISION = "main"
COMMIT_SHA = re.compile(r"^[0-9a-f]{40}$")
REPO_NAME = re.compile(r"[\w.\-]+/[\w.\-]+")


@dataclass(frozen=True)
class HubReference:
    """A repository on the Hugging Face Hub at one revision (branch, tag or commit)."""

    repo: str
    revision: str = DEFAULT_REVISION

    def __str__(self) -> str:
        return f"{HUB_PREFIX}{self.repo}@{self.revision}"


def is_hub_reference(text: object) -> bool:
    """True for strings of the form ``hf:ORG/NAME[@REVISION]``."""
    return isinstance(text, str) and text.startswith(HUB_PREFIX)


def parse_hub_reference(text: str) -> HubReference:
    """``hf:EleutherAI/pythia-160m@step1000`` -> HubReference('EleutherAI/pythia-160m', 'step1000')."""
    body = text.removeprefix(HUB_PREFIX)
    repo, _, revision = body.partition("@")
    if not REPO_NAME.fullmatch(repo) or (revision == "" and "@" in body):
        raise OvertrainError(
            f"{text!r} is not a Hub model reference",
            "write hf:ORG/NAME@REVISION, e.g. hf:EleutherAI/pythia-160m@step1000 (the revision defaults to main)",
        )
    return HubReference(repo, revision or DEFAULT_REVISION)


def download_repo_files(reference: HubReference, patterns: list[str]) -> tuple[Path, str | None]:
    """The local snapshot folder of ``reference`` holding the files that match ``patterns`` (downloaded, or
    found in the cache) and its commit sha; every failure is an ``OvertrainError`` naming the fix."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    cache_dir = os.environ.get("HF_HUB_CACHE") or None  # read at call time, not at import
    try:
        folder = snapshot_download(reference.repo, revision=reference.revision, allow_patterns=patterns, cache_dir=cache_dir)
    except RevisionNotFoundError:
        raise missing_revision_error(reference, "on the Hub") from None
    except LocalEntryNotFoundError:
        raise missing_revision_error(reference, f"in the local Hugging Face cache ({_cache_label(cache_dir)}) and the Hub cannot be reached") from None
    except (RepositoryNotFoundError, GatedRepoError) as error:
        raise missing_repository_error(reference.repo, error) from None
    except (HfHubHTTPError, OSError) as error:
        raise OvertrainError(f"could not download {reference}: {error}", "check the network, or download it first with `hf download`") from None
    folder_path = Path(folder)
    return folder_path, folder_path.name if COMMIT_SHA.match(folder_path.name) else None


def _cache_label(cache_dir: str | None) -> str:
    if cache_dir:
        return cache_dir
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def missing_revision_error(reference: HubReference, where: str) -> OvertrainError:
    """The one message for a revision that is not on the Hub (or, offline, not in the cache)."""
    return OvertrainError(
        f"revision {reference.revision!r} of {reference.repo} was not found {where}",
        f"pass a revision that exists: list them with `huggingface_hub.list_repo_refs('{reference.repo}')` "
        f"and write hf:{reference.repo}@BRANCH (e.g. @main); without network, first run "
        f"`hf download {reference.repo} --revision REVISION` on a machine that has it and copy the cache, "
        "or set HF_HUB_CACHE to a cache that holds it",
    )


def missing_repository_error(repo: str, error: Exception) -> OvertrainError:
    """The one message for a Hub repository that does not exist or is gated (downloads and listings alike)."""
    return OvertrainError(
        f"the Hub repository {repo!r} does not exist or is gated ({type(error).__name__})",
        "check the name on huggingface.co; for a gated model accept its licence and log in with `hf auth login`",
    )
