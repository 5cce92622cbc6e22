"""Markup removal and document packing for the default corpus (used by ``scripts/build_corpus.py``).

Every function takes and returns plain ``str``; none touches files. Paragraphs are separated by one blank
line. Prose that was hard-wrapped at ~70 columns is reflowed to one line per paragraph; verse, drama and
code keep their line breaks.
"""

from __future__ import annotations

import html
import re
import textwrap
import unicodedata

PARAGRAPH_BREAK = "\n\n"


def normalise_whitespace(text: str) -> str:
    """Unix newlines, no tabs or odd spaces, no trailing blanks, at most one blank line in a row."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\ufeff", "")
    text = text.replace("\t", "    ").replace("\u00a0", " ").replace("\u2009", " ")
    lines = [line.rstrip() for line in text.split("\n")]
    return re.sub(r"\n{3,}", PARAGRAPH_BREAK, "\n".join(lines)).strip()


def paragraphs_of(text: str) -> list[str]:
    """The non-empty blank-line-separated paragraphs of ``text``."""
    return [paragraph.strip("\n") for paragraph in re.split(r"\n\s*\n", text) if paragraph.strip()]


def reflow_paragraph(paragraph: str) -> str:
    """Join a hard-wrapped paragraph into one line with single spaces."""
    return re.sub(r"\s+", " ", paragraph).strip()


def reflow_prose(text: str) -> str:
    """Reflow every paragraph of hard-wrapped prose."""
    return PARAGRAPH_BREAK.join(reflow_paragraph(p) for p in paragraphs_of(normalise_whitespace(text)))


def strip_verse_layout(text: str) -> str:
    """Drop indentation, Gutenberg dot leaders and right-margin line numbers; keep the line breaks."""
    lines = []
    for line in normalise_whitespace(text).split("\n"):
        line = re.sub(r"^\.{3,}", "", line.strip())
        line = re.sub(r"\s{3,}\d{1,4}$", "", line)
        lines.append(re.sub(r" {2,}", " ", line))
    return normalise_whitespace("\n".join(lines))


def strip_gutenberg_boilerplate(text: str) -> str:
    """Keep only what lies between Project Gutenberg's START and END markers, when they are present."""
    start = re.search(r"^\*{3} ?START OF (THE|THIS) PROJECT GUTENBERG.*$", text, re.M | re.I)
    if start:
        text = text[start.end() :]
    end = re.search(r"^(\*{3} ?END OF (THE|THIS) PROJECT GUTENBERG|End of (the )?Project Gutenberg)", text, re.M | re.I)
    return html.unescape(text[: end.start()] if end else text)


OSIS_DROPPED_ELEMENTS = re.compile(r"<note\b[^>]*?(/>|>.*?</note>)", re.S)
OSIS_PARAGRAPH_TAGS = re.compile(r"<(div|p|lg|title|list|table|/p|/lg|/title|/list|/table)\b[^>]*>")
OSIS_LINE_TAGS = re.compile(r"<(l|lb|/l|item|/item|row|/row)\b[^>]*>")


def osis_to_text(osis: str) -> str:
    """Plain text of an OSIS fragment: notes dropped, headings and paragraphs kept as paragraphs."""
    text = OSIS_DROPPED_ELEMENTS.sub("\x00", osis)  # a note often stands between two words: keep a space
    text = re.sub(r"\x00+(?=[\s,.;:!?’”)\]]|$)", "", text).replace("\x00", " ")
    text = OSIS_PARAGRAPH_TAGS.sub("\n\n", text)
    text = OSIS_LINE_TAGS.sub("\n", text)
    text = re.sub(r"<cell\b[^>]*>", " ", text)
    text = html.unescape(re.sub(r"<[^>]*>", "", text))
    text = re.sub(r"[ \t]+", " ", text)
    return normalise_whitespace(re.sub(r" *\n *", "\n", text))


