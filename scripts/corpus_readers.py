"""Readers for the binary and archive formats the default corpus is built from.

Each reader turns one on-disk format into plain Python strings and nothing more: markup stays in, it is
removed by ``corpus_cleaners``. Used only by ``scripts/build_corpus.py``.

Formats:
- R lazy-load databases (``Rdata.rdb``): records of [u32 big-endian length][zlib stream] holding an R XDR
  serialisation; a character vector is a STRSXP header followed by one CHARSXP per element.
- SWORD zText/zCom modules: ``ot.bzs`` (12-byte block records: offset, compressed size, size) into zlib
  blocks in ``ot.bzz``, and ``ot.bzv`` (one record per verse slot: block, offset in block, size).
- dictd databases: ``.dict.dz`` (gzip-compatible dictzip) plus a ``.index`` of headword, base64 offset,
  base64 length.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

R_STRSXP = 16
R_CHARSXP = 9
R_NA_STRING_LENGTH = -1


def read_r_character_vectors(rdb_path: Path) -> list[list[str]]:
    """All character vectors stored in an R ``.rdb`` lazy-load database, in file order."""
    raw = rdb_path.read_bytes()
    vectors: list[list[str]] = []
    position = 0
    while position < len(raw):
        decompressor = zlib.decompressobj()
        serialised = decompressor.decompress(raw[position + 4 :])
        consumed = len(raw) - position - 4 - len(decompressor.unused_data)
        vectors.append(_parse_r_character_vector(serialised))
        position += 4 + consumed
    return vectors


def _parse_r_character_vector(serialised: bytes) -> list[str]:
    """Decode an XDR serialisation (format 3) whose top object is a character vector."""
    if serialised[:2] != b"X\n":
        raise ValueError("not an XDR R serialisation")
    native_encoding_length = struct.unpack(">i", serialised[14:18])[0]
    position = 18 + native_encoding_length
    flags, length = struct.unpack(">ii", serialised[position : position + 8])
    if flags & 0xFF != R_STRSXP:
        raise ValueError(f"top object has R type {flags & 0xFF}, expected a character vector")
    position += 8
    elements: list[str] = []
    for _ in range(length):
        flags, byte_count = struct.unpack(">ii", serialised[position : position + 8])
        position += 8
        if flags & 0xFF != R_CHARSXP:
            raise ValueError(f"element has R type {flags & 0xFF}, expected a string")
        if byte_count == R_NA_STRING_LENGTH:
            elements.append("")
            continue
        elements.append(serialised[position : position + byte_count].decode("utf-8", "replace"))
        position += byte_count
    return elements


@dataclass(frozen=True)
class SwordModule:
    """Where a SWORD module's files are and how its verse index is laid out."""

    name: str
    data_dir: Path
    file_prefix: str  # "bz" or "cz": ot.bzs/ot.bzz/ot.bzv or ot.czs/...
    index_record_bytes: int  # 10 for zText/zCom (u16 sizes), 12 for zText4/zCom4 (u32 sizes), per conf


def read_sword_conf(conf_path: Path, modules_root: Path) -> SwordModule:
    """Parse the ``mods.d/*.conf`` entries that say where the data is and which driver reads it."""
    settings: dict[str, str] = {}
    for line in conf_path.read_text(encoding="utf-8", errors="replace").splitlines():
        key, separator, value = line.partition("=")
        if separator and key.strip() and key.strip() not in settings:
            settings[key.strip()] = value.strip()
    name = conf_path.stem
    data_dir = modules_root / settings["DataPath"].lstrip("./")
    driver = settings["ModDrv"]
    index_record_bytes = 12 if driver.endswith("4") else 10
    prefix = "bz" if (data_dir / "ot.bzs").exists() or (data_dir / "nt.bzs").exists() else "cz"
    return SwordModule(name, data_dir, prefix, index_record_bytes)


def read_sword_testaments(module: SwordModule) -> list[list[str]]:
    """The entries of each testament of a module (OT, then NT), in verse-index order.

    Entries are verse-slot texts (a verse, or a commentary on a verse range) with their OSIS markup.
    Linked slots that point at an entry already read are skipped.
    """
    testaments: list[list[str]] = []
    for testament in ("ot", "nt"):
        index_path = module.data_dir / f"{testament}.{module.file_prefix}v"
        if index_path.exists():
            testaments.append(_read_testament_entries(module, testament))
    return testaments


def _read_testament_entries(module: SwordModule, testament: str) -> list[str]:
    stem = module.data_dir / testament
    block_records = _unpack_records(Path(f"{stem}.{module.file_prefix}s").read_bytes(), "<III")
    compressed = Path(f"{stem}.{module.file_prefix}z").read_bytes()
    verse_records = _read_verse_index(Path(f"{stem}.{module.file_prefix}v"), block_records, module)
    block_texts: dict[int, bytes] = {}
    entries: list[str] = []
    seen: set[tuple[int, int]] = set()
    for block_number, start, size in verse_records:
        if size == 0 or (block_number, start) in seen:
            continue
        seen.add((block_number, start))
        if block_number not in block_texts:
            offset, compressed_size, _ = block_records[block_number]
            block_texts[block_number] = zlib.decompress(compressed[offset : offset + compressed_size])
        entries.append(block_texts[block_number][start : start + size].decode("utf-8", "replace"))
    return entries


def _read_verse_index(
    index_path: Path, block_records: list[tuple[int, ...]], module: SwordModule
) -> list[tuple[int, ...]]:
    """Verse-slot records, trying the conf's record size first (some confs name the wrong driver)."""
    raw = index_path.read_bytes()
    other_size = 22 - module.index_record_bytes
    for record_bytes in (module.index_record_bytes, other_size):
        if len(raw) % record_bytes:
            continue
        records = _unpack_records(raw, "<IIH" if record_bytes == 10 else "<III")
        if all(_fits_in_block(record, block_records) for record in records):
            return records
    raise ValueError(f"{index_path}: verse index fits neither 10- nor 12-byte records")


def _fits_in_block(record: tuple[int, ...], block_records: list[tuple[int, ...]]) -> bool:
    block_number, start, size = record
    if size == 0:
        return True
    return block_number < len(block_records) and start + size <= block_records[block_number][2]


def _unpack_records(raw: bytes, record_format: str) -> list[tuple[int, ...]]:
    size = struct.calcsize(record_format)
    return [struct.unpack(record_format, raw[i : i + size]) for i in range(0, len(raw) - size + 1, size)]


BASE64_DIGITS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def _decode_dictd_number(encoded: str) -> int:
    value = 0
    for character in encoded:
        value = value * 64 + BASE64_DIGITS.index(character)
    return value


def read_dictd_entries(dict_path: Path, index_path: Path) -> list[str]:
    """The entries of a dictd database in file order, without its ``00-database-*`` metadata."""
    text_bytes = gzip.decompress(dict_path.read_bytes())
    spans: set[tuple[int, int]] = set()
    for line in index_path.read_text(encoding="utf-8", errors="replace").splitlines():
        fields = line.split("\t")
        if len(fields) < 3 or fields[0].startswith(("00-database", "00database")):
            continue
        spans.add((_decode_dictd_number(fields[1]), _decode_dictd_number(fields[2])))
    return [text_bytes[start : start + length].decode("utf-8", "replace") for start, length in sorted(spans)]
