"""Parallel, streaming tokenization with a pre-trained tokenizer into a shard folder (:mod:`.shards`).

One reader streams the corpus in its fixed order and cuts it into chunks of ``tokenize.chunk_documents``
documents; workers encode chunks (no special tokens added, the end-of-sequence id after each document)
and decide each document's split by a hash of its text (:func:`overtrain.data.corpus.is_heldout_document`);
the writer takes the chunks back *in order* and appends them to the splits. The shards are therefore a
function of the corpus and the settings alone: any number of workers, on either engine, writes the same
bytes, and the held-out split never depends on who encoded what.

Engines (``tokenize.engine``): ``processes`` runs ``tokenize.workers`` spawned processes on this machine
(one process encodes in place); ``ray`` sends the chunks to Ray Data tasks on the cluster ``ray.init()``
joins, in windows of a few chunks per worker. At most ~2 chunks per worker are in flight, so memory does not
grow with the corpus, and reading stops as soon as the run's tokens are there.

Progress is committed after every chunk that completes a shard (or fills the held-out split), so a killed
tokenization resumes at the last commit: it skips the documents already read (without encoding them) and
goes on. Tokenization stops once the training split holds ``train_tokens`` tokens and the held-out split is
full; a later run that needs more continues the same folder where this one stopped.
"""

from __future__ import annotations

import hashlib
import itertools
import multiprocessing
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from overtrain.atomic import atomic_directory
from overtrain.data.config import DataConfig
from overtrain.data.corpus import is_heldout_document, iter_documents
from overtrain.data.shards import ShardIndex, ShardWriter, folder_lock, read_index, write_index
from overtrain.data.synthetic import mix_long_tail
from overtrain.data.tokenizer import PretrainedTokenizer, copy_tokenizer_files
from overtrain.errors import OvertrainError
from overtrain.units import format_tokens

IN_FLIGHT_PER_WORKER = 2
"""Chunks queued per worker process: enough to keep it busy while the writer appends, few enough to bound memory."""
RAY_CHUNKS_PER_WORKER = 8
"""Chunks per worker in one Ray Dataset window: each window costs ~0.5-1 s of Ray Data scheduling, so it
carries several chunks per task slot."""


@dataclass(frozen=True)
class EncodedChunk:
    """One chunk of documents, encoded: all ids end to end, and per document its length and split."""

    ids: np.ndarray
    """uint32, every document's ids followed by the end-of-sequence id."""
    lengths: np.ndarray
    """int64, tokens of each document (its end-of-sequence id included)."""
    text_bytes: np.ndarray
    """int64, UTF-8 bytes of each document."""
    heldout: np.ndarray
    """bool, whether each document belongs to the held-out split."""


@dataclass(frozen=True)
class ChunkEncoder:
    """Everything a worker needs to encode a chunk, picklable (the tokenizer travels as its JSON)."""

    tokenizer_json: str
    end_of_text_id: int
    heldout_fraction: float

    def encode(self, documents: list[str]) -> EncodedChunk:
        encodings = _tokenizer_from_json(self.tokenizer_json).encode_batch(documents, add_special_tokens=False)
        lengths = np.fromiter((len(encoding.ids) + 1 for encoding in encodings), dtype=np.int64, count=len(encodings))
        ids = np.empty(int(lengths.sum()), dtype=np.uint32)
        ends = np.cumsum(lengths)
        for encoding, end, length in zip(encodings, ends, lengths):
            ids[end - length : end - 1] = encoding.ids
            ids[end - 1] = self.end_of_text_id
        text_bytes = np.fromiter((len(document.encode("utf-8")) for document in documents), dtype=np.int64, count=len(documents))
        heldout = np.fromiter((is_heldout_document(document, self.heldout_fraction) for document in documents), dtype=bool, count=len(documents))
        return EncodedChunk(ids, lengths, text_bytes, heldout)


_TOKENIZERS: dict[str, Tokenizer] = {}


def _tokenizer_from_json(tokenizer_json: str) -> Tokenizer:
    """The tokenizer of ``tokenizer_json``, built once per process."""
    key = hashlib.sha256(tokenizer_json.encode()).hexdigest()
    if key not in _TOKENIZERS:
        _TOKENIZERS[key] = Tokenizer.from_str(tokenizer_json)
    return _TOKENIZERS[key]


# --------------------------------------------------------------------------------------------------
# The document stream and the engines
# --------------------------------------------------------------------------------------------------


