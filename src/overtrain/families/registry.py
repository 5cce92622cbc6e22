"""The known public checkpoint families and how their branch names map to step and tokens.

Revisions are never made up here: :mod:`overtrain.families.listing` lists the branches the Hub has, and
this module only reads a branch name (``step1000``, ``step20000-tokens84B``,
``stage1-step101000-tokens424B``, ``ckpt_042``) and turns it into a step and a token count.

Token counts, by family (sources in docs/families.md):

- Pythia: ``step{N}``; tokens = N x 2,097,152 (1,024 sequences of 2,048 tokens per step, constant).
- OLMo-1B / OLMo-7B (``-hf``): ``step{N}-tokens{T}B``; tokens = N x 4,194,304 (1B: 2,048 x 2,048) or
  N x 4,423,680 (7B: 2,160 x 2,048). T is rounded and, on OLMo-1B-hf, up to ~1.5B low.
- OLMo-2 stage 1: ``stage1-step{N}-tokens{T}B`` (a few branches lack ``stage1-``); tokens = N x 4,194,304
  (7B: 1,024 x 4,096) or N x 2,097,152 (1B: 512 x 4,096); T = ceil(tokens / 1e9).
- LLM360 Amber: ``ckpt_{K}``, K = 0..359; the name has no step and no token count. Tokens are an
  *estimate*: (K + 1) / 360 of the 1,259.13B the model card reports, assuming checkpoint K is written
  after the (K+1)-th of 360 equal data chunks. Rows say ``estimate``.

Where the name states T and the family's tokens per step is known, both must agree within
:data:`NAME_TOKENS_TOLERANCE`; if they do not, the name's T is used and the revision is flagged.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

from overtrain.errors import OvertrainError
from overtrain.hub_files import REPO_NAME

HUB_PREFIX = "hf:"
BILLION = 1_000_000_000

SCHEMES: dict[str, re.Pattern[str]] = {
    "pythia": re.compile(r"^step(?P<step>\d+)$"),
    "olmo": re.compile(r"^step(?P<step>\d+)-tokens(?P<billions>\d+)B$"),
    "olmo2-stage1": re.compile(r"^(?:stage1-)?step(?P<step>\d+)-tokens(?P<billions>\d+)B$"),
    "amber": re.compile(r"^ckpt_(?P<index>\d+)$"),
}
"""Branch-name grammar of each naming scheme. OLMo-2's ``stage2-ingredient{K}-...`` branches are not
stage 1 and match none: they are listed as other branches."""


def name_tokens_tolerance(tokens: int) -> float:
    """How far a name's rounded T may be from step x batch: 2B + 0.1% (OLMo-1B-hf names run ~1.5B low)."""
    return 2 * BILLION + 1e-3 * tokens


NAME_TOKENS_TOLERANCE = "2B + 0.1%"


@dataclass(frozen=True)
class BranchName:
    """What a branch name says: a step, or an index in the published series, and maybe a token count."""

    step: int | None
    index: int | None = None
    """Position in the published series when the name carries no step (Amber's ``ckpt_K``)."""
    name_tokens: int | None = None
    """Tokens as the name states them (``tokens424B`` -> 424e9), rounded by the publisher."""

    @property
    def order(self) -> int:
        return self.step if self.step is not None else (self.index or 0)


@dataclass(frozen=True)
class TokenCount:
    """Tokens seen at a revision and how that number was obtained."""

    tokens: int | None
    source: str
    """``step x N`` (exact for a constant batch), ``name`` (rounded to 1B), ``estimate`` or ``unknown``."""
    consistent: bool = True
    """False when the name's T and step x batch disagree beyond the tolerance (the name's T is used)."""


@dataclass(frozen=True)
class Family:
    """A public family of intermediate checkpoints: one Hub repository, its branches."""

    name: str
    repo: str
    scheme: str
    parameters: int | None
    """Parameters of the model (embeddings included), from the final checkpoint's weights."""
    tokens_per_step: int | None = None
    """Tokens per optimizer step (global batch x sequence length) when constant and published."""
    total_tokens: int | None = None
    """Amber only: tokens of the whole run, spread over ``checkpoints`` equal chunks for the estimate."""
    checkpoints: int | None = None
    note: str = ""

    def parse(self, branch: str) -> BranchName | None:
        """The step (or index) and stated tokens of ``branch``; None if it is not a checkpoint branch."""
        return parse_branch(self.scheme, branch)

    def tokens(self, parsed: BranchName) -> TokenCount:
        """Tokens seen at a parsed branch (see the module docstring for each family's rule)."""
        return branch_tokens(self, parsed)


def parse_branch(scheme: str, branch: str) -> BranchName | None:
    """``parse_branch('olmo', 'step20000-tokens84B')`` -> BranchName(step=20000, name_tokens=84e9)."""
    match = SCHEMES[scheme].match(branch)
    if match is None:
        return None
    groups = match.groupdict()
    step = int(groups["step"]) if groups.get("step") is not None else None
    index = int(groups["index"]) if groups.get("index") is not None else None
    stated = int(groups["billions"]) * BILLION if groups.get("billions") is not None else None
    return BranchName(step=step, index=index, name_tokens=stated)


def branch_tokens(family: Family, parsed: BranchName) -> TokenCount:
    """step x tokens_per_step, checked against the name's T; else the name's T; else Amber's estimate."""
    if family.tokens_per_step is not None and parsed.step is not None:
        computed = parsed.step * family.tokens_per_step
        if parsed.name_tokens is not None and abs(parsed.name_tokens - computed) > name_tokens_tolerance(computed):
            return TokenCount(parsed.name_tokens, "name", consistent=False)
        return TokenCount(computed, f"step x {family.tokens_per_step:,}")
    if parsed.name_tokens is not None:
        return TokenCount(parsed.name_tokens, "name")
    if family.total_tokens is not None and family.checkpoints and parsed.index is not None:
        return TokenCount(round((parsed.index + 1) * family.total_tokens / family.checkpoints), "estimate")
    return TokenCount(None, "unknown")