POD_FORMATTING_DOUBLE = re.compile(r"[A-Z]<{2,}\s+(.*?)\s+>{2,}", re.S)
POD_FORMATTING_SINGLE = re.compile(r"([A-Z])<([^<>]*)>")
POD_ESCAPES = {"lt": "<", "gt": ">", "verbar": "|", "sol": "/", "quot": '"', "amp": "&"}


def _pod_format_code(match: re.Match[str]) -> str:
    code, body = match.group(1), match.group(2)
    if code in "XZ":
        return ""
    if code == "E":
        return POD_ESCAPES.get(body, html.unescape(f"&{body};"))
    if code == "L":
        body = body.split("|", 1)[0] if "|" in body else body.replace('/"', " ").strip('"/')
    return body


def pod_inline_to_text(text: str) -> str:
    """Remove POD formatting codes (``B<bold>``, ``C<< code >>``, ``L<text|target>``, ``E<gt>``)."""
    text = POD_FORMATTING_DOUBLE.sub(lambda match: match.group(1), text)
    previous = None
    while previous != text:
        previous, text = text, POD_FORMATTING_SINGLE.sub(_pod_format_code, text)
    return text


def pod_to_text(pod: str) -> str:
    """Plain text of a POD document: headings and items as lines, prose reflowed, code kept verbatim."""
    output: list[str] = []
    skipping_block = False
    for paragraph in paragraphs_of(normalise_whitespace(pod)):
        command = re.match(r"^=(\w+)\s*(.*)", paragraph, re.S)
        if command:
            name, argument = command.group(1), command.group(2)
            skipping_block = name == "begin" or (skipping_block and name != "end")
            if name.startswith("head") or name == "item":
                output.append(reflow_paragraph(pod_inline_to_text(argument)).lstrip("* ") or "")
        elif skipping_block:
            continue
        elif paragraph[:1].isspace():
            output.append(textwrap.dedent(paragraph))
        else:
            output.append(reflow_paragraph(pod_inline_to_text(paragraph)))
    return PARAGRAPH_BREAK.join(part for part in output if part.strip())


RST_KEPT_DIRECTIVES = {"note", "warning", "important", "tip", "hint", "attention", "caution", "code-block", "code"}
RST_ADORNMENT_LINE = re.compile(r"^\s*([=\-~^\"'`#*+:._])\1{3,}\s*$")
RST_TABLE_RULE = re.compile(r"^\s*[+|][-=+| ]*[+|]\s*$|^\s*=[= ]+=\s*$")
RST_ROLE = re.compile(r":[\w:+.-]+:`([^`]*)`")
RST_TARGETED_TEXT = re.compile(r"`([^`<]*?)\s*<[^`>]*>`_{1,2}")


def rst_inline_to_text(text: str) -> str:
    """Remove reStructuredText roles, link targets and inline literal/strong markup."""
    text = RST_ROLE.sub(lambda match: re.sub(r"\s*<[^>]*>$", "", match.group(1)).lstrip("~!"), text)
    text = RST_TARGETED_TEXT.sub(lambda match: match.group(1), text)
    text = re.sub(r"\s*\[#?\w*\]_", "", text)
    text = re.sub(r"``(.+?)``", r"\1", text)
    text = re.sub(r"`([^`]+)`_{0,2}", r"\1", text)
    return re.sub(r"\*\*(\S.*?\S|\S)\*\*", r"\1", text)


def _drop_rst_directives(lines: list[str]) -> list[str]:
    """Remove directive and comment lines; keep the bodies of admonitions and code blocks, dedented."""
    kept: list[str] = []
    skip_indent: int | None = None
    for line in lines:
        indent = len(line) - len(line.lstrip())
        if skip_indent is not None and (not line.strip() or indent > skip_indent):
            continue
        skip_indent = None
        directive = re.match(r"^(\s*)\.\.\s+(?:([\w:-]+)::)?", line)
        if directive:
            name = (directive.group(2) or "").split(":")[-1]
            if name not in RST_KEPT_DIRECTIVES:
                skip_indent = indent
            continue
        kept.append(line)
    return kept