def corpus_documents(config: DataConfig) -> Iterator[str]:
    """The corpus in its fixed order, as the trained-BPE path reads it (long-tail mix included)."""
    documents = iter_documents(config.corpus, text_field=config.text_field, max_documents=config.max_documents)
    return mix_long_tail(documents, config.long_tail)


def chunked(documents: Iterable[str], size: int) -> Iterator[list[str]]:
    iterator = iter(documents)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def resolve_workers(config: DataConfig) -> int:
    """``tokenize.workers``, with 0 meaning every core of this machine (or of the Ray cluster)."""
    workers = config.tokenize.workers
    if workers > 0:
        return workers
    if config.tokenize.engine == "ray":
        ray = _import_ray()
        _start_ray(ray)
        return max(1, int(ray.cluster_resources().get("CPU", 1)))
    return os.cpu_count() or 1


def encode_chunks(chunks: Iterable[list[str]], encoder: ChunkEncoder, workers: int, engine: str) -> Iterator[tuple[int, EncodedChunk]]:
    """``(documents in the chunk, encoded chunk)`` for every chunk, in the order of ``chunks``."""
    if engine == "ray":
        return _ray_encode(chunks, encoder, workers)
    if workers <= 1 or multiprocessing.current_process().daemon:  # a daemonic process may not start workers
        return ((len(chunk), encoder.encode(chunk)) for chunk in chunks)
    return _process_encode(chunks, encoder, workers)


_WORKER_ENCODER: ChunkEncoder | None = None


def _start_worker(encoder: ChunkEncoder) -> None:
    global _WORKER_ENCODER
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one core per worker: the processes are the parallelism
    _WORKER_ENCODER = encoder


def _encode_in_worker(documents: list[str]) -> EncodedChunk:
    assert _WORKER_ENCODER is not None
    return _WORKER_ENCODER.encode(documents)


def _process_encode(chunks: Iterable[list[str]], encoder: ChunkEncoder, workers: int) -> Iterator[tuple[int, EncodedChunk]]:
    """Worker processes, results in order. Forked where the platform can (a worker only encodes: it touches
    none of the caller's torch, CUDA or Ray state, and a spawned one would re-import the caller's script)."""
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    with context.Pool(workers, initializer=_start_worker, initargs=(encoder,)) as pool:
        pending: deque = deque()
        for chunk in chunks:
            pending.append((len(chunk), pool.apply_async(_encode_in_worker, (chunk,))))
            if len(pending) >= IN_FLIGHT_PER_WORKER * workers:
                count, result = pending.popleft()
                yield count, result.get()
        while pending:
            count, result = pending.popleft()
            yield count, result.get()


def _import_ray():
    try:
        import ray
        import ray.data  # Ray Data is the engine
    except ImportError:
        raise OvertrainError("data.tokenize.engine=ray needs Ray Data", "pip install 'ray[data]' (or the dev extra), or use engine=processes") from None
    return ray


def _start_ray(ray) -> None:
    if not ray.is_initialized():  # joins RAY_ADDRESS's cluster when set, else starts a local one
        ray.init(ignore_reinit_error=True, include_dashboard=False, log_to_driver=False, configure_logging=False)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # the tokenization logs its own progress
    context.print_on_execution_start = False


def _encode_row(row: dict, encoder: ChunkEncoder) -> dict:
    """Ray Data task: one chunk in, its encoding out as bytes (Arrow carries them without conversion)."""
    encoded = encoder.encode(list(row["documents"]))
    return {"order": row["order"], "ids": encoded.ids.tobytes(), "lengths": encoded.lengths.tobytes(),
            "text_bytes": encoded.text_bytes.tobytes(), "heldout": encoded.heldout.tobytes()}


def _ray_encode(chunks: Iterable[list[str]], encoder: ChunkEncoder, workers: int) -> Iterator[tuple[int, EncodedChunk]]:
    """Windows of ``RAY_CHUNKS_PER_WORKER x workers`` chunks, each a Ray Dataset of one block per chunk mapped by
    at most ``workers`` tasks at once; rows are put back in chunk order before they are yielded."""
    ray = _import_ray()
    _start_ray(ray)
    workers = max(workers, 1)
    iterator = iter(chunks)
    while window := list(itertools.islice(iterator, RAY_CHUNKS_PER_WORKER * workers)):
        items = [{"order": order, "documents": documents} for order, documents in enumerate(window)]
        dataset = ray.data.from_items(items, override_num_blocks=len(items))
        mapped = dataset.map(_encode_row, fn_kwargs={"encoder": encoder}, compute=ray.data.TaskPoolStrategy(size=workers))
        rows = mapped.take_all()
        for row in sorted(rows, key=lambda row: row["order"]):
            yield len(window[row["order"]]), _decode_row(row)