PYTHIA_PARAMETERS = {
    "70m": 70_426_624, "160m": 162_322_944, "410m": 405_334_016, "1b": 1_011_781_632,
    "1.4b": 1_414_647_808, "2.8b": 2_775_208_960, "6.9b": 6_857_302_016, "12b": 11_846_072_320,
}
"""Total parameters, from the table in the EleutherAI/pythia README."""

PYTHIA_TOKENS_PER_STEP = 1024 * 2048


def _pythia() -> list[Family]:
    families = []
    for size, parameters in PYTHIA_PARAMETERS.items():
        for suffix in ("", "-deduped"):
            name = f"pythia-{size}{suffix}"
            families.append(Family(name, f"EleutherAI/{name}", "pythia", parameters, PYTHIA_TOKENS_PER_STEP))
    return families


FAMILIES: dict[str, Family] = {
    family.name: family
    for family in [
        *_pythia(),
        Family("olmo-1b", "allenai/OLMo-1B-hf", "olmo", 1_176_764_416, 2048 * 2048),
        Family("olmo-7b", "allenai/OLMo-7B-hf", "olmo", 6_888_095_744, 2160 * 2048),
        Family("olmo2-1b", "allenai/OLMo-2-0425-1B", "olmo2-stage1", 1_484_916_736, 512 * 4096,
               note="stage 1 only; stage2-ingredient branches are listed as other branches"),
        Family("olmo2-7b", "allenai/OLMo-2-1124-7B", "olmo2-stage1", 7_298_617_344, 1024 * 4096,
               note="stage 1 only; main is the stage-2 soup, not a stage-1 checkpoint"),
        Family("amber", "LLM360/Amber", "amber", 6_738_415_616, None, 1_259_130_000_000, 360,
               note="tokens are estimates: (K+1)/360 of 1,259.13B"),
    ]
}
"""The known families by short name (``overtrain family pythia-160m``)."""


def find_family(source: str) -> Family:
    """The family named ``source``: a short name (``olmo2-7b``) or its repository (``hf:ORG/NAME``, ``ORG/NAME``).

    A repository that is not in the registry gets a family whose naming scheme is read from its branches
    later (:func:`infer_family`); an unknown short name is an error that lists the known ones.
    """
    text = source.removeprefix(HUB_PREFIX)
    if source.startswith(("/", "./", "../", "~")):  # a path (local families are folders that exist), never a Hub name
        raise OvertrainError(f"{source} does not exist", "pass a run, a ladder, or a folder of Hugging Face checkpoint folders that exists")
    _refuse_revision_suffix(source, text)
    if text in FAMILIES:
        return FAMILIES[text]
    by_repo = {family.repo.lower(): family for family in FAMILIES.values()}
    if text.lower() in by_repo:
        return by_repo[text.lower()]
    if "/" in text:
        if not REPO_NAME.fullmatch(text):
            raise OvertrainError(
                f"{source!r} is not a Hub repository name (ORG/NAME of letters, digits, '-', '_' and '.')",
                "write hf:ORG/NAME, e.g. hf:EleutherAI/pythia-160m",
            )
        return Family(text, text, scheme="", parameters=None)
    close = difflib.get_close_matches(text, FAMILIES, n=3)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise OvertrainError(
        f"unknown checkpoint family {source!r}",
        f"{hint}known families: {', '.join(FAMILIES)}; or pass a Hub repository as hf:ORG/NAME, or a local folder",
    )


def _refuse_revision_suffix(source: str, text: str) -> None:
    """A family is every revision of a repository, so ``@REV`` (one revision) cannot name one: say what to do instead."""
    repo, at, revision = text.partition("@")
    if at:
        hub_repo = FAMILIES[repo].repo if repo in FAMILIES else repo  # a short name's repository, for the probe reference
        raise OvertrainError(
            f"family source {source!r} names one revision (@{revision}), but a family lists all of a repository's revisions",
            f"drop @{revision}: `overtrain family {HUB_PREFIX if source.startswith(HUB_PREFIX) else ''}{repo}` lists every "
            f"revision (select=[REV,...] picks some); a probe takes one revision alone as {HUB_PREFIX}{hub_repo}@{revision}",
        )


def infer_family(family: Family, branches: list[str]) -> Family:
    """A registry family as it is; an unregistered repository gets the scheme most of its branches match."""
    if family.scheme:
        return family
    staged = any(branch.startswith("stage1-") for branch in branches)
    candidates = [scheme for scheme in SCHEMES if scheme != "olmo2-stage1" or staged]
    counts = {scheme: sum(parse_branch(scheme, branch) is not None for branch in branches) for scheme in candidates}
    scheme, matched = max(counts.items(), key=lambda item: item[1])
    if not matched:
        raise OvertrainError(
            f"no branch of {family.repo} is named like a checkpoint (step{{N}}, step{{N}}-tokens{{T}}B, "
            f"stage1-step{{N}}-tokens{{T}}B or ckpt_{{K}}); branches: {', '.join(sorted(branches)[:8])}",
            "pass a repository that publishes intermediate checkpoints as branches, e.g. hf:EleutherAI/pythia-160m",
        )
    tokens_per_step = PYTHIA_TOKENS_PER_STEP if scheme == "pythia" and family.repo.lower().startswith("eleutherai/pythia") else None
    return Family(family.name, family.repo, scheme, None, tokens_per_step, note="not in the registry: scheme read from the branch names")
