"""Pre-training corpora as a stream of documents (plain strings), whatever their storage.

``iter_documents(source)`` accepts:

- ``"embedded"``: the real-English corpus shipped with the package (``corpus_data/default_corpus.jsonl.xz``,
  ~34 MB of public-domain text in 12 sources; see ``corpus_data/PROVENANCE.md``);
- a ``.txt`` file: one document (a file over 64 KB is cut at blank lines into ~32 KB documents, and a
  line longer than 128 KB into ~32 KB pieces at spaces, so even a one-line file gives many documents);
- a ``.jsonl``, ``.jsonl.gz`` or ``.json.gz`` file of records with a text field (C4's files are ``.json.gz``);
- a folder: every such file inside it, recursively, in sorted order; a folder written by
  ``datasets.Dataset.save_to_disk`` or holding only parquet/arrow/csv files is read with ``datasets``;
- ``"hf:NAME"`` or ``"hf:NAME:CONFIG"`` (e.g. ``"hf:allenai/c4:en"``): a Hugging Face dataset, streamed;
  ``"hf:/a/local/folder"`` reads a local dataset folder the same way (no network needed).

``split`` chooses the split of a Hugging Face dataset; plain files have no splits (held-out documents are
chosen downstream by a hash of the document index). Files must be UTF-8: a file with bytes that are not
(a binary or Latin-1 file) is refused with the count of undecodable bytes and the fix, never trained on
as replacement characters. Every user mistake raises ``OvertrainError``.
"""

from __future__ import annotations

import codecs
import gzip
import hashlib
import io
import json
import lzma
import os
from collections.abc import Iterable, Iterator
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, TextIO

from overtrain.errors import OvertrainError

EMBEDDED_SOURCE = "embedded"
HF_PREFIX = "hf:"
EMBEDDED_CORPUS_FILE = "default_corpus.jsonl.xz"
TEXT_SUFFIXES = (".txt",)
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".json.gz")
HF_DATA_SUFFIXES = (".parquet", ".arrow", ".csv")
TXT_DOCUMENT_BYTES = 32_000  # target size of the pieces a large .txt file is cut into
TXT_WHOLE_FILE_MAX_BYTES = 64_000  # a .txt file up to this size is a single document
TXT_HARD_CUT_BYTES = 4 * TXT_DOCUMENT_BYTES  # cut even without a blank line past this size
SOURCE_FORMS = "'embedded', a .txt/.jsonl/.jsonl.gz/.json.gz file, a folder, or hf:NAME[:CONFIG]"


def iter_documents(
    source: str | os.PathLike[str] = EMBEDDED_SOURCE,
    *,
    text_field: str = "text",
    split: str = "train",
    max_documents: int | None = None,
) -> Iterator[str]:
    """Yield the non-blank documents of ``source`` in a fixed order (see the module docstring).

    Raises ``OvertrainError`` for a missing path, an unsupported file type, a record without
    ``text_field``, a Hugging Face dataset that cannot be reached, or a corpus with no documents.
    """
    if max_documents is not None and max_documents < 1:
        raise OvertrainError(f"max_documents is {max_documents}", "pass a positive number, or None for all")
    yielded = 0
    for document in _raw_documents(source, text_field=text_field, split=split):
        if not document.strip():
            continue
        yield document
        yielded += 1
        if max_documents is not None and yielded >= max_documents:
            return
    if yielded == 0:
        raise _empty_corpus(str(source))


def is_heldout_document(text: str, heldout_fraction: float) -> bool:
    """Stable split: a document is held out when the hash of its text falls in the first fraction."""
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2**64 < heldout_fraction


def require_local_source(source: str) -> Path:
    """The path of a local corpus source (a file or folder), or one clear error when it does not exist, is a
    file of a type that is not read, is empty, or is a folder with nothing to read: checked from the names and
    sizes alone (nothing is read), so a dry run refuses what the run would."""
    path = Path(source).expanduser()
    if not path.exists():
        raise OvertrainError(f"the corpus path {source!r} does not exist", f"pass {SOURCE_FORMS}")
    if path.is_dir():
        _require_readable_folder(path)
    else:
        if not _has_suffix(path, TEXT_SUFFIXES + JSONL_SUFFIXES):
            raise _unsupported_file(path)
        if path.stat().st_size == 0:
            raise _empty_corpus(source)
    return path


def _require_readable_folder(folder: Path) -> None:
    """A folder holds a saved dataset, text/JSONL files that are not all empty, or dataset files."""
    if _is_saved_hf_dataset(folder):
        return
    files = _text_files(folder)
    if files and all(path.stat().st_size == 0 for path in files):
        raise _empty_corpus(str(folder))
    if not files and not _has_hf_data_files(folder):
        raise _folder_without_text(folder)