def _decode_row(row: dict) -> EncodedChunk:
    """The chunk a Ray row carries (the inverse of :func:`_encode_row`)."""
    return EncodedChunk(
        np.frombuffer(row["ids"], dtype=np.uint32), np.frombuffer(row["lengths"], dtype=np.int64),
        np.frombuffer(row["text_bytes"], dtype=np.int64), np.frombuffer(row["heldout"], dtype=bool),
    )


# --------------------------------------------------------------------------------------------------
# The tokenization
# --------------------------------------------------------------------------------------------------


def is_ready(index: ShardIndex | None, train_tokens: int) -> bool:
    """The folder holds what a run needs: ``train_tokens`` training tokens (or the whole corpus) and a
    held-out split that is full (or the whole corpus's)."""
    if index is None:
        return False
    enough_train = index.train.total >= train_tokens or index.corpus_exhausted
    return enough_train and (index.heldout_complete or index.corpus_exhausted)


def tokenize_into_shards(
    config: DataConfig,
    folder: Path,
    pretrained: PretrainedTokenizer,
    train_tokens: int,
    log: Callable[[str], None] = print,
    on_commit: Callable[[ShardIndex], None] | None = None,
) -> ShardIndex:
    """Tokenize the corpus into ``folder`` until it is ready for ``train_tokens`` (see :func:`is_ready`),
    resuming from the folder's last commit; returns the committed index. ``on_commit`` is called after
    every commit (progress displays; tests stop a run there)."""
    with folder_lock(folder):
        index = read_index(folder)
        if is_ready(index, train_tokens):
            _check_splits(index, config)
            return index
        if index is None:
            index = _start_folder(config, folder, pretrained)
        workers = resolve_workers(config)
        skip = index.documents_read
        log(
            f"tokenizing {config.corpus!r} with {pretrained.name} into {folder}, "
            f"{workers} worker{'s' if workers != 1 else ''} ({config.tokenize.engine}): "
            f"{format_tokens(train_tokens)} training tokens + {format_tokens(config.heldout_tokens)} held-out"
            + (f", resuming after {skip:,} documents ({format_tokens(index.train.total)} tokens committed)" if skip else "")
        )
        started, tokens_before = time.perf_counter(), index.train.total + index.heldout.total
        committed = _fill(config, folder, index, pretrained, train_tokens, workers, on_commit)
        seconds = time.perf_counter() - started
        new_tokens = committed.train.total + committed.heldout.total - tokens_before
        log(f"tokenized {format_tokens(new_tokens)} tokens in {seconds:.1f} s ({format_tokens(new_tokens / max(seconds, 1e-9))} tokens/s)")
    _check_splits(committed, config)
    return committed


def _start_folder(config: DataConfig, folder: Path, pretrained: PretrainedTokenizer) -> ShardIndex:
    """A new folder: the tokenizer's files and an empty index (the first commit)."""
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_directory(folder / "tokenizer") as staging:
        copy_tokenizer_files(pretrained, staging)
    dtype = "uint16" if pretrained.size <= 2**16 else "uint32"
    meta = {
        "tokenizer": pretrained.name,
        "tokenizer_commit": pretrained.commit,
        "tokenizer_size": pretrained.size,
        "end_of_text_id": pretrained.end_of_text_id,
        "corpus": config.corpus,
        "settings": {k: getattr(config, k) for k in ("corpus", "text_field", "heldout_fraction", "heldout_tokens", "max_documents")},
    }
    index = ShardIndex(dtype=dtype, shard_tokens=config.tokenize.shard_tokens, meta=meta)
    write_index(folder, index)
    return index


