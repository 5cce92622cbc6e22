"""The embedded default corpus and the corpus loaders (text, JSONL, folders, Hugging Face datasets)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from overtrain.data.corpus import embedded_corpus_summary, iter_documents, iter_embedded_records
from overtrain.errors import OvertrainError

EXPECTED_SOURCES = {
    "austen",
    "shakespeare",
    "milton",
    "world_english_bible",
    "matthew_henry_concise",
    "spurgeon_treasury_of_david",
    "scofield_notes",
    "devils_dictionary",
    "webster_1913",
    "jargon_file",
    "perl_docs",
    "linux_kernel_docs",
}
KING_JAMES_GENESIS_1_3 = "And God said, Let there be light: and there was light."
WORLD_ENGLISH_BIBLE_GENESIS_1_3 = "God said, “Let there be light,” and there was light."


@pytest.fixture(scope="module")
def embedded_records() -> list[dict[str, str]]:
    return list(iter_embedded_records())


def write_jsonl(path: Path, records: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    return path


# --- the embedded corpus -------------------------------------------------------------------------


def test_embedded_corpus_is_large_real_text_from_every_source(embedded_records: list[dict[str, str]]) -> None:
    text_bytes = sum(len(record["text"].encode("utf-8")) for record in embedded_records)
    assert text_bytes >= 25_000_000
    assert {record["source"] for record in embedded_records} == EXPECTED_SOURCES
    assert all(record["text"].strip() and record["title"] for record in embedded_records)


def test_embedded_corpus_documents_are_chunks_of_a_few_kilobytes(embedded_records: list[dict[str, str]]) -> None:
    sizes = sorted(len(record["text"].encode("utf-8")) for record in embedded_records)
    assert len(sizes) > 1000
    assert sizes[0] >= 500 and sizes[-1] <= 40_000
    assert 2_000 <= sizes[len(sizes) // 2] <= 32_000


def test_embedded_corpus_has_the_world_english_bible_and_no_king_james_text(
    embedded_records: list[dict[str, str]],
) -> None:
    bible = "\n".join(record["text"] for record in embedded_records if record["source"] == "world_english_bible")
    everything = "\n".join(record["text"] for record in embedded_records)
    assert WORLD_ENGLISH_BIBLE_GENESIS_1_3 in bible
    assert KING_JAMES_GENESIS_1_3 not in everything
    assert "In the beginning God created the heaven and the earth." not in everything


def test_embedded_corpus_has_no_markup_left(embedded_records: list[dict[str, str]]) -> None:
    prose_sources = {"austen", "world_english_bible", "matthew_henry_concise", "webster_1913", "devils_dictionary"}
    prose = "\n".join(record["text"] for record in embedded_records if record["source"] in prose_sources)
    for leftover in ("<w ", "lemma=", "<note", "osisID", "[1913 Webster]", "[WordNet", "00-database", "\t"):
        assert leftover not in prose, leftover


def test_iter_documents_defaults_to_the_embedded_corpus(embedded_records: list[dict[str, str]]) -> None:
    first_three = list(iter_documents(max_documents=3))
    assert first_three == [record["text"] for record in embedded_records[:3]]


def test_embedded_corpus_summary_counts_every_source(embedded_records: list[dict[str, str]]) -> None:
    summary = embedded_corpus_summary()
    assert set(summary["sources"]) == EXPECTED_SOURCES
    assert summary["documents"] == len(embedded_records)
    assert summary["text_bytes"] == sum(counts["text_bytes"] for counts in summary["sources"].values())
    assert 0 < summary["compressed_bytes"] <= 12 * 1024 * 1024


# --- plain files and folders ---------------------------------------------------------------------


def test_small_txt_file_is_one_document(tmp_path: Path) -> None:
    path = tmp_path / "note.txt"
    path.write_text("First paragraph.\n\nSecond paragraph.\n", encoding="utf-8")
    assert list(iter_documents(str(path))) == ["First paragraph.\n\nSecond paragraph.\n"]


def test_large_txt_file_is_cut_at_blank_lines(tmp_path: Path) -> None:
    paragraphs = [f"Paragraph {i} " + "word " * 200 for i in range(100)]  # ~100 KB
    text = "\n\n".join(paragraphs) + "\n"
    path = tmp_path / "book.txt"
    path.write_text(text, encoding="utf-8")
    documents = list(iter_documents(path))
    assert len(documents) >= 3
    assert "".join(documents) == text
    assert all(document.startswith(("\n", "Paragraph")) for document in documents)
    assert all(len(document.encode("utf-8")) < 40_000 for document in documents)


@pytest.mark.parametrize("file_name", ["records.jsonl", "records.jsonl.gz", "records.json.gz"])
def test_jsonl_files_plain_and_gzipped(tmp_path: Path, file_name: str) -> None:
    lines = "".join(json.dumps({"text": f"document {i}", "url": "x"}) + "\n" for i in range(3)) + "\n"
    path = tmp_path / file_name
    if file_name.endswith(".gz"):
        path.write_bytes(gzip.compress(lines.encode("utf-8")))
    else:
        path.write_text(lines, encoding="utf-8")
    assert list(iter_documents(str(path))) == ["document 0", "document 1", "document 2"]


def test_jsonl_text_field_and_blank_documents(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "r.jsonl", [{"body": "kept"}, {"body": "   "}, {"body": "also kept"}])
    assert list(iter_documents(str(path), text_field="body")) == ["kept", "also kept"]


def test_folder_reads_every_supported_file_in_sorted_order(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    (tmp_path / "a.txt").write_text("from a.txt", encoding="utf-8")
    write_jsonl(tmp_path / "b" / "c.jsonl", [{"text": "from c 1"}, {"text": "from c 2"}])
    (tmp_path / "b" / "d.json.gz").write_bytes(gzip.compress(b'{"text": "from d"}\n'))
    (tmp_path / "ignored.csv").write_text("text\nnot read\n", encoding="utf-8")
    assert list(iter_documents(str(tmp_path))) == ["from a.txt", "from c 1", "from c 2", "from d"]


def test_max_documents_stops_early(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "r.jsonl", [{"text": f"doc {i}"} for i in range(10)])
    assert list(iter_documents(str(path), max_documents=4)) == ["doc 0", "doc 1", "doc 2", "doc 3"]


# --- Hugging Face datasets from local folders (no network here) ----------------------------------


def test_hf_dataset_saved_to_disk(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    folder = tmp_path / "saved"
    datasets.Dataset.from_dict({"text": ["alpha", "beta", " "], "id": [1, 2, 3]}).save_to_disk(str(folder))
    assert list(iter_documents(f"hf:{folder}")) == ["alpha", "beta"]
    assert list(iter_documents(str(folder))) == ["alpha", "beta"]


def test_hf_dataset_dict_saved_to_disk_picks_the_split(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    folder = tmp_path / "saved_dict"
    splits = {"train": ["t1", "t2"], "validation": ["v1"]}
    datasets.DatasetDict({name: datasets.Dataset.from_dict({"content": rows}) for name, rows in splits.items()}).save_to_disk(
        str(folder)
    )
    assert list(iter_documents(f"hf:{folder}", text_field="content", split="validation")) == ["v1"]
    with pytest.raises(OvertrainError, match="(?s)no split 'test'.*validation"):
        list(iter_documents(f"hf:{folder}", text_field="content", split="test"))


def test_hf_local_dataset_folder_with_data_files_is_streamed(tmp_path: Path) -> None:
    pytest.importorskip("datasets")
    folder = tmp_path / "c4_like" / "en"
    folder.mkdir(parents=True)
    records = "".join(json.dumps({"text": f"web page {i}", "timestamp": "2019"}) + "\n" for i in range(5))
    (folder / "c4-train.00000-of-00001.json.gz").write_bytes(gzip.compress(records.encode("utf-8")))
    documents = list(iter_documents(f"hf:{tmp_path / 'c4_like'}", max_documents=3))
    assert documents == ["web page 0", "web page 1", "web page 2"]


# --- errors --------------------------------------------------------------------------------------


def test_missing_path_says_what_to_pass(tmp_path: Path) -> None:
    with pytest.raises(OvertrainError, match="does not exist") as raised:
        list(iter_documents(str(tmp_path / "nope.txt")))
    assert "embedded" in str(raised.value) and "hf:NAME" in str(raised.value)


@pytest.mark.parametrize("content", ["", "  \n\n \t\n"])
def test_empty_or_whitespace_txt_is_an_empty_corpus(tmp_path: Path, content: str) -> None:
    path = tmp_path / "empty.txt"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(OvertrainError, match="has no documents"):
        list(iter_documents(str(path)))


def test_jsonl_of_blank_texts_is_an_empty_corpus(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "blank.jsonl", [{"text": ""}, {"text": "  "}])
    with pytest.raises(OvertrainError, match="has no documents"):
        list(iter_documents(str(path)))


def test_jsonl_record_without_the_text_field_names_line_and_fields(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "r.jsonl", [{"text": "ok"}, {"content": "x", "url": "y"}])
    with pytest.raises(OvertrainError) as raised:
        list(iter_documents(str(path)))
    message = str(raised.value)
    assert "line 2" in message and "'content', 'url'" in message and "text_field" in message


def test_jsonl_line_that_is_not_json_is_named(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "ok"}\n{"text": broken\n', encoding="utf-8")
    with pytest.raises(OvertrainError, match="line 2 .* not valid JSON"):
        list(iter_documents(str(path)))


def test_unsupported_file_type_and_empty_folder(tmp_path: Path) -> None:
    path = tmp_path / "corpus.pdf"
    path.write_bytes(b"%PDF")
    with pytest.raises(OvertrainError, match="not a supported type"):
        list(iter_documents(str(path)))
    empty = tmp_path / "empty_folder"
    empty.mkdir()
    with pytest.raises(OvertrainError, match="has no .txt, .jsonl"):
        list(iter_documents(str(empty)))


def test_require_local_source_refuses_from_names_and_sizes_what_reading_would(tmp_path: Path) -> None:
    """The dry run's check reads nothing, yet refuses each source that reading refuses, with the same message."""
    from overtrain.data.corpus import require_local_source

    unsupported = tmp_path / "notes.md"
    unsupported.write_text("# text in a format that is not read\n", encoding="utf-8")
    empty_file = tmp_path / "empty.txt"
    empty_file.write_bytes(b"")
    empty_files = tmp_path / "empty_files"
    (empty_files / "nested").mkdir(parents=True)
    for name in ("a.txt", "nested/b.jsonl"):
        (empty_files / name).write_bytes(b"")
    no_text = tmp_path / "no_text"
    no_text.mkdir()
    (no_text / "image.png").write_bytes(b"\x89PNG")
    for source, message in ((unsupported, "not a supported type"), (empty_file, "has no documents"),
                            (empty_files, "has no documents"), (no_text, "has no .txt, .jsonl")):
        with pytest.raises(OvertrainError, match=message):
            require_local_source(str(source))
        with pytest.raises(OvertrainError, match=message):
            list(iter_documents(str(source)))
    readable = tmp_path / "readable"
    readable.mkdir()
    (readable / "empty.txt").write_bytes(b"")
    (readable / "text.txt").write_text("one document", encoding="utf-8")
    assert require_local_source(str(readable)) == readable  # an empty file beside text is no problem
    assert list(iter_documents(str(readable))) == ["one document"]


