"""Read the verses of a SWORD zText Bible module (Debian ``sword-text-*``) without libsword.

Format, per testament (``ot``/``nt``): ``.bzs`` is an index of 12-byte blocks (u32 offset, u32 compressed
size, u32 size) into zlib streams in ``.bzz``; ``.bzv`` is an index of 10-byte slots (u32 block, u32 offset
in the uncompressed block, u16 size), one slot per module header, testament header, book introduction,
chapter heading and verse, in the order of the module's versification.

The versification tables are not needed: every chapter heading slot carries an OSIS
``<chapter osisID="Book.N" sID=.../>`` start tag, so the slots between two headings are that chapter's
verses 1..n (less the next book's introduction slot when the next heading starts a new book).
"""

from __future__ import annotations

import html
import re
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

from overtrain.errors import OvertrainError

VerseKey = tuple[str, int, int]  # (OSIS book, chapter, verse), e.g. ("Gen", 1, 1)

_CHAPTER_START = re.compile(r'<chapter\b[^>]*?\bosisID="([^".]+)\.(\d+)"[^>]*?\bsID=')
_CHAPTER_START_SID_FIRST = re.compile(r'<chapter\b[^>]*?\bsID=[^>]*?\bosisID="([^".]+)\.(\d+)"')
_BOOK_START = re.compile(r'<div\b[^>]*?\bsID=[^>]*?\btype="book"|<div\b[^>]*?\btype="book"[^>]*?\bsID=')
_CHAPTER_END = re.compile(r"<chapter\b[^>]*?\beID=")
_DROPPED_ELEMENTS = re.compile(r"<(note|title|speaker)\b[^>]*?(?<!/)>.*?</\1>", re.DOTALL)
_ANY_TAG = re.compile(r"<[^>]+>")
_SPACES = re.compile(r"\s+")
_SPACE_BEFORE_PUNCTUATION = re.compile(r" +([,.;:!?])")


def osis_to_text(osis: str) -> str:
    """Plain verse text: notes and headings removed with their content, other markup stripped.

    Whatever follows a chapter end tag (back matter such as a glossary) is not verse text and is cut.
    """
    chapter_end = _CHAPTER_END.search(osis)
    verse_osis = osis[: chapter_end.start()] if chapter_end else osis
    without_notes = _DROPPED_ELEMENTS.sub(" ", verse_osis)
    text = _SPACES.sub(" ", html.unescape(_ANY_TAG.sub("", without_notes))).strip()
    return _SPACE_BEFORE_PUNCTUATION.sub(r"\1", text)  # where a removed note sat before punctuation


def _read_slots(prefix: Path) -> list[bytes]:
    """The raw OSIS bytes of every slot of one testament (``prefix`` is e.g. ``module/ot``)."""
    index = prefix.with_suffix(".bzs").read_bytes()
    compressed = prefix.with_suffix(".bzz").read_bytes()
    verse_index = prefix.with_suffix(".bzv").read_bytes()
    blocks: dict[int, bytes] = {}
    slots = []
    for start in range(0, len(verse_index) - 9, 10):
        block_number, offset, size = struct.unpack("<IIH", verse_index[start : start + 10])
        if size == 0:
            slots.append(b"")
            continue
        if block_number not in blocks:
            block_offset, block_size, _ = struct.unpack("<III", index[12 * block_number : 12 * block_number + 12])
            blocks[block_number] = zlib.decompress(compressed[block_offset : block_offset + block_size])
        slots.append(blocks[block_number][offset : offset + size])
    return slots


def _chapter_heading(osis: str) -> tuple[str, int] | None:
    """(book, chapter) when the slot is a chapter heading: one chapter start tag, no book start.

    The test matters: some modules pack a whole extra book (with its book and chapter tags) into the
    next book's introduction slot, which must not be taken for a heading.
    """
    starts = _CHAPTER_START.findall(osis) or _CHAPTER_START_SID_FIRST.findall(osis)
    if len(starts) != 1 or _BOOK_START.search(osis):
        return None
    book, chapter = starts[0]
    return book, int(chapter)


def _testament_verses(slots: list[str]) -> Iterator[tuple[VerseKey, str]]:
    """Yield ((book, chapter, verse), osis) for one testament's slots, using the chapter headings."""
    headings = [(position, heading) for position, osis in enumerate(slots) if (heading := _chapter_heading(osis))]
    for number, (position, (book, chapter)) in enumerate(headings):
        if number + 1 < len(headings):
            next_position, (next_book, _) = headings[number + 1]
            end = next_position - 1 if next_book != book else next_position  # drop the book intro slot
        else:
            end = len(slots)
        for verse, slot in enumerate(range(position + 1, end), start=1):
            yield (book, chapter, verse), slots[slot]


def read_ztext_module(module_dir: Path) -> dict[VerseKey, str]:
    """Every verse of a zText module folder (with ``ot.*``/``nt.*`` files), as plain text; empty verses too."""
    module_dir = Path(module_dir)
    prefixes = [module_dir / name for name in ("ot", "nt") if (module_dir / f"{name}.bzv").is_file()]
    if not prefixes:
        raise OvertrainError(
            f"{module_dir} is not a SWORD zText module folder (no ot.bzv or nt.bzv in it).",
            "point at a folder like /usr/share/sword/modules/texts/ztext/engkjv2006eb "
            "(Debian package sword-text-kjv / sword-text-web).",
        )
    verses: dict[VerseKey, str] = {}
    for prefix in prefixes:
        slots = [raw.decode("utf-8", errors="replace") for raw in _read_slots(prefix)]
        for key, osis in _testament_verses(slots):
            verses[key] = osis_to_text(osis)
    return verses


def find_module_dir(library: Path, name_prefix: str) -> Path:
    """The zText module folder under a SWORD library whose name starts with ``name_prefix`` (any case)."""
    for verse_index in sorted(Path(library).rglob("*.bzv")):
        if verse_index.parent.name.lower().startswith(name_prefix.lower()):
            return verse_index.parent
    raise OvertrainError(
        f"no SWORD module named {name_prefix}* under {library}.",
        "install or unpack the Debian packages sword-text-kjv and sword-text-web "
        "(`apt-get download NAME && dpkg -x NAME*.deb DIR`) and point at DIR/usr/share/sword.",
    )
