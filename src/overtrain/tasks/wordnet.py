"""``wordnet-class``: name the WordNet lexicographer class (one of 45) of a word sense from its gloss.

Source: WordNet 3.0 (Princeton University; Debian ``wordnet-base``), files ``data.{noun,verb,adj,adv}``:
each synset line holds its offset, its lexicographer file number (field 2) and its words; the gloss
follows ``|``. A prepared, capped copy ships in ``overtrain/task_data/wordnet_glosses.tsv.xz``.

Format: prompt ``"Word: <first word>\\nDefinition: <gloss>\\nCategory:"``, completion ``" noun.animal"``;
``choices`` are all 45 class names (each with a leading space), ``label`` the right one's index.
Split: a synset is held out when the sha256 of ``"<pos>.<offset>"`` falls in the lowest 10%. Per class
the held-out split keeps the 50 lowest-hash synsets and the train split the 1,000 lowest-hash others,
so classes are capped (the big noun classes) rather than proportional; the held-out order interleaves
the classes, so any prefix (``max_heldout``) is balanced.
"""

from __future__ import annotations

import functools
import lzma
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from overtrain.errors import OvertrainError
from overtrain.tasks.records import (
    LoadOptions,
    TaskExample,
    TaskSplits,
    interleave_by_label,
    is_heldout_key,
    make_splits,
    require_existing_path,
    stable_fraction,
    task_data_file,
)

NAME = "wordnet-class"
PREPARED_FILE = "wordnet_glosses.tsv.xz"
HELDOUT_FRACTION = 0.1
HELDOUT_PER_CLASS = 50
TRAIN_PER_CLASS = 1000
DATA_FILES = ("data.noun", "data.verb", "data.adj", "data.adv")

# Index = lexicographer file number, as in WordNet's lexnames file.
# fmt: off
LEXICOGRAPHER_CLASSES = (
    "adj.all", "adj.pert", "adv.all", "noun.Tops", "noun.act", "noun.animal", "noun.artifact",
    "noun.attribute", "noun.body", "noun.cognition", "noun.communication", "noun.event", "noun.feeling",
    "noun.food", "noun.group", "noun.location", "noun.motive", "noun.object", "noun.person",
    "noun.phenomenon", "noun.plant", "noun.possession", "noun.process", "noun.quantity", "noun.relation",
    "noun.shape", "noun.state", "noun.substance", "noun.time", "verb.body", "verb.change", "verb.cognition",
    "verb.communication", "verb.competition", "verb.consumption", "verb.contact", "verb.creation",
    "verb.emotion", "verb.motion", "verb.perception", "verb.possession", "verb.social", "verb.stative",
    "verb.weather", "adj.ppl",
)
# fmt: on
CHOICES = tuple(f" {name}" for name in LEXICOGRAPHER_CLASSES)
_ADJECTIVE_MARKER = re.compile(r"\((a|ip|p)\)$")


@dataclass(frozen=True)
class Synset:
    """One WordNet synset: its id, lexicographer class number, first word and gloss."""

    key: str  # "<pos file>.<offset>", e.g. "noun.02084071"
    class_number: int
    word: str
    gloss: str


def parse_data_line(line: str, pos: str) -> Synset | None:
    """A synset from one ``data.<pos>`` line; None for the licence header lines (they start with spaces)."""
    if line.startswith("  ") or " | " not in line:
        return None
    head, gloss = line.split(" | ", 1)
    fields = head.split()
    word = _ADJECTIVE_MARKER.sub("", fields[4]).replace("_", " ")
    return Synset(key=f"{pos}.{fields[0]}", class_number=int(fields[1]), word=word, gloss=gloss.strip())


def read_wordnet_dict(folder: Path) -> list[Synset]:
    """Every synset of a WordNet dict folder (``data.noun`` ... ``data.adv``)."""
    missing = [name for name in DATA_FILES if not (Path(folder) / name).is_file()]
    if missing:
        raise OvertrainError(
            f"{folder} is not a WordNet 3.0 dict folder: {', '.join(missing)} missing.",
            "point at a folder like /usr/share/wordnet (Debian package wordnet-base).",
        )
    synsets = []
    for name in DATA_FILES:
        with open(Path(folder) / name, encoding="utf-8") as handle:
            synsets.extend(s for line in handle if (s := parse_data_line(line, name.split(".")[1])))
    return synsets


def capped_split(synsets: Iterable[Synset]) -> tuple[list[Synset], list[Synset]]:
    """(train, held-out): the hash rule, then the lowest-hash ``*_PER_CLASS`` synsets of each class."""
    ordered = sorted(synsets, key=lambda synset: stable_fraction(synset.key))
    train, heldout, seen = [], [], {}
    for synset in ordered:
        is_heldout = is_heldout_key(synset.key, HELDOUT_FRACTION)
        cap = HELDOUT_PER_CLASS if is_heldout else TRAIN_PER_CLASS
        count_key = (synset.class_number, is_heldout)
        if seen.get(count_key, 0) < cap:
            seen[count_key] = seen.get(count_key, 0) + 1
            (heldout if is_heldout else train).append(synset)
    return train, heldout


def synsets_to_tsv(synsets: Iterable[Synset]) -> str:
    """The prepared file's text: ``key, class number, word, gloss`` tab-separated, one synset a line."""
    return "".join(f"{s.key}\t{s.class_number}\t{s.word}\t{' '.join(s.gloss.split())}\n" for s in synsets)


def read_prepared(path: Path) -> list[Synset]:
    """Synsets from a prepared ``.tsv.xz`` (or plain ``.tsv``) file."""
    opener = lzma.open if path.suffix == ".xz" else open
    with opener(path, "rt", encoding="utf-8") as handle:
        rows = [line.rstrip("\n").split("\t") for line in handle if line.strip()]
    return [Synset(key, int(number), word, gloss) for key, number, word, gloss in rows]


def synset_to_example(synset: Synset) -> TaskExample:
    """The task's format for one synset."""
    return TaskExample(
        prompt=f"Word: {synset.word}\nDefinition: {synset.gloss}\nCategory:",
        completion=CHOICES[synset.class_number],
        choices=CHOICES,
        label=synset.class_number,
    )


def _source_path(options: LoadOptions) -> Path:
    if options.data_path is None:
        return task_data_file(PREPARED_FILE)
    return require_existing_path(
        options.data_path, NAME, "a wordnet_glosses.tsv(.xz) file or a WordNet dict folder (e.g. /usr/share/wordnet)"
    )


@functools.lru_cache(maxsize=2)
def _example_pools(path: Path, modified_ns: int) -> tuple[tuple[TaskExample, ...], tuple[TaskExample, ...]]:
    """(train, held-out in its fixed order) examples of one source; cached while the source is unchanged."""
    synsets = read_wordnet_dict(path) if path.is_dir() else read_prepared(path)
    train, heldout = capped_split(synsets)
    return tuple(map(synset_to_example, train)), tuple(interleave_by_label(map(synset_to_example, heldout)))


def load(options: LoadOptions) -> TaskSplits:
    """The ``wordnet-class`` task."""
    path = _source_path(options)
    train, heldout = _example_pools(path, path.stat().st_mtime_ns)
    description = (
        f"WordNet 3.0 gloss -> lexicographer class, 45 classes ({path}); held out: sha256 of synset id "
        f"(10%), capped at {HELDOUT_PER_CLASS} held-out / {TRAIN_PER_CLASS} train per class"
    )
    return make_splits(NAME, description, str(path), train, heldout, options)