def _empty_corpus(source: str) -> OvertrainError:
    return OvertrainError(
        f"the corpus {source!r} has no documents (it is empty or holds only whitespace)",
        "point the corpus at files with text in them, or use 'embedded' for the shipped corpus",
    )


def reads_record_fields(source: str) -> bool:
    """Whether ``text_field`` can matter for ``source``: not for plain text (the embedded corpus, whose field
    is fixed, or a .txt file), which has no record fields."""
    return source != EMBEDDED_SOURCE and not (_has_suffix(Path(source), TEXT_SUFFIXES) and not Path(source).is_dir())


def is_local_source(source: str) -> bool:
    """Whether ``source`` names a file or folder (not the embedded corpus, not ``hf:``)."""
    return source != EMBEDDED_SOURCE and not source.startswith(HF_PREFIX)


def _raw_documents(source: str | os.PathLike[str], *, text_field: str, split: str) -> Iterator[str]:
    """Documents of any source, blank ones included; dispatches on the form of ``source``."""
    source_text = os.fspath(source)
    if source_text == EMBEDDED_SOURCE:
        return (record["text"] for record in iter_embedded_records())
    if source_text.startswith(HF_PREFIX):
        return _hf_documents(source_text[len(HF_PREFIX) :], text_field=text_field, split=split)
    path = require_local_source(source_text)
    if path.is_dir():
        return _folder_documents(path, text_field=text_field, split=split)
    return _file_documents(path, text_field=text_field)


# --- the embedded corpus -------------------------------------------------------------------------


def _embedded_corpus_file() -> Any:
    corpus_file = resources.files("overtrain") / "corpus_data" / EMBEDDED_CORPUS_FILE
    if not corpus_file.is_file():
        raise OvertrainError(
            f"the embedded corpus {EMBEDDED_CORPUS_FILE} is missing from the installed package",
            "reinstall overtrain from a full clone (the file is package data), or rebuild it with "
            "`python scripts/build_corpus.py`",
        )
    return corpus_file


def iter_embedded_records() -> Iterator[dict[str, str]]:
    """The shipped corpus as records ``{"text", "source", "title"}``, in file order (grouped by source)."""
    with _embedded_corpus_file().open("rb") as compressed, lzma.open(compressed, "rt", encoding="utf-8") as lines:
        for line in lines:
            yield json.loads(line)


@lru_cache(maxsize=1)
def _embedded_summary_cached() -> str:
    sources: dict[str, dict[str, int]] = {}
    for record in iter_embedded_records():
        counts = sources.setdefault(record["source"], {"documents": 0, "text_bytes": 0})
        counts["documents"] += 1
        counts["text_bytes"] += len(record["text"].encode("utf-8"))
    summary = {
        "file": EMBEDDED_CORPUS_FILE,
        "compressed_bytes": len(_embedded_corpus_file().read_bytes()),
        "documents": sum(counts["documents"] for counts in sources.values()),
        "text_bytes": sum(counts["text_bytes"] for counts in sources.values()),
        "sources": sources,
    }
    return json.dumps(summary)


def embedded_corpus_summary() -> dict[str, Any]:
    """Sizes of the shipped corpus: ``documents``, ``text_bytes`` (UTF-8), ``compressed_bytes``, and
    ``sources``: ``{source name: {"documents": n, "text_bytes": n}}``. Computed once per process."""
    return json.loads(_embedded_summary_cached())


# --- files and folders ---------------------------------------------------------------------------


def _has_suffix(path: Path, suffixes: Iterable[str]) -> bool:
    return any(path.name.lower().endswith(suffix) for suffix in suffixes)


def _file_documents(path: Path, *, text_field: str) -> Iterator[str]:
    if _has_suffix(path, TEXT_SUFFIXES):
        return _txt_documents(path)
    if _has_suffix(path, JSONL_SUFFIXES):
        return _jsonl_documents(path, text_field=text_field)
    raise _unsupported_file(path)


def _unsupported_file(path: Path) -> OvertrainError:
    return OvertrainError(
        f"the corpus file {str(path)!r} is not a supported type",
        "use a .txt file (one document), a .jsonl/.jsonl.gz/.json.gz file of records with a text field, "
        "or a folder of such files",
    )


def _folder_documents(folder: Path, *, text_field: str, split: str) -> Iterator[str]:
    """Every text/JSONL file under ``folder`` in sorted order; ``datasets`` folders go to the HF reader."""
    if _is_saved_hf_dataset(folder):
        return _hf_documents(str(folder), text_field=text_field, split=split)
    files = _text_files(folder)
    if files:
        return (document for path in files for document in _file_documents(path, text_field=text_field))
    if _has_hf_data_files(folder):
        return _hf_documents(str(folder), text_field=text_field, split=split)
    raise _folder_without_text(folder)