def rst_to_text(rst: str) -> str:
    """Plain text of a reStructuredText document (Linux kernel documentation style)."""
    lines = _drop_rst_directives(normalise_whitespace(rst).split("\n"))
    lines = [line for line in lines if not RST_ADORNMENT_LINE.match(line) and not RST_TABLE_RULE.match(line)]
    output = []
    for paragraph in paragraphs_of("\n".join(lines)):
        paragraph = rst_inline_to_text(textwrap.dedent(paragraph))
        if paragraph.endswith("::"):
            paragraph = paragraph[:-1].rstrip(":") + ":" if paragraph.strip() != "::" else ""
        is_prose = not paragraph[:1].isspace() and not re.match(r"^([-*+|#]|\d+\.|\S+\s*\n)", paragraph)
        output.append(reflow_paragraph(paragraph) if is_prose and "\n " not in paragraph else paragraph)
    return PARAGRAPH_BREAK.join(part for part in output if part.strip())


GCIDE_KEPT_SOURCES = re.compile(r"^\s*\[(1913 Webster|Webster 1913 Suppl\.)\].*$", re.M)
GCIDE_INLINE_SOURCE = re.compile(r"\s*\[(1913 Webster|Webster 1913 Suppl\.)\]")
GCIDE_ANY_SOURCE = re.compile(r"\[(WordNet[^\]]*|PJC|[^\]]*\+PJC|Century Dict\.[^\]]*|RH|JS|MW[^\]]*|NRT|DNA)\]")
GCIDE_NAMED_CHARACTERS = {
    "ae": "æ", "AE": "Æ", "oe": "œ", "OE": "Œ", "eth": "ð", "thorn": "þ", "deg": "°", "sect": "§",
    "root": "√", "imac": "ī", "aum": "ä", "ng": "ng", "th": "th", "asl": "a", "add": "a", "udd": "u",
    "cced": "ç", ",c": "ç", "frac12": "½", "frac14": "¼", "frac34": "¾", "pound": "£", "cent": "¢",
}
GCIDE_DIACRITIC_PREFIXES = {"'": "\u0301", "`": "\u0300", "=": "\u0304", '"': "\u0308", "~": "\u0303", "^": "\u0302"}
GCIDE_CHARACTER = re.compile(r"\[([=^~.`'\",-]?)([a-zA-Z]{1,6})(\^?)\]")


def _gcide_character(match: re.Match[str]) -> str:
    prefix, letters, breve = match.groups()
    if prefix + letters in GCIDE_NAMED_CHARACTERS:
        return GCIDE_NAMED_CHARACTERS[prefix + letters]
    if not prefix and not breve:
        return match.group(0)  # an ordinary bracketed label such as [Obs]
    mark = GCIDE_DIACRITIC_PREFIXES.get(prefix, "") + ("\u0306" if breve else "")
    return unicodedata.normalize("NFC", letters[0] + mark + letters[1:])


def is_webster_1913_entry(entry: str) -> bool:
    """True for a GCIDE entry written wholly from Webster's 1913 dictionary (no WordNet or modern text)."""
    return bool(GCIDE_KEPT_SOURCES.search(entry)) and not GCIDE_ANY_SOURCE.search(entry)


def gcide_entry_to_text(entry: str) -> str:
    """A Webster 1913 entry as prose: pronunciation and source tags dropped, senses reflowed."""
    text = GCIDE_INLINE_SOURCE.sub("", GCIDE_KEPT_SOURCES.sub("", entry))
    text = re.sub(r"\\[^\\\n]*\\", "", text)
    text = GCIDE_CHARACTER.sub(_gcide_character, text.replace("{", "").replace("}", ""))
    text = re.sub(r"\s+([,.;])", r"\1", text)
    return PARAGRAPH_BREAK.join(reflow_paragraph(p) for p in paragraphs_of(normalise_whitespace(text)))


