"""Token data: a corpus tokenized once into memory-mapped files, and deterministic batches drawn from it.

``prepare_token_data(config.data)`` reads the corpus, splits documents into train and held-out by a
hash of their text (so the split does not depend on order or on the seed), trains the BPE on the train
documents, and writes ``train.bin`` / ``heldout.bin`` (uint16 or uint32 token ids, documents separated by
``<|endoftext|>``) with ``meta.json`` and the tokenizer, all under a folder named by a hash of the
settings. A second call with the same settings reuses the folder.

With a pre-trained ``data.tokenizer`` the corpus is instead streamed and tokenized in parallel into a
folder of fixed-size shards (:mod:`overtrain.data.tokenize_parallel`, :mod:`overtrain.data.shards`), only as
far as the run needs (``train_tokens``), and the splits are read through memory-mapped shards.

Batches are a pure function of (seed, step): a killed run that resumes at step s draws exactly the
batches it would have drawn, and every data-parallel process can cut its share of the same global batch.
A trained-BPE corpus (small, read many times) gives random windows; sharded data is read in order, each
token once (``TokenData.in_order``), so a run needs no more tokens than its budget and the runs of a ladder
read prefixes of one stream.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from overtrain.atomic import atomic_directory, ensure_writable_folder
from overtrain.data.config import DataConfig
from overtrain.data.corpus import is_heldout_document, reads_record_fields
from overtrain.data.shards import SHARD_FORMAT_VERSION, ShardedTokens, delete_token_folder_fix, open_split
from overtrain.data.synthetic import mix_long_tail
from overtrain.data.tokenize_parallel import tokenize_into_shards
from overtrain.data.tokenizer import (
    END_OF_TEXT,
    end_of_text_id,
    load_pretrained_tokenizer,
    load_tokenizer,
    save_hf_tokenizer,
    tokenizer_hash,
    train_bpe_tokenizer,
    uses_pretrained_tokenizer,
)
from overtrain.errors import OvertrainError
from overtrain.provenance import file_sha256

DATA_FORMAT_VERSION = 1
ENCODE_CHUNK_DOCUMENTS = 256


@dataclass(frozen=True)
class TokenData:
    """Tokenized corpus on disk; ``train`` and ``heldout`` are read-only memmaps of token ids (one file, or
    the shards of a split seen as one sequence)."""

    folder: Path
    train: np.ndarray | ShardedTokens
    heldout: np.ndarray | ShardedTokens
    vocab_size: int
    end_of_text_id: int
    meta: dict
    in_order: bool = False
    """Training batches read the train split in order, each token once (sharded data), not random windows."""

    @property
    def tokenizer_folder(self) -> Path:
        return self.folder / "tokenizer"


def corpus_identity(config: DataConfig) -> str:
    """What the cache key knows of the corpus: a file's size and mtime, or the dataset name."""
    source = config.corpus
    path = Path(source)
    if source != "embedded" and not source.startswith("hf:") and path.exists():
        files = sorted(path.rglob("*")) if path.is_dir() else [path]
        return source + "".join(f"|{f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files if f.is_file())
    return source


def _keyed_text_field(config: DataConfig) -> str:
    """``text_field`` as the cache keys see it: the default for plain text, which has no fields, so that setting
    it there (where it changes no document) does not tokenize the same corpus again."""
    return config.text_field if reads_record_fields(str(config.corpus)) else DataConfig.text_field


def data_cache_key(config: DataConfig) -> str:
    fields = [corpus_identity(config), _keyed_text_field(config), config.vocab_size, config.heldout_fraction]
    fields += [config.max_documents, DATA_FORMAT_VERSION]
    if config.long_tail.fraction > 0:  # only then: the keys of corpora without the mix stay what they were
        fields.append(dataclasses.asdict(config.long_tail))
    return hashlib.sha256(json.dumps(fields, default=str).encode()).hexdigest()[:16]


def prepare_token_data(config: DataConfig, log=print, train_tokens: int = 0) -> TokenData:
    """Tokenize the corpus once (cached by a hash of ``config``) and open the memmaps.

    With a pre-trained ``config.tokenizer``, the shards are made (or extended) until they hold
    ``train_tokens`` training tokens (see :func:`train_tokens_needed`) and the full held-out split; a caller
    that only evaluates passes 0. A trained BPE always tokenizes the whole corpus.
    """
    if uses_pretrained_tokenizer(config.tokenizer):
        return _prepare_sharded_data(config, log, train_tokens)
    folder = Path(config.cache_dir) / f"tokens-{data_cache_key(config)}"
    if not (folder / "meta.json").is_file():
        if folder.exists():  # refused before tokenizing, not after (see open_token_data)
            raise _damaged_cache(folder, "meta.json is missing")
        ensure_writable_folder(Path(config.cache_dir), "the token cache folder", "data.cache_dir")
        started = time.perf_counter()
        log(f"tokenizing corpus {config.corpus!r} with a {config.vocab_size}-token BPE into {folder} ...")
        try:
            with atomic_directory(folder, if_exists="keep") as staging:
                _write_token_data(config, staging)
        except OSError as error:
            raise OvertrainError(
                f"could not write the token cache {folder} ({error.strerror or error})",
                "make data.cache_dir writable (or free disk space), or set data.cache_dir to another folder",
            ) from None
        log(f"tokenized in {time.perf_counter() - started:.1f} s")
    return open_token_data(folder)


def train_tokens_needed(steps: int, batch_size: int, seq_len: int) -> int:
    """Training tokens that ``steps`` in-order steps read: each of their windows, plus the last target."""
    return steps * batch_size * seq_len + 1


def shard_cache_key(config: DataConfig, tokenizer_folder: Path) -> str:
    """What decides the shards' bytes: the corpus, the tokenizer's files, the split and the shard size (not
    ``vocab_size``, which only pads the model's embedding, nor the workers or engine)."""
    fields = [corpus_identity(config), _keyed_text_field(config), tokenizer_hash(tokenizer_folder), config.heldout_fraction,
              config.heldout_tokens, config.max_documents, config.tokenize.shard_tokens, SHARD_FORMAT_VERSION]
    if config.long_tail.fraction > 0:
        fields.append(dataclasses.asdict(config.long_tail))
    return hashlib.sha256(json.dumps(fields, default=str).encode()).hexdigest()[:16]


def _prepare_sharded_data(config: DataConfig, log, train_tokens: int) -> TokenData:
    pretrained = load_pretrained_tokenizer(config.tokenizer)
    folder = Path(config.cache_dir) / f"shards-{shard_cache_key(config, pretrained.folder)}"
    ensure_writable_folder(Path(config.cache_dir), "the token cache folder", "data.cache_dir")
    try:
        index = tokenize_into_shards(config, folder, pretrained, train_tokens, log=log)
    except OSError as error:
        raise OvertrainError(
            f"could not write the token shards {folder} ({error.strerror or error})",
            "make data.cache_dir writable (or free disk space), or set data.cache_dir to another folder; "
            "the same command then resumes from the last finished shard",
        ) from None
    train, heldout = open_split(folder, index, "train"), open_split(folder, index, "heldout")
    load_tokenizer(folder / "tokenizer", fix=delete_token_folder_fix(folder))  # copied into checkpoints
    meta = {**index.meta, "dtype": index.dtype, "tokens": {"train": len(train), "heldout": len(heldout)},
            "documents": {"train": index.train.documents, "heldout": index.heldout.documents},
            "bytes_per_token": round(index.train.text_bytes / max(index.train.total, 1), 3)}
    vocab_size = max(config.vocab_size, pretrained.size)  # a larger data.vocab_size pads the embedding
    return TokenData(folder, train, heldout, vocab_size, pretrained.end_of_text_id, meta, in_order=True)


TOKEN_DTYPES = ("uint16", "uint32")
"""The dtypes ``train.bin`` / ``heldout.bin`` are written in (see :func:`_write_token_data`)."""


def open_token_data(folder: Path) -> TokenData:
    """Open a trained-BPE token cache, checked first: ``meta.json`` readable, each ``SPLIT.bin`` exactly the
    size its token count and dtype give, and the tokenizer loadable and the one ``meta.json`` describes.

    A damaged cache is refused (one :class:`OvertrainError` saying to delete the folder), not rebuilt
    automatically: other jobs of a sweep may have its files memory-mapped at that moment, so deleting and
    rewriting it under them is not safe, and damage to a cache is news to its owner (a full disk, a bad copy).
    Rebuilding from the same corpus and settings gives the same tokens, so deleting it by hand loses nothing.
    """
    meta = _read_cache_meta(folder)
    dtype = np.dtype(meta["dtype"])
    splits = {}
    for split in ("train", "heldout"):
        path = folder / f"{split}.bin"
        expected = meta["tokens"][split] * dtype.itemsize
        size = path.stat().st_size if path.is_file() else None
        if size != expected:
            found = "is missing" if size is None else f"holds {size:,} bytes"
            raise _damaged_cache(folder, f"{path.name} {found}, but meta.json lists {meta['tokens'][split]:,} "
                                         f"{dtype.name} tokens ({expected:,} bytes)")
        _check_split_checksum(folder, path, size, meta)
        splits[split] = np.memmap(path, dtype=dtype, mode="r") if expected else np.zeros(0, dtype)
    _check_cache_tokenizer(folder, meta)
    return TokenData(folder, splits["train"], splits["heldout"], meta["vocab_size"], meta["end_of_text_id"], meta)


CHECKSUMMED_SPLIT_BYTES = 512 * 2**20
"""Splits up to this size are checked against the sha256 in ``meta.json`` each time the cache is opened
(~0.3 s at the limit on one core; the embedded corpus's take milliseconds). Larger ones, and caches written
before the checksums were recorded, are checked by size only: hashing gigabytes at every job's start would
cost more than it protects."""


def _check_split_checksum(folder: Path, path: Path, size_bytes: int, meta: dict) -> None:
    """A split whose bytes changed at the same size (a bad copy, a stray write) is refused, not trained on."""
    checksums = meta.get("sha256")
    recorded = checksums.get(path.stem) if isinstance(checksums, dict) else None
    if recorded is None or size_bytes > CHECKSUMMED_SPLIT_BYTES:
        return
    if file_sha256(path) != recorded:
        raise _damaged_cache(folder, f"{path.name} does not match the sha256 meta.json recorded when it was written")


def _read_cache_meta(folder: Path) -> dict:
    """``meta.json`` of a token cache, with every key :func:`open_token_data` reads of the right type."""
    try:
        meta = json.loads((folder / "meta.json").read_text())
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise _damaged_cache(folder, f"meta.json cannot be read ({type(error).__name__}: {error})") from None
    tokens = meta.get("tokens") if isinstance(meta, dict) else None
    if not (isinstance(meta, dict) and meta.get("dtype") in TOKEN_DTYPES and _is_count(meta.get("vocab_size"))
            and _is_count(meta.get("end_of_text_id")) and isinstance(tokens, dict)
            and all(_is_count(tokens.get(split)) for split in ("train", "heldout"))):
        raise _damaged_cache(folder, "meta.json lacks dtype, vocab_size, end_of_text_id or the token counts of train and heldout")
    return meta


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_cache_tokenizer(folder: Path, meta: dict) -> None:
    """The cache's tokenizer loads and is the one ``meta.json`` describes: it is copied into every checkpoint."""
    tokenizer_folder = folder / "tokenizer"
    if not (tokenizer_folder / "tokenizer.json").is_file():
        raise _damaged_cache(folder, "tokenizer/tokenizer.json is missing")
    tokenizer = load_tokenizer(tokenizer_folder, fix=delete_token_folder_fix(folder))
    size, eot = tokenizer.get_vocab_size(), tokenizer.token_to_id(END_OF_TEXT)
    if (size, eot) != (meta["vocab_size"], meta["end_of_text_id"]):
        raise _damaged_cache(folder, f"its tokenizer has {size:,} tokens and {END_OF_TEXT} id {eot}, but meta.json says "
                                     f"{meta['vocab_size']:,} and {meta['end_of_text_id']}")


def _damaged_cache(folder: Path, detail: str) -> OvertrainError:
    return OvertrainError(f"the token cache {folder} is damaged: {detail}", delete_token_folder_fix(folder))


def _split_documents(config: DataConfig) -> tuple[list[str], list[str]]:
    from overtrain.data.corpus import iter_documents

    train_docs, heldout_docs = [], []
    documents = iter_documents(config.corpus, text_field=config.text_field, max_documents=config.max_documents)
    for text in mix_long_tail(documents, config.long_tail):
        (heldout_docs if is_heldout_document(text, config.heldout_fraction) else train_docs).append(text)
    if not train_docs:
        raise OvertrainError(f"corpus {config.corpus!r} has no training documents", "point data.corpus at a corpus with text")
    if not heldout_docs:
        # Tiny corpora may hash every document into train; hold out the last one so evaluation exists.
        heldout_docs.append(train_docs.pop())
        if not train_docs:
            raise OvertrainError(
                f"corpus {config.corpus!r} has a single document ({len(heldout_docs[0]):,} characters), "
                "so there is none left for the held-out split",
                "give it at least two documents (a .txt file over 64 KB is cut into ~32 KB documents, a smaller one is one document)",
            )
    return train_docs, heldout_docs


def _write_token_data(config: DataConfig, staging: Path) -> None:
    train_docs, heldout_docs = _split_documents(config)
    tokenizer = train_bpe_tokenizer(iter(train_docs), config.vocab_size)
    save_hf_tokenizer(tokenizer, staging / "tokenizer")
    eot = end_of_text_id(tokenizer)
    vocab_size = tokenizer.get_vocab_size()
    dtype = np.uint16 if vocab_size <= 2**16 else np.uint32
    counts = {}
    for split, documents in (("train", train_docs), ("heldout", heldout_docs)):
        counts[split] = _encode_to_file(tokenizer, documents, eot, dtype, staging / f"{split}.bin")
    train_bytes = sum(len(doc.encode("utf-8")) for doc in train_docs)
    meta = {
        "corpus": config.corpus,
        "vocab_size": vocab_size,
        "end_of_text_id": eot,
        "dtype": np.dtype(dtype).name,
        "documents": {"train": len(train_docs), "heldout": len(heldout_docs)},
        "tokens": counts,
        "sha256": {split: file_sha256(staging / f"{split}.bin") for split in ("train", "heldout")},
        "bytes_per_token": round(train_bytes / max(counts["train"], 1), 3),
        "config": {k: getattr(config, k) for k in ("corpus", "text_field", "vocab_size", "heldout_fraction", "max_documents")},
        **({"long_tail": dataclasses.asdict(config.long_tail)} if config.long_tail.fraction > 0 else {}),
        "format_version": DATA_FORMAT_VERSION,
    }
    (staging / "meta.json").write_text(json.dumps(meta, indent=2))


def _encode_to_file(tokenizer, documents: list[str], eot: int, dtype, path: Path) -> int:
    total = 0
    with open(path, "wb") as handle:
        for start in range(0, len(documents), ENCODE_CHUNK_DOCUMENTS):
            batch = tokenizer.encode_batch(documents[start : start + ENCODE_CHUNK_DOCUMENTS])
            for encoding in batch:
                ids = np.asarray(encoding.ids + [eot], dtype=dtype)
                handle.write(ids.tobytes())
                total += ids.size
    return total


# --------------------------------------------------------------------------------------------------
# Batches
# --------------------------------------------------------------------------------------------------


def batch_offsets(num_tokens: int, batch_size: int, seq_len: int, seed: int, step: int) -> np.ndarray:
    """Start positions of the ``batch_size`` windows of step ``step``: a pure function of (seed, step)."""
    if num_tokens <= seq_len + 1:
        raise OvertrainError(
            f"the training split has {num_tokens:,} tokens, fewer than one sequence of {seq_len + 1}",
            "use a bigger corpus or a smaller train.seq_len",
        )
    rng = np.random.default_rng([seed, step])
    return rng.integers(0, num_tokens - seq_len - 1, size=batch_size)


def windows(tokens: np.ndarray, offsets: np.ndarray, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and next-token targets, both (B, T) int64, cut from ``tokens`` at ``offsets``."""
    positions = np.asarray(offsets, dtype=np.int64)[:, None] + np.arange(seq_len + 1)
    rows = np.asarray(tokens[positions], dtype=np.int64)  # one gather from the memmap
    block = torch.from_numpy(rows)
    return block[:, :-1], block[:, 1:]


def in_order_offsets(num_tokens: int, batch_size: int, seq_len: int, step: int) -> np.ndarray:
    """Start positions of step ``step``'s windows when the split is read in order: window ``w`` of the run
    starts at ``w x seq_len`` (windows share their boundary token as input and target), wrapping around only
    if the split runs out (a corpus smaller than the budget)."""
    available = (num_tokens - 1) // seq_len
    if available < 1:
        raise OvertrainError(
            f"the training split has {num_tokens:,} tokens, fewer than one sequence of {seq_len + 1}",
            "use a bigger corpus or a smaller train.seq_len",
        )
    window = step * batch_size + np.arange(batch_size, dtype=np.int64)
    return (window % available) * seq_len


def train_batch(
    data: TokenData, batch_size: int, seq_len: int, seed: int, step: int, rows: slice = slice(None)
) -> tuple[torch.Tensor, torch.Tensor]:
    """The global batch of ``step`` (or the ``rows`` of it that this process or micro-batch owns)."""
    if data.in_order:
        offsets = in_order_offsets(len(data.train), batch_size, seq_len, step)[rows]
    else:
        offsets = batch_offsets(len(data.train), batch_size, seq_len, seed, step)[rows]
    return windows(data.train, offsets, seq_len)


EVAL_SEED = 1234  # fixed: every checkpoint of every run is evaluated on the same held-out windows


def capped_by_the_split(targets: torch.Tensor, eval_tokens: int, seq_len: int) -> bool:
    """Whether :func:`heldout_windows` gave fewer tokens than the whole windows ``eval_tokens`` asks for: the
    held-out split was too small (rounding down to whole windows is not a cap)."""
    return targets.numel() < eval_tokens // seq_len * seq_len


def heldout_windows(data: TokenData, eval_tokens: int, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed set of non-overlapping held-out windows covering about ``eval_tokens`` target tokens."""
    available = len(data.heldout) // (seq_len + 1)
    if available == 0:
        raise OvertrainError(
            f"the held-out split has {len(data.heldout):,} tokens, fewer than one sequence of {seq_len + 1}",
            f"use sequences shorter than {len(data.heldout):,} tokens (train.seq_len), raise data.heldout_fraction, or use a bigger corpus",
        )
    count = max(1, min(available, eval_tokens // seq_len))
    chosen = np.sort(np.random.default_rng(EVAL_SEED).choice(available, size=count, replace=False))
    return windows(data.heldout, chosen * (seq_len + 1), seq_len)