def _text_files(folder: Path) -> list[Path]:
    """The .txt and JSONL files under ``folder``, recursively, in sorted order."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and _has_suffix(p, TEXT_SUFFIXES + JSONL_SUFFIXES))


def _has_hf_data_files(folder: Path) -> bool:
    return any(p.is_file() and _has_suffix(p, HF_DATA_SUFFIXES) for p in folder.rglob("*"))


def _folder_without_text(folder: Path) -> OvertrainError:
    return OvertrainError(
        f"the corpus folder {str(folder)!r} has no .txt, .jsonl, .jsonl.gz or .json.gz files",
        "put the text files in that folder, or point at another folder or file",
    )


def _txt_documents(path: Path) -> Iterator[str]:
    """A small file whole; a large one cut at blank lines into ~TXT_DOCUMENT_BYTES pieces."""
    if path.stat().st_size <= TXT_WHOLE_FILE_MAX_BYTES:
        yield _decode_utf8(path.read_bytes(), path)
        return
    with _open_text(path) as lines:
        try:
            yield from _cut_at_blank_lines(_split_long_lines(lines))
        except UnicodeDecodeError:
            raise _not_utf8(path) from None


def _split_long_lines(lines: Iterable[str]) -> Iterator[str]:
    """Lines as they are, except that one longer than TXT_HARD_CUT_BYTES characters is cut into pieces of
    about TXT_DOCUMENT_BYTES, each ending at its last space (or at that size, if it has none)."""
    for line in lines:
        if len(line) <= TXT_HARD_CUT_BYTES:
            yield line
            continue
        while len(line) > TXT_DOCUMENT_BYTES:
            cut = line.rfind(" ", 0, TXT_DOCUMENT_BYTES) + 1
            if cut < TXT_DOCUMENT_BYTES // 2:
                cut = TXT_DOCUMENT_BYTES
            yield line[:cut]
            line = line[cut:]
        yield line


def _cut_at_blank_lines(lines: Iterable[str]) -> Iterator[str]:
    """Group lines into documents of about TXT_DOCUMENT_BYTES, cut at a blank line past that size, after
    each piece of a split long line (a piece has no newline), and at TXT_HARD_CUT_BYTES in any case."""
    buffer: list[str] = []
    buffer_bytes = 0
    for line in lines:
        after_piece = bool(buffer) and not buffer[-1].endswith("\n")
        at_blank_line = not line.strip()
        if buffer and (after_piece or (at_blank_line and buffer_bytes >= TXT_DOCUMENT_BYTES) or buffer_bytes >= TXT_HARD_CUT_BYTES):
            yield "".join(buffer)
            buffer, buffer_bytes = [], 0
        buffer.append(line)
        buffer_bytes += len(line.encode("utf-8"))
    if buffer:
        yield "".join(buffer)


def _open_text(path: Path) -> TextIO:
    if path.name.lower().endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8")
    return path.open(encoding="utf-8")


def _decode_utf8(data: bytes, path: Path) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise _not_utf8(path) from None


def _not_utf8(path: Path) -> OvertrainError:
    """The refusal of a file that is not UTF-8, with how many of its bytes cannot be decoded."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    total = bad = 0
    first = None
    with opener(path, "rb") as handle:
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        while chunk := handle.read(1 << 20):
            text = decoder.decode(chunk)
            replaced = text.count("\ufffd")
            if replaced and first is None:
                first = total + len(text[: text.index("\ufffd")].encode("utf-8"))
            total += len(chunk)
            bad += replaced
    return OvertrainError(
        f"the corpus file {str(path)!r} is not UTF-8 text: {bad:,} of its {total:,} bytes cannot be decoded "
        f"(the first near byte {first or 0:,}); a binary file or another encoding would train on garbage",
        "convert it to UTF-8 (e.g. iconv -f latin1 -t utf-8 FILE > FILE.utf8) or remove it from the corpus",
    )


def _jsonl_documents(path: Path, *, text_field: str) -> Iterator[str]:
    """The ``text_field`` of each JSON record, one record a line (blank lines skipped)."""
    with _open_text(path) as lines:
        try:
            for line_number, line in enumerate(lines, 1):
                if line.strip():
                    yield _text_of_record(_parse_json_line(line, path, line_number), text_field, f"line {line_number} of {path}")
        except UnicodeDecodeError:
            raise _not_utf8(path) from None