def test_unknown_hub_dataset_while_offline_says_network_or_local_folder() -> None:
    pytest.importorskip("datasets")
    with pytest.raises(OvertrainError) as raised:
        list(iter_documents("hf:overtrain-test/no-such-dataset:en", max_documents=1))
    message = str(raised.value)
    assert "no-such-dataset" in message and "HF_DATASETS_OFFLINE=0" in message and "local folder" in message


def test_bad_max_documents_and_bare_hf_prefix() -> None:
    with pytest.raises(OvertrainError, match="max_documents"):
        list(iter_documents(max_documents=0))
    with pytest.raises(OvertrainError, match="names no dataset"):
        list(iter_documents("hf:"))


# --- refusals and messages of issue 10 (items 6 and 10) --------------------------------------------


def test_one_line_text_of_megabytes_is_cut_into_documents(tmp_path: Path) -> None:
    words = ("lorem ipsum dolor sit amet consectetur " * 60_000).strip()  # 2.3 MB on one line, no newline
    path = tmp_path / "one_line.txt"
    path.write_text(words)
    documents = list(iter_documents(str(path)))
    assert len(documents) >= 60
    assert "".join(documents) == words  # cut at spaces, nothing lost or added
    assert max(len(document) for document in documents) <= 64_000


def test_single_document_corpus_says_why_and_how_documents_are_made(tmp_path: Path) -> None:
    from overtrain.data.config import DataConfig
    from overtrain.data.tokens import prepare_token_data

    path = tmp_path / "small.txt"
    path.write_text("just one small document\n" * 10)
    config = DataConfig(corpus=str(path), cache_dir=str(tmp_path / "cache"), vocab_size=300, heldout_fraction=0.01)
    with pytest.raises(OvertrainError, match="single document") as caught:
        prepare_token_data(config, log=lambda *_: None)
    assert "64 KB" in caught.value.fix


