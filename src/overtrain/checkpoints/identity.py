"""Who a checkpoint is: where it came from and a hash of its weights, as one JSON-ready dict.

Every probe target carries an identity (``target.identity``) with the same keys whatever its source:

- ``kind``: ``overtrain`` (our checkpoint), ``local`` (a Hugging Face folder) or ``hub`` (``hf:ORG/NAME@REV``);
- ``reference``: what the user passed (a path or ``hf:ORG/NAME@REVISION``);
- ``path``: the absolute folder the weights were read from (a snapshot folder for Hub models);
- ``repo``, ``revision``, ``commit``: the Hub repository, the revision asked for and the commit sha it
  resolved to (``None`` for local folders);
- ``weights_sha256``: sha256 of the weight file when there is one (it then equals the Hub's LFS sha256 of
  ``model.safetensors``), else sha256 over the lines ``NAME SHA256`` of every shard, sorted by name;
- ``weight_files``: ``{file name: sha256}``;
- ``architecture``: the ``architectures[0]`` of config.json; ``implementation``: ``overtrain-llama`` or
  ``transformers``;
- ``tokens_seen``: pre-training tokens when known (our checkpoints), else ``None``.

Two revisions of one repository never share an identity (different commit and weights hash), and the
same weights at two paths share ``weights_sha256``. Hashing a large file takes seconds; the result is
cached in ``CACHE_DIR/file_sha256.json`` keyed by absolute path, size and modification time.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from overtrain.atomic import atomic_write_json
from overtrain.provenance import file_sha256

HASH_CACHE_FILE = "file_sha256.json"
IDENTITY_KEYS = (
    "kind", "reference", "path", "repo", "revision", "commit", "weights_sha256", "weight_files",
    "architecture", "implementation", "tokens_seen",
)


def overtrain_cache_dir() -> Path:
    """``$OVERTRAIN_CACHE_DIR``, else ``$XDG_CACHE_HOME/overtrain``, else ``~/.cache/overtrain``."""
    explicit = os.environ.get("OVERTRAIN_CACHE_DIR")
    if explicit:
        return Path(explicit)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "overtrain"


def cached_file_sha256(path: Path, cache_dir: Path | None = None) -> str:
    """sha256 of ``path``, reused while its absolute path, size and mtime are unchanged."""
    path = Path(path).resolve()
    stat = path.stat()
    key = f"{path}|{stat.st_size}|{stat.st_mtime_ns}"
    cache_file = (cache_dir or overtrain_cache_dir()) / HASH_CACHE_FILE
    cache = _read_cache(cache_file)
    if key in cache:
        return cache[key]
    digest = file_sha256(path)
    cache = _read_cache(cache_file)  # another process may have written meanwhile
    cache[key] = digest
    try:
        atomic_write_json(cache_file, cache)
    except OSError:
        pass  # a read-only cache location only costs a rehash next time
    return digest


def _read_cache(cache_file: Path) -> dict[str, str]:
    try:
        loaded = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        return {}
    return loaded if isinstance(loaded, dict) else {}


def combined_sha256(file_hashes: dict[str, str]) -> str:
    """One file: its own sha256. Several: sha256 of ``NAME SHA256`` lines sorted by name."""
    if len(file_hashes) == 1:
        return next(iter(file_hashes.values()))
    lines = "".join(f"{name} {digest}\n" for name, digest in sorted(file_hashes.items()))
    return hashlib.sha256(lines.encode()).hexdigest()


def weight_file_hashes(files: Sequence[Path], cache_dir: Path | None = None) -> dict[str, str]:
    """``{file name: sha256}`` of the weight files."""
    return {Path(file).name: cached_file_sha256(Path(file), cache_dir) for file in files}


def make_identity(**fields: Any) -> dict[str, Any]:
    """An identity dict with every key of :data:`IDENTITY_KEYS` (missing ones are ``None``)."""
    unknown = set(fields) - set(IDENTITY_KEYS)
    if unknown:
        raise ValueError(f"unknown identity keys {sorted(unknown)}")
    return {key: fields.get(key) for key in IDENTITY_KEYS}
