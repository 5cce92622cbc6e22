"""``kjv-to-web``: rewrite a King James verse (1769 English) as the same verse of the World English Bible.

Source: the public-domain SWORD modules engKJV2006eb (KJV versification) and engWEB2015eb (NRSVA
versification) from Debian's ``sword-text-kjv`` and ``sword-text-web``, aligned by book, chapter and
verse. Chapters whose verse counts differ between the two versifications are skipped whole (3 John 1,
Revelation 12), as are verses that are empty in either module and pairs whose lengths differ by more
than 3x (a sign of a different verse division). The aligned pairs ship prepared in
``overtrain/task_data/kjv_web_verses.tsv.xz`` (built by ``scripts/build_task_data.py``).

Format: prompt ``"KJV: <verse>\\nModern:"``, completion ``" <WEB verse>"``.
Split: a chapter is held out when the sha256 of ``"Book.chapter"`` falls in the lowest 10%, so
neighbouring verses never straddle the split; the held-out order is fixed (canonical order).
"""

from __future__ import annotations

import functools
import lzma
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from overtrain.tasks.records import (
    LoadOptions,
    TaskExample,
    TaskSplits,
    is_heldout_key,
    make_splits,
    require_existing_path,
    task_data_file,
)
from overtrain.tasks.sword import VerseKey, find_module_dir, read_ztext_module

NAME = "kjv-to-web"
PREPARED_FILE = "kjv_web_verses.tsv.xz"
HELDOUT_FRACTION = 0.1
MAX_LENGTH_RATIO = 3.0


@dataclass(frozen=True)
class VersePair:
    """One verse in both translations."""

    book: str
    chapter: int
    verse: int
    kjv: str
    web: str


def align_verses(kjv: dict[VerseKey, str], web: dict[VerseKey, str]) -> list[VersePair]:
    """Pairs of the same verse, in KJV order, from chapters whose verse counts agree in both modules."""
    kjv_counts = Counter((book, chapter) for book, chapter, _ in kjv)
    web_counts = Counter((book, chapter) for book, chapter, _ in web)
    pairs = []
    for (book, chapter, verse), kjv_text in kjv.items():
        web_text = web.get((book, chapter, verse), "")
        if kjv_counts[book, chapter] != web_counts[book, chapter] or not kjv_text or not web_text:
            continue
        if max(len(kjv_text), len(web_text)) > MAX_LENGTH_RATIO * min(len(kjv_text), len(web_text)):
            continue
        pairs.append(VersePair(book, chapter, verse, kjv_text, web_text))
    return pairs


def read_sword_library(library: Path) -> list[VersePair]:
    """Aligned pairs from a SWORD library folder holding the engKJV* and engWEB* zText modules."""
    kjv = read_ztext_module(find_module_dir(library, "engkjv"))
    web = read_ztext_module(find_module_dir(library, "engweb"))
    return align_verses(kjv, web)


def _clean_field(text: str) -> str:
    return " ".join(text.replace("\t", " ").split())


def pairs_to_tsv(pairs: Iterable[VersePair]) -> str:
    """The prepared file's text: ``book, chapter, verse, kjv, web`` tab-separated, one verse a line."""
    lines = (f"{p.book}\t{p.chapter}\t{p.verse}\t{_clean_field(p.kjv)}\t{_clean_field(p.web)}\n" for p in pairs)
    return "".join(lines)


def read_prepared(path: Path) -> list[VersePair]:
    """Pairs from a prepared ``.tsv.xz`` (or plain ``.tsv``) file."""
    opener = lzma.open if path.suffix == ".xz" else open
    with opener(path, "rt", encoding="utf-8") as handle:
        rows = [line.rstrip("\n").split("\t") for line in handle if line.strip()]
    return [VersePair(book, int(chapter), int(verse), kjv, web) for book, chapter, verse, kjv, web in rows]


def pair_to_example(pair: VersePair) -> TaskExample:
    """The task's format for one verse pair."""
    return TaskExample(prompt=f"KJV: {pair.kjv}\nModern:", completion=f" {pair.web}")


def _source_path(options: LoadOptions) -> Path:
    if options.data_path is None:
        return task_data_file(PREPARED_FILE)
    return require_existing_path(
        options.data_path, NAME, "a kjv_web_verses.tsv(.xz) file or a SWORD library folder (e.g. /usr/share/sword)"
    )


@functools.lru_cache(maxsize=2)
def _example_pools(path: Path, modified_ns: int) -> tuple[tuple[TaskExample, ...], tuple[TaskExample, ...]]:
    """(train, held-out in canonical order) examples of one source; cached while the source is unchanged."""
    pairs = read_sword_library(path) if path.is_dir() else read_prepared(path)
    heldout_chapters = {
        chapter for chapter in {f"{p.book}.{p.chapter}" for p in pairs} if is_heldout_key(chapter, HELDOUT_FRACTION)
    }
    train, heldout = [], []
    for pair in pairs:
        (heldout if f"{pair.book}.{pair.chapter}" in heldout_chapters else train).append(pair_to_example(pair))
    return tuple(train), tuple(heldout)


def load(options: LoadOptions) -> TaskSplits:
    """The ``kjv-to-web`` task."""
    path = _source_path(options)
    train, heldout = _example_pools(path, path.stat().st_mtime_ns)
    description = f"KJV -> WEB verse pairs ({path}); held out: whole chapters by sha256 of Book.chapter (10%)"
    return make_splits(NAME, description, str(path), train, heldout, options)