def _parse_json_line(line: str, path: Path, line_number: int) -> dict[str, Any]:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise OvertrainError(
            f"line {line_number} of {path} is not valid JSON ({error.msg} at column {error.colno})",
            "make every line of a .jsonl file one JSON object, e.g. {\"text\": \"...\"}",
        ) from None
    if not isinstance(record, dict):
        raise OvertrainError(
            f"line {line_number} of {path} is a JSON {type(record).__name__}, not an object",
            "make every line of a .jsonl file one JSON object, e.g. {\"text\": \"...\"}",
        )
    return record


def _text_of_record(record: dict[str, Any], text_field: str, where: str) -> str:
    if text_field not in record:
        fields = ", ".join(map(repr, record)) or "none"
        raise OvertrainError(
            f"{where} has no {text_field!r} field; its fields are: {fields}",
            "name the field that holds the text: data.text_field=<field> for a pre-training corpus, "
            "eval_text_field=<field> for a probe's eval_data; or add that field to every record",
        )
    text = record[text_field]
    if not isinstance(text, str):
        raise OvertrainError(
            f"the {text_field!r} field of {where} is a {type(text).__name__}, not a string",
            "make that field hold the document's text, or set data.text_field to the field that does",
        )
    return text


# --- Hugging Face datasets -----------------------------------------------------------------------


def _is_saved_hf_dataset(folder: Path) -> bool:
    """True for a folder written by ``Dataset.save_to_disk`` or ``DatasetDict.save_to_disk``."""
    return (folder / "dataset_dict.json").is_file() or (
        (folder / "state.json").is_file() and (folder / "dataset_info.json").is_file()
    )


def _parse_hf_reference(reference: str) -> tuple[str, str | None]:
    """``"allenai/c4:en"`` -> ``("allenai/c4", "en")``; an existing local path is kept whole."""
    if reference and Path(reference).expanduser().exists():
        return str(Path(reference).expanduser()), None
    name, _, config = reference.partition(":")
    if not name:
        raise OvertrainError("the corpus 'hf:' names no dataset", "write hf:NAME or hf:NAME:CONFIG, e.g. hf:allenai/c4:en")
    return name, config or None


def _hf_documents(reference: str, *, text_field: str, split: str) -> Iterator[str]:
    """Stream ``text_field`` from a Hub dataset, a ``save_to_disk`` folder or a local data-file folder."""
    name, config = _parse_hf_reference(reference)
    rows = _open_hf_rows(name, config, split)
    where = f"a record of Hugging Face dataset {name!r}"
    try:
        for row in rows:
            yield _text_of_record(row, text_field, where)
    except OvertrainError:
        raise
    except Exception as error:  # the datasets/hub stack raises many types while streaming
        raise _hf_unreachable(name, config, error) from error


def _open_hf_rows(name: str, config: str | None, split: str) -> Iterable[dict[str, Any]]:
    try:
        import datasets
    except ImportError:
        raise OvertrainError("reading hf: corpora needs the 'datasets' package", "pip install datasets") from None
    local = Path(name)
    try:
        if local.is_dir() and _is_saved_hf_dataset(local):
            return _pick_split(datasets.load_from_disk(str(local)), split, name)
        return datasets.load_dataset(name, config, split=split, streaming=True)
    except OvertrainError:
        raise
    except ValueError as error:
        if "split" in str(error).lower():
            problem = f"Hugging Face dataset {name!r} has no split {split!r}: {error}"
            raise OvertrainError(problem, "pass split= one of the splits the message lists") from None
        raise _hf_unreachable(name, config, error) from error
    except Exception as error:  # ConnectionError, DatasetNotFoundError, FileNotFoundError, HfHubHTTPError...
        raise _hf_unreachable(name, config, error) from error


def _pick_split(dataset: Any, split: str, name: str) -> Iterable[dict[str, Any]]:
    """A saved ``DatasetDict`` gives its ``split``; a saved single ``Dataset`` is used whole."""
    if hasattr(dataset, "keys"):
        if split not in dataset:
            available = ", ".join(sorted(dataset.keys()))
            raise OvertrainError(f"the saved dataset {name!r} has no split {split!r}", f"pass split= one of: {available}")
        return dataset[split]
    return dataset


def _hf_unreachable(name: str, config: str | None, error: Exception) -> OvertrainError:
    label = f"{name!r}" + (f" (config {config!r})" if config else "")
    detail = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
    return OvertrainError(
        f"could not load the Hugging Face dataset {label}: {detail}",
        "reading a Hub dataset needs the network or a copy in the HF cache: with network, set "
        "HF_DATASETS_OFFLINE=0 and HF_HUB_OFFLINE=0; without it, pass a local folder "
        "(hf:/path/to/saved_dataset, or a folder of .jsonl/.txt files) or use 'embedded'",
    )