def _fill(config, folder, index, pretrained, train_tokens, workers, on_commit) -> ShardIndex:
    writer = ShardWriter(folder, index, config.heldout_tokens)
    encoder = ChunkEncoder(pretrained.tokenizer.to_str(), pretrained.end_of_text_id, config.heldout_fraction)
    documents_read = index.documents_read
    remaining = itertools.islice(corpus_documents(config), documents_read, None)  # read, not encoded, on resume
    chunks = chunked(remaining, config.tokenize.chunk_documents)
    encoded_chunks = encode_chunks(chunks, encoder, workers, config.tokenize.engine)
    try:
        for count, encoded in encoded_chunks:
            heldout_was_complete = writer.index.heldout_complete
            ends = np.cumsum(encoded.lengths)
            for end, length, text_bytes, heldout in zip(ends, encoded.lengths, encoded.text_bytes, encoded.heldout):
                writer.add_document(encoded.ids[end - length : end], int(text_bytes), bool(heldout))
            documents_read += count
            done = writer.train_tokens >= train_tokens and writer.index.heldout_complete
            if done or writer.shard_completed or writer.index.heldout_complete != heldout_was_complete:
                committed = writer.commit(documents_read)
                if on_commit is not None:
                    on_commit(committed)
                if done:
                    return committed
    finally:
        close = getattr(encoded_chunks, "close", None)
        if close is not None:
            close()  # stops the workers of a run that ended early
    committed = writer.commit(documents_read, corpus_exhausted=True)
    if on_commit is not None:
        on_commit(committed)
    return committed


def _check_splits(index: ShardIndex, config: DataConfig) -> None:
    if index.train.total == 0:
        raise OvertrainError(f"corpus {config.corpus!r} has no training documents", "point data.corpus at a corpus with text")
    if index.heldout.total == 0:
        raise OvertrainError(
            f"corpus {config.corpus!r} gives no held-out documents at data.heldout_fraction={config.heldout_fraction} "
            f"({index.train.documents:,} documents read)",
            "raise data.heldout_fraction, or use a corpus with more documents",
        )


# --------------------------------------------------------------------------------------------------
# The plan (``--dry-run``): no tokenizer is loaded and nothing is read
# --------------------------------------------------------------------------------------------------

MEASURED_TOKENS_PER_CORE_SECOND = 2.1e5
"""Tokens per CPU-second of one worker process in the 2-worker pipeline, measured by
``benchmarks/bench_tokenize.py`` with SmolLM2's 49,152-token BPE on English prose (docs/benchmarks.md,
"Tokenization"); the dry-run's time is an estimate from it, not a measurement on the user's corpus."""


def describe_token_plan(config: DataConfig, train_tokens: int) -> str:
    """What tokenization a run of ``train_tokens`` training tokens needs, in a few lines (for ``--dry-run``)."""
    from overtrain.data.tokenizer import uses_pretrained_tokenizer

    if not uses_pretrained_tokenizer(config.tokenizer):
        return (
            f"data: {config.corpus!r}, a {config.vocab_size:,}-token byte-level BPE trained on it (data.tokenizer=bpe); "
            "the whole corpus is read into memory and tokenized in one process into one token file"
        )
    shard = config.tokenize.shard_tokens
    train_shards, heldout_shards = -(-train_tokens // shard), -(-config.heldout_tokens // shard)
    bytes_per_token = 2 if max(config.vocab_size, 1) <= 2**16 else 4
    # The held-out split fills at heldout_fraction of the stream, so the stream read is the larger of the two.
    stream_tokens = max(train_tokens + config.heldout_tokens, config.heldout_tokens / config.heldout_fraction)
    workers = config.tokenize.workers or (os.cpu_count() or 1)
    workers_label = f"{config.tokenize.workers}" if config.tokenize.workers else f"{workers} (0 = every core; on this machine {workers})"
    hours = stream_tokens / (MEASURED_TOKENS_PER_CORE_SECOND * workers) / 3600
    what = f"data: tokenizer {config.tokenizer} (pre-trained, used as is: no BPE training), corpus {config.corpus!r}"
    shards = (
        f"shards: {format_tokens(train_tokens)} training tokens (what the largest budget reads) + "
        f"{format_tokens(config.heldout_tokens)} held-out -> {train_shards:,} training shards + {heldout_shards:,} held-out "
        f"of {shard:,} tokens ({shard * bytes_per_token / 2**20:,.0f} MiB each at {bytes_per_token} bytes/token), "
        f"{(train_tokens + config.heldout_tokens) * bytes_per_token / 1e9:,.1f} GB under {config.cache_dir}/shards-*"
    )
    how = (
        f"tokenization: {config.tokenize.engine}, workers {workers_label}; the held-out split (heldout_fraction "
        f"{config.heldout_fraction:g}) is full after ~{format_tokens(config.heldout_tokens / config.heldout_fraction)} "
        f"tokens of corpus; ~{format_tokens(stream_tokens)} tokens to encode, estimated {hours:,.1f} h at "
        f"{format_tokens(MEASURED_TOKENS_PER_CORE_SECOND)} tokens/s per worker and linear scaling (an estimate from "
        "benchmarks/bench_tokenize.py, not a measurement on this corpus)"
    )
    return f"{what}\n{shards}\n{how}"
