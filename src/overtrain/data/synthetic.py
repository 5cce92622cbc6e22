"""A synthetic long tail mixed into the pre-training corpus: Zipf-distributed facts.

Why: at the demo's scale a tiny model's forgetting plateaus once it stops learning new directions, and the
theory (docs/theory.md) gives a fine-tuning U only while it keeps learning them. A table of facts drawn with
Zipf frequencies keeps something left to learn at every budget: the frequent facts are learned early, each
doubling of tokens brings rarer facts above the number of sightings it takes to memorize them.

The table (``data.long_tail``): ``facts`` facts, each a sentence from a fixed relation template with a
made-up subject and object (``The capital of Velkor is Dunmek.``); a subject belongs to one fact, so given
the subject and the relation the object is determined and learnable. Fact ``i`` (0-based rank) is drawn with
probability proportional to ``(i + 1) ** -zipf_exponent``. Documents of about ``document_bytes`` UTF-8 bytes
of drawn facts are interleaved with the corpus's documents so that the synthetic share of all the text is
``fraction`` (in bytes, to within one synthetic document). Everything is a pure function of the settings and
``seed``: the same settings give the same table, the same documents and the same interleaving. The held-out
split then takes its share of synthetic documents like of any other (by a hash of the text), so the
held-out pre-training loss is measured on the same mixture.

Off by default (``fraction: 0``): the corpus, its tokens and every key are then what they were without it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

SYLLABLES = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"] + ["ar", "el", "in", "or", "un", "ash", "eth", "ol"]
"""Pieces of made-up names: 78 syllables, 2-3 per name (~470k names), pronounceable bytes for a byte model."""

RELATIONS = (
    "The capital of {s} is {o}.",
    "{s} was born in the town of {o}.",
    "The river {s} flows into the lake {o}.",
    "The author of the book {s} is {o}.",
    "The mountain {s} stands above the valley of {o}.",
    "{s} is the old name of the city {o}.",
    "The ship {s} was built in the port of {o}.",
    "The festival of {s} is held in {o}.",
)
"""Relation templates; fact ``i`` uses template ``i % len(RELATIONS)``."""


@dataclass
class LongTailConfig:
    """A Zipf-distributed table of synthetic facts mixed into the pre-training text (off by default)."""

    fraction: float = 0.0
    """Share of the corpus text (UTF-8 bytes) that is synthetic facts, in [0, 0.9]; 0 (default) turns the mix off."""
    facts: int = 20_000
    """Facts in the table (>= 1); rarer facts take more tokens before they are seen often enough to learn."""
    zipf_exponent: float = 1.0
    """Fact of rank i (0-based) is drawn with probability proportional to (i + 1) ** -zipf_exponent (> 0)."""
    seed: int = 0
    """Seeds the table and the draws (not the pre-training seed: every pre-training seed sees the same text)."""
    document_bytes: int = 2_000
    """Target size of one synthetic document in UTF-8 bytes (>= 64); the mix is exact to one document."""


def long_tail_problems(config: LongTailConfig, prefix: str = "data.long_tail.") -> list[tuple[str, object, str]]:
    """Every invalid setting as ``(key, value, allowed)``, for :class:`overtrain.errors.SettingProblems`."""
    problems = []
    if not (isinstance(config.fraction, (int, float)) and 0 <= config.fraction <= 0.9):
        problems.append((f"{prefix}fraction", config.fraction, "a share in [0, 0.9], e.g. 0.25 (0 turns the mix off)"))
    if not (isinstance(config.facts, int) and config.facts >= 1):
        problems.append((f"{prefix}facts", config.facts, "a whole number of facts >= 1, e.g. 20000"))
    if not (isinstance(config.zipf_exponent, (int, float)) and np.isfinite(config.zipf_exponent) and config.zipf_exponent > 0):
        problems.append((f"{prefix}zipf_exponent", config.zipf_exponent, "a finite number > 0, e.g. 1.0"))
    if not (isinstance(config.seed, int) and config.seed >= 0):
        problems.append((f"{prefix}seed", config.seed, "a whole number >= 0"))
    if not (isinstance(config.document_bytes, int) and config.document_bytes >= 64):
        problems.append((f"{prefix}document_bytes", config.document_bytes, "a whole number of bytes >= 64, e.g. 2000"))
    return problems


def _made_up_names(count: int, rng: np.random.Generator) -> list[str]:
    """``count`` distinct capitalized names of 2-3 syllables, in draw order."""
    names: list[str] = []
    seen: set[str] = set()
    while len(names) < count:
        lengths = rng.integers(2, 4, size=count)
        pieces = rng.integers(0, len(SYLLABLES), size=(count, 3))
        for length, row in zip(lengths, pieces):
            name = "".join(SYLLABLES[index] for index in row[:length]).capitalize()
            if name not in seen:
                seen.add(name)
                names.append(name)
                if len(names) == count:
                    break
    return names


def fact_table(config: LongTailConfig) -> list[str]:
    """The facts as sentences, most frequent first (index = Zipf rank); subjects are all distinct."""
    rng = np.random.default_rng([config.seed, 0])
    names = _made_up_names(2 * config.facts, rng)
    subjects, objects = names[: config.facts], names[config.facts :]
    return [RELATIONS[index % len(RELATIONS)].format(s=subject, o=obj) for index, (subject, obj) in enumerate(zip(subjects, objects))]


def zipf_probabilities(facts: int, exponent: float) -> np.ndarray:
    """Shape (facts,): p_i proportional to (i + 1) ** -exponent, summing to 1."""
    weights = np.arange(1, facts + 1, dtype=np.float64) ** -float(exponent)
    return weights / weights.sum()


def synthetic_documents(config: LongTailConfig) -> Iterator[str]:
    """An endless, deterministic stream of fact documents of about ``document_bytes`` bytes each."""
    table = fact_table(config)
    sizes = np.array([len(sentence.encode("utf-8")) + 1 for sentence in table])  # + the separating space
    cumulative = np.cumsum(zipf_probabilities(config.facts, config.zipf_exponent))
    rng = np.random.default_rng([config.seed, 1])
    per_document = max(1, int(config.document_bytes / sizes.mean()))
    while True:
        # searchsorted on the cumulative probabilities: the same draws on every platform and numpy version
        ranks = np.minimum(np.searchsorted(cumulative, rng.random(per_document * 2), side="right"), config.facts - 1)
        sentences, size = [], 0
        for rank in ranks:
            sentences.append(table[rank])
            size += sizes[rank]
            if size >= config.document_bytes:
                break
        yield " ".join(sentences)


def mix_long_tail(documents: Iterable[str], config: LongTailConfig) -> Iterator[str]:
    """``documents`` with synthetic fact documents interleaved so that they make up ``config.fraction`` of
    all the bytes: after each corpus document, synthetic ones are emitted while the synthetic bytes lag
    behind ``fraction / (1 - fraction)`` of the corpus bytes so far. With ``fraction`` 0 the corpus is
    passed through untouched."""
    if config.fraction <= 0:
        yield from documents
        return
    ratio = config.fraction / (1 - config.fraction)
    synthetic = synthetic_documents(config)
    owed = 0.0  # synthetic bytes still due (negative: emitted ahead)
    for document in documents:
        yield document
        owed += ratio * len(document.encode("utf-8"))
        while owed > 0:
            extra = next(synthetic)
            owed -= len(extra.encode("utf-8"))
            yield extra
