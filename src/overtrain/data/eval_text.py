"""``eval_data=``: the text on which a probe measures the pre-training (OOD) loss of any checkpoint.

The source is anything :func:`overtrain.data.corpus.iter_documents` reads: a .txt file, a .jsonl file
(``text_field``), a folder of those, or ``hf:NAME[:CONFIG]``. Documents are read in their fixed order until
``TEXT_BYTES_PER_EVAL_TOKEN * eval_tokens`` bytes of text (so a streamed dataset is read only as far as
needed, and the text chosen does not depend on the tokenizer), tokenized with the checkpoint's own
tokenizer (``AutoTokenizer`` from its folder, no special tokens added), joined with the tokenizer's
end-of-sequence token between documents, and cut into non-overlapping windows of ``seq_len + 1`` tokens of
which a fixed, seeded choice covering about ``eval_tokens`` target tokens is kept. Every checkpoint of a
family (one tokenizer) is therefore measured on the same windows.

The windows are cached under ``CACHE_DIR/eval_text/windows-KEY/`` where KEY hashes the text source (file
names, sizes, modification times; or the dataset name), the tokenizer files' bytes and the window settings.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from overtrain.atomic import atomic_directory
from overtrain.data.tokenizer import load_auto_tokenizer, tokenizer_hash
from overtrain.data.tokens import EVAL_SEED
from overtrain.errors import OvertrainError

EVAL_TEXT_FORMAT_VERSION = 1
TEXT_BYTES_PER_EVAL_TOKEN = 32
ENCODE_BATCH_DOCUMENTS = 64


@dataclass(frozen=True)
class EvalTextSettings:
    """What decides the windows (all of it enters the cache key)."""

    source: str
    """A .txt/.jsonl file, a folder of them, or ``hf:NAME[:CONFIG]``."""
    seq_len: int
    """Window length in input tokens (each window holds seq_len + 1 tokens)."""
    eval_tokens: int
    """About how many target tokens the chosen windows cover."""
    text_field: str = "text"
    """Field of JSONL records / dataset rows that holds the text."""
    split: str = "train"
    """Split of an ``hf:`` dataset."""
    seed: int = EVAL_SEED
    """Seeds the choice of windows; the same for every checkpoint."""


def source_identity(source: str) -> str:
    """The text source as the cache key sees it: names, sizes and mtimes of its files, or the dataset name."""
    path = Path(source).expanduser()
    if source.startswith("hf:") or not path.exists():
        return source
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return str(path.resolve()) + "".join(f"|{f.relative_to(path) if path.is_dir() else f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files)


def eval_text_key(settings: EvalTextSettings, tokenizer_folder: Path) -> str:
    fields = [asdict(settings), source_identity(settings.source), tokenizer_hash(tokenizer_folder), TEXT_BYTES_PER_EVAL_TOKEN, EVAL_TEXT_FORMAT_VERSION]
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:16]


def eval_text_windows(
    settings: EvalTextSettings, tokenizer_folder: Path, cache_dir: Path, log=print
) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and next-token targets, both (N, seq_len) int64, of the fixed windows of ``settings.source``."""
    if settings.seq_len < 1 or settings.eval_tokens < 1:
        raise OvertrainError(f"seq_len={settings.seq_len} and eval_tokens={settings.eval_tokens} must be >= 1", "use positive numbers")
    folder = Path(cache_dir) / "eval_text" / f"windows-{eval_text_key(settings, tokenizer_folder)}"
    if not (folder / "windows.npy").is_file():
        started = time.perf_counter()
        log(f"tokenizing eval text {settings.source!r} with the tokenizer of {tokenizer_folder} ...")
        rows, meta = _build_windows(settings, tokenizer_folder)
        with atomic_directory(folder, if_exists="keep") as staging:
            np.save(staging / "windows.npy", rows)
            (staging / "meta.json").write_text(json.dumps({**meta, "settings": asdict(settings), "tokenizer_folder": str(tokenizer_folder)}, indent=2))
        log(f"eval text: {rows.shape[0]} windows of {settings.seq_len} tokens in {time.perf_counter() - started:.1f} s")
    block = torch.from_numpy(np.load(folder / "windows.npy").astype(np.int64))
    return block[:, :-1], block[:, 1:]


def read_eval_documents(settings: EvalTextSettings, max_bytes: int) -> list[str]:
    """Documents of the source in order, stopping once ``max_bytes`` of text are read."""
    from overtrain.data.corpus import iter_documents

    if not settings.source.startswith("hf:") and not Path(settings.source).expanduser().exists():
        raise OvertrainError(f"eval_data {settings.source!r} does not exist", "pass a .txt or .jsonl file, a folder of them, or hf:NAME[:CONFIG]")
    documents, total = [], 0
    try:
        for document in iter_documents(settings.source, text_field=settings.text_field, split=settings.split):
            documents.append(document)
            total += len(document.encode("utf-8"))
            if total >= max_bytes:
                break
    except OvertrainError as error:
        if "has no documents" in error.problem:
            raise OvertrainError(f"eval_data {settings.source!r} holds no text (it is empty or only whitespace)", "pass a file or folder with text in it") from None
        raise OvertrainError(f"eval_data: {error.problem}", error.fix) from None
    return documents


def _build_windows(settings: EvalTextSettings, tokenizer_folder: Path) -> tuple[np.ndarray, dict]:
    documents = read_eval_documents(settings, settings.eval_tokens * TEXT_BYTES_PER_EVAL_TOKEN)
    tokens = encode_documents(documents, tokenizer_folder)
    window = settings.seq_len + 1
    available = len(tokens) // window
    if available == 0:
        raise OvertrainError(
            f"eval_data {settings.source!r} gives {len(tokens):,} tokens, fewer than one window of {window:,}",
            f"give more text (at least ~{window * 4:,} characters: a window is the checkpoint's training sequence length "
            "plus one; from Python, load_probe_target(eval_seq_len=...) sets a shorter one)",
        )
    count = max(1, min(available, settings.eval_tokens // settings.seq_len))
    chosen = np.sort(np.random.default_rng(settings.seed).choice(available, size=count, replace=False))
    rows = np.stack([tokens[start * window : (start + 1) * window] for start in chosen])
    meta = {"documents": len(documents), "tokens": int(len(tokens)), "windows": int(count), "available_windows": int(available)}
    return rows, meta


def encode_documents(documents: list[str], tokenizer_folder: Path) -> np.ndarray:
    """All documents' tokens, no special tokens added, the end-of-sequence token between documents."""
    tokenizer = load_auto_tokenizer(tokenizer_folder)
    separator = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    ids: list[int] = []
    for start in range(0, len(documents), ENCODE_BATCH_DOCUMENTS):
        batch = tokenizer(documents[start : start + ENCODE_BATCH_DOCUMENTS], add_special_tokens=False)["input_ids"]
        for encoded in batch:
            ids += encoded + separator
    dtype = np.uint32 if max(ids, default=0) >= 2**16 else np.uint16
    return np.asarray(ids, dtype=dtype)