def jargon_file_to_text(jargon: str) -> str:
    """The Jargon File without its tables of contents, box rules and ``{cross-reference}`` braces."""
    start = jargon.find("Welcome to the Jargon File", jargon.find("Welcome to the Jargon File") + 1)
    paragraphs = paragraphs_of(normalise_whitespace(jargon[max(start, 0) :]))
    kept: list[str] = []
    for index, paragraph in enumerate(paragraphs):
        window = paragraphs[max(index - 2, 0) : index + 3]
        is_contents_list = paragraph.strip() == "Table of Contents" or (
            "\n" not in paragraph and len(paragraph) < 60 and all("\n" not in p and len(p) < 60 for p in window)
        )
        if is_contents_list or re.fullmatch(r"\s*[═─━=\-]+\s*", paragraph):
            continue
        paragraph = re.sub(r"^\s*:(.+?):", r"\1:", paragraph)
        kept.append(reflow_paragraph(paragraph.replace("{", "").replace("}", "")))
    return PARAGRAPH_BREAK.join(kept)


def split_at_headings(text: str, heading_pattern: str) -> list[str]:
    """Cut ``text`` before every line matching ``heading_pattern``; the first piece is any preamble."""
    starts = [match.start() for match in re.finditer(heading_pattern, text, re.M)]
    bounds = [0, *[start for start in starts if start > 0], len(text)]
    return [text[a:b].strip() for a, b in zip(bounds, bounds[1:]) if text[a:b].strip()]


def utf8_bytes(text: str) -> int:
    return len(text.encode("utf-8"))


def split_long_paragraph(paragraph: str, max_bytes: int) -> list[str]:
    """Cut a paragraph longer than ``max_bytes`` (a long stretch of verse) at line breaks."""
    if utf8_bytes(paragraph) <= max_bytes:
        return [paragraph]
    pieces: list[str] = []
    current: list[str] = []
    current_bytes = 0
    for line in paragraph.split("\n"):
        line_bytes = utf8_bytes(line) + 1
        if current and current_bytes + line_bytes > max_bytes:
            pieces.append("\n".join(current))
            current, current_bytes = [], 0
        current.append(line)
        current_bytes += line_bytes
    return [*pieces, "\n".join(current)] if current else pieces


def pack_paragraphs(paragraphs: list[str], max_bytes: int) -> list[str]:
    """Greedily group consecutive paragraphs into chunks of at most ``max_bytes`` bytes."""
    chunks: list[str] = []
    current: list[str] = []
    current_bytes = 0
    for paragraph in (piece for p in paragraphs for piece in split_long_paragraph(p, max_bytes)):
        paragraph_bytes = utf8_bytes(paragraph) + 2
        if current and current_bytes + paragraph_bytes > max_bytes:
            chunks.append(PARAGRAPH_BREAK.join(current))
            current, current_bytes = [], 0
        current.append(paragraph)
        current_bytes += paragraph_bytes
    if current:
        chunks.append(PARAGRAPH_BREAK.join(current))
    return chunks


def merge_small_chunks(chunks: list[str], min_bytes: int) -> list[str]:
    """Join each chunk under ``min_bytes`` (a lone heading, a short preamble) onto the chunk after it."""
    merged: list[str] = []
    carried = ""
    for chunk in chunks:
        chunk = f"{carried}{PARAGRAPH_BREAK}{chunk}" if carried else chunk
        carried = chunk if utf8_bytes(chunk) < min_bytes else ""
        if not carried:
            merged.append(chunk)
    if carried:
        merged[-1:] = [f"{merged[-1]}{PARAGRAPH_BREAK}{carried}"] if merged else [carried]
    return merged


def pack_sections(sections: list[str], max_bytes: int, min_bytes: int = 2_000) -> list[str]:
    """Merge small consecutive sections and split large ones at paragraphs, into chunks of about
    ``min_bytes`` to ``max_bytes`` (a chunk may pass ``max_bytes`` by one small merged piece)."""
    pieces: list[str] = []
    for section in sections:
        pieces.extend([section] if utf8_bytes(section) <= max_bytes else pack_paragraphs(paragraphs_of(section), max_bytes))
    return merge_small_chunks(pack_paragraphs(pieces, max_bytes), min_bytes)
