"""Sharded token files: fixed-size shards of token ids and an index, read through memory maps.

A shard folder holds, per split (``train``, ``heldout``), the split's token stream (every document's ids
followed by the end-of-sequence id, in corpus order) cut into files of exactly ``shard_tokens`` ids:
``train-00000.bin``, ``train-00001.bin``, ... The last shard of a split may be shorter; while it is, it is
named by the commit that wrote it (``train-00007.part000012.bin``) and is rewritten, longer, by later
commits. Because the stream only ever grows at its end, an older part file holds a prefix of the newer one.

``index.json`` is the commit point: it lists the files of both splits with their token counts, how many
documents of the corpus they hold (``documents_read``, where a resumed tokenization starts reading), and
whether the corpus ran out or the held-out split is full. Every file is written under a temporary name
and renamed (:mod:`overtrain.atomic`); the index is written last, so a killed writer leaves the previous
index valid and every file it lists whole. Files past the index are rewritten, identically, on resume.

:class:`ShardedTokens` reads a split as one sequence: ``len``, integer and slice indexing and fancy
indexing by an integer array (one gather per shard touched). A shard is memory-mapped when first touched,
and at most :data:`OPEN_SHARDS` stay mapped, so no file is loaded whole and a split of thousands of
shards needs few file descriptors.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from overtrain.atomic import TEMPORARY_MARK, atomic_write_bytes, atomic_write_text, remove_stale_temporaries
from overtrain.errors import OvertrainError

INDEX_FILE = "index.json"
SHARD_FORMAT_VERSION = 1
SPLITS = ("train", "heldout")
OPEN_SHARDS = 64
"""Shards a reader keeps memory-mapped at once (least recently used ones are closed)."""


def delete_token_folder_fix(folder: Path) -> str:
    """The fix for a damaged token folder (a trained-BPE cache or a shard folder): rebuilding it loses nothing."""
    return f"delete the folder {folder}: the next run tokenizes the corpus into it again (the same corpus and settings give the same tokens)"


@dataclass
class SplitFiles:
    """The shard files of one split, in stream order, with the number of tokens each holds."""

    files: list[str] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    text_bytes: int = 0
    """UTF-8 bytes of the documents whose tokens are in the split (bytes per token = text_bytes / total)."""
    documents: int = 0

    @property
    def total(self) -> int:
        return sum(self.tokens)


@dataclass
class ShardIndex:
    """The committed state of a shard folder (``index.json``)."""

    dtype: str
    shard_tokens: int
    train: SplitFiles = field(default_factory=SplitFiles)
    heldout: SplitFiles = field(default_factory=SplitFiles)
    documents_read: int = 0
    """Documents of the corpus (in its fixed order) whose tokens the listed files hold."""
    corpus_exhausted: bool = False
    heldout_complete: bool = False
    """The held-out split reached its cap; later held-out documents are skipped."""
    skipped_heldout_documents: int = 0
    commits: int = 0
    meta: dict[str, Any] = field(default_factory=dict)
    """What the tokens are: tokenizer, vocabulary, end-of-sequence id, the settings that made them."""
    format_version: int = SHARD_FORMAT_VERSION

    def split(self, name: str) -> SplitFiles:
        return self.train if name == "train" else self.heldout


def read_index(folder: Path) -> ShardIndex | None:
    """The committed index of ``folder``, or None when nothing has been committed there yet."""
    path = Path(folder) / INDEX_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        splits = {name: SplitFiles(**data.pop(name)) for name in SPLITS}
        index = ShardIndex(**data, **splits)
    except (ValueError, TypeError, KeyError) as error:
        raise OvertrainError(f"{path} is damaged ({type(error).__name__}: {error})", delete_token_folder_fix(folder)) from None
    if index.format_version != SHARD_FORMAT_VERSION:
        raise OvertrainError(f"{path} has shard format {index.format_version}, this overtrain reads {SHARD_FORMAT_VERSION}", f"delete {folder}")
    return index


def write_index(folder: Path, index: ShardIndex) -> None:
    atomic_write_text(Path(folder) / INDEX_FILE, json.dumps(asdict(index), indent=1) + "\n")


@contextlib.contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``FOLDER.lock`` (blocking): one writer per shard folder, so the ranks of
    a data-parallel run or the jobs of a sweep that need the same tokens wait for one tokenization."""
    lock_path = Path(folder).with_name(Path(folder).name + ".lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(descriptor, fcntl.LOCK_UN)
        os.close(descriptor)


def shard_file_name(split: str, number: int, part_of_commit: int | None = None) -> str:
    """``train-00007.bin`` for a full shard; ``train-00007.part000012.bin`` for a partial one."""
    part = "" if part_of_commit is None else f".part{part_of_commit:06d}"
    return f"{split}-{number:05d}{part}.bin"


# --------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------


class ShardedTokens:
    """A split's shards as one read-only sequence of token ids (see the module docstring)."""

    def __init__(self, folder: Path, split: str, files: SplitFiles, dtype: np.dtype) -> None:
        self.folder, self.split, self.dtype = Path(folder), split, np.dtype(dtype)
        self.files, self.counts = list(files.files), list(files.tokens)
        self.starts = np.concatenate([[0], np.cumsum(self.counts, dtype=np.int64)])
        self._open: OrderedDict[int, np.ndarray] = OrderedDict()

    def __len__(self) -> int:
        return int(self.starts[-1])

    @property
    def shape(self) -> tuple[int]:
        return (len(self),)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            if step != 1:
                return self[np.arange(start, stop, step)]
            return self._range(start, stop)
        if isinstance(index, (int, np.integer)):
            position = int(index) + (len(self) if index < 0 else 0)
            return self[np.asarray([position])][0]
        return self._gather(np.asarray(index))

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        """The whole split in memory (for small splits; training never calls it)."""
        whole = self._range(0, len(self))
        return whole if dtype is None else whole.astype(dtype)

    def _gather(self, positions: np.ndarray) -> np.ndarray:
        flat = positions.reshape(-1).astype(np.int64)
        if flat.size and (flat.min() < 0 or flat.max() >= len(self)):
            raise IndexError(f"token position out of range for {self.split} split of {len(self):,} tokens")
        shard_of = np.searchsorted(self.starts, flat, side="right") - 1
        out = np.empty(flat.shape, dtype=self.dtype)
        for shard in np.unique(shard_of):
            chosen = shard_of == shard
            out[chosen] = self._shard(int(shard))[flat[chosen] - self.starts[shard]]
        return out.reshape(positions.shape)

    def _range(self, start: int, stop: int) -> np.ndarray:
        if stop <= start:
            return np.empty(0, dtype=self.dtype)
        first = int(np.searchsorted(self.starts, start, side="right") - 1)
        last = int(np.searchsorted(self.starts, stop - 1, side="right") - 1)
        pieces = []
        for shard in range(first, last + 1):
            low = max(start, int(self.starts[shard])) - int(self.starts[shard])
            high = min(stop, int(self.starts[shard + 1])) - int(self.starts[shard])
            pieces.append(np.asarray(self._shard(shard)[low:high]))
        return np.concatenate(pieces)

    def _shard(self, number: int) -> np.ndarray:
        if number in self._open:
            self._open.move_to_end(number)
            return self._open[number]
        mapped = np.memmap(self._existing_file(number), dtype=self.dtype, mode="r", shape=(self.counts[number],))
        self._open[number] = mapped
        if len(self._open) > OPEN_SHARDS:
            self._open.popitem(last=False)
        return mapped

    def check_files(self) -> None:
        """Raise an OvertrainError naming the first shard that is missing or shorter than its listed tokens."""
        for number in range(len(self.files)):
            self._existing_file(number)

    def _existing_file(self, number: int) -> Path:
        """The listed file, or, when a writer has since replaced a part file by a longer one, any file of the
        same shard long enough: it starts with the same tokens (the stream only grows at its end)."""
        needed = self.counts[number] * self.dtype.itemsize
        listed = self.folder / self.files[number]
        with contextlib.suppress(FileNotFoundError):
            if listed.stat().st_size >= needed:  # the usual case: no glob (a split may have thousands of shards)
                return listed
        for path in sorted(self.folder.glob(f"{self.split}-{number:05d}*.bin")):
            with contextlib.suppress(FileNotFoundError):
                if TEMPORARY_MARK not in path.name and path.stat().st_size >= needed:
                    return path
        raise OvertrainError(
            f"the shard {listed} is missing or shorter than the {self.counts[number]:,} tokens its index lists",
            delete_token_folder_fix(self.folder),
        )


def open_split(folder: Path, index: ShardIndex, split: str) -> ShardedTokens:
    """The split's shards as one sequence, every listed shard checked first to hold its listed tokens (one
    ``stat`` each), so a truncated or deleted shard is refused before a run starts, not when it is reached."""
    tokens = ShardedTokens(folder, split, index.split(split), np.dtype(index.dtype))
    tokens.check_files()
    return tokens


# --------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------


class _SplitBuffer:
    """The tokens of one split past its last full shard (they become the part file at a commit)."""

    def __init__(self, dtype: np.dtype) -> None:
        self.pieces: list[np.ndarray] = []
        self.count = 0
        self.dtype = dtype

    def append(self, ids: np.ndarray) -> None:
        if ids.size:
            self.pieces.append(ids.astype(self.dtype, copy=False))
            self.count += int(ids.size)

    def take(self, count: int) -> np.ndarray:
        """Remove and return the first ``count`` ids."""
        joined = np.concatenate(self.pieces) if self.pieces else np.empty(0, self.dtype)
        head, rest = joined[:count], joined[count:]
        self.pieces, self.count = ([rest] if rest.size else []), int(rest.size)
        return head

    def contents(self) -> np.ndarray:
        joined = np.concatenate(self.pieces) if self.pieces else np.empty(0, self.dtype)
        self.pieces = [joined] if joined.size else []
        return joined


class ShardWriter:
    """Append documents to the two splits of a shard folder, cut fixed-size shards, and commit progress.

    Resuming: built from the folder's committed index, it reloads each split's part file into its buffer;
    the caller then feeds documents from ``index.documents_read`` on.
    """

    def __init__(self, folder: Path, index: ShardIndex, heldout_tokens: int) -> None:
        self.folder, self.index, self.heldout_tokens = Path(folder), index, heldout_tokens
        self.dtype = np.dtype(index.dtype)
        self.buffers = {split: _SplitBuffer(self.dtype) for split in SPLITS}
        self.shard_completed = False
        remove_stale_temporaries(self.folder)
        for split in SPLITS:
            files = index.split(split)
            if files.tokens and files.tokens[-1] < index.shard_tokens:  # a part file: back into the buffer
                part, count = self.folder / files.files.pop(), files.tokens.pop()
                ids = np.fromfile(part, dtype=self.dtype) if part.is_file() else np.empty(0, self.dtype)
                if ids.size < count:  # a truncated part file would silently drop tokens from the stream
                    raise OvertrainError(
                        f"the shard {part} is missing or shorter than the {count:,} tokens its index lists",
                        delete_token_folder_fix(self.folder),
                    )
                self.buffers[split].append(ids[:count])

    @property
    def train_tokens(self) -> int:
        return self.index.train.total + self.buffers["train"].count

    @property
    def heldout_tokens_written(self) -> int:
        return self.index.heldout.total + self.buffers["heldout"].count

    def add_document(self, ids: np.ndarray, text_bytes: int, heldout: bool) -> None:
        """Append one document's ids (its end-of-sequence id included) to its split."""
        if heldout:
            room = self.heldout_tokens - self.heldout_tokens_written
            if self.index.heldout_complete or room <= 0:
                self.index.skipped_heldout_documents += 1
                return
            ids = ids[:room]  # the document that fills the held-out split is cut at the cap
            self.index.heldout_complete = ids.size == room
        split = "heldout" if heldout else "train"
        self.buffers[split].append(ids)
        files = self.index.split(split)
        files.text_bytes += text_bytes
        files.documents += 1
        self._write_full_shards(split)

    def _write_full_shards(self, split: str) -> None:
        buffer, files = self.buffers[split], self.index.split(split)
        while buffer.count >= self.index.shard_tokens:
            name = shard_file_name(split, len(files.files))
            atomic_write_bytes(self.folder / name, buffer.take(self.index.shard_tokens).tobytes())
            files.files.append(name)
            files.tokens.append(self.index.shard_tokens)
            self.shard_completed = True

    def commit(self, documents_read: int, corpus_exhausted: bool = False) -> ShardIndex:
        """Write each split's part file and then the index: the state after ``documents_read`` documents."""
        self.index.commits += 1
        self.index.documents_read = documents_read
        self.index.corpus_exhausted = corpus_exhausted
        committed = ShardIndex(**{**asdict(self.index), "train": SplitFiles(), "heldout": SplitFiles()})
        for split in SPLITS:
            files = self.index.split(split)
            listed = SplitFiles(list(files.files), list(files.tokens), files.text_bytes, files.documents)
            tail = self.buffers[split].contents()
            if tail.size:
                name = shard_file_name(split, len(files.files), self.index.commits)
                atomic_write_bytes(self.folder / name, tail.tobytes())
                listed.files.append(name)
                listed.tokens.append(int(tail.size))
            setattr(committed, split, listed)
        previous = read_index(self.folder)
        write_index(self.folder, committed)
        self._remove_superseded_parts(previous, committed)
        self.shard_completed = False
        return committed

    def _remove_superseded_parts(self, previous: ShardIndex | None, committed: ShardIndex) -> None:
        """Part files the new index no longer lists (a reader that still maps one keeps its inode alive)."""
        if previous is None:
            return
        kept = {name for split in SPLITS for name in committed.split(split).files}
        for split in SPLITS:
            for name in previous.split(split).files:
                if ".part" in name and name not in kept:
                    (self.folder / name).unlink(missing_ok=True)