@pytest.mark.parametrize("name", ["binary.txt", "big_binary.txt", "records.jsonl", "records.jsonl.gz"])
def test_non_utf8_corpus_file_is_refused_with_the_count_of_bad_bytes(tmp_path: Path, name: str) -> None:
    latin1 = "café crème brûlée\n".encode("latin-1")  # 4 bytes per line that are not UTF-8
    if name == "binary.txt":
        data = bytes(range(256)) * 4
    elif name == "big_binary.txt":
        data = latin1 * 5_000  # over 64 KB: read line by line
    else:
        data = b"".join(b'{"text": "' + latin1.strip() + b'"}\n' for _ in range(3))
    path = tmp_path / name
    path.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    with pytest.raises(OvertrainError, match="is not UTF-8 text") as caught:
        list(iter_documents(str(path)))
    expected_bad = {"binary.txt": 128 * 4, "big_binary.txt": 4 * 5_000}.get(name, 12)
    assert f"{expected_bad:,} of its {len(data):,} bytes cannot be decoded" in caught.value.problem
    assert "iconv" in caught.value.fix


def test_missing_text_field_names_the_data_config_key(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "r.jsonl", [{"content": "x"}])
    with pytest.raises(OvertrainError) as caught:
        list(iter_documents(str(path)))
    assert "data.text_field" in caught.value.fix and "corpus.text_field" not in str(caught.value)
