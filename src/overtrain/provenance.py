"""Where a result came from: code version, machine, library versions, and checkpoint identity.

:func:`collect_provenance` is called once per sweep by the driver and stored with every row;
:func:`file_sha256` and :func:`folder_content_hash` identify a local checkpoint by content (a hub
checkpoint is identified by repo + revision + commit sha instead, see ``overtrain.hub``).
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import socket
import subprocess
import sys
from collections.abc import Mapping
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import overtrain

HASH_CHUNK_BYTES = 1 << 20
LIBRARIES_TO_RECORD = ("torch", "transformers", "numpy", "lm_eval")
GIT_TIMEOUT_SECONDS = 5.0


def collect_provenance(extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Versions, git commit, machine and time, plus ``extra`` (e.g. seed, checkpoint identity).

    Library versions are read from package metadata, so nothing heavy is imported.
    """
    commit, dirty = git_commit_of_source_tree()
    provenance: dict[str, Any] = {
        "overtrain_version": overtrain.__version__,
        "git_commit": commit,
        "git_dirty": dirty,
        "python_version": platform.python_version(),
        "library_versions": {name: installed_version(name) for name in LIBRARIES_TO_RECORD},
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "time_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
    }
    provenance.update(extra or {})
    return provenance


def installed_version(distribution: str) -> str | None:
    """The installed version of a distribution, or ``None`` if it is not installed."""
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


@functools.lru_cache(maxsize=1)
def git_commit_of_source_tree() -> tuple[str | None, bool | None]:
    """(commit sha, has uncommitted changes) of the checkout overtrain is imported from.

    ``(None, None)`` when overtrain is not imported from a git checkout or git is missing.
    """
    package_folder = Path(overtrain.__file__).resolve().parent
    commit = _git_output(package_folder, "rev-parse", "HEAD")
    if commit is None:
        return None, None
    status = _git_output(package_folder, "status", "--porcelain", "--untracked-files=no")
    return commit, (bool(status) if status is not None else None)


def _git_output(folder: Path, *arguments: str) -> str | None:
    try:
        completed = subprocess.run(
            ["git", "-C", str(folder), *arguments],
            capture_output=True,
            text=True,
            timeout=GIT_TIMEOUT_SECONDS,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return completed.stdout.strip() if completed.returncode == 0 else None


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    _feed_file(digest, Path(path))
    return digest.hexdigest()


def folder_content_hash(folder: str | os.PathLike[str]) -> str:
    """Hex sha256 over the relative names and contents of every file under ``folder``, in sorted order.

    Two folders with the same files (names and bytes) hash equal wherever they live; renaming or
    changing any file changes the hash. Temporary leftovers of atomic writes (``*.tmp-*``) are ignored.
    """
    root = Path(folder)
    digest = hashlib.sha256()
    files = sorted(p for p in root.rglob("*") if p.is_file() and ".tmp-" not in p.as_posix())
    for path in files:
        relative_name = path.relative_to(root).as_posix().encode("utf-8")
        digest.update(len(relative_name).to_bytes(8, "little") + relative_name)
        digest.update(path.stat().st_size.to_bytes(8, "little"))
        _feed_file(digest, path)
    return digest.hexdigest()


def _feed_file(digest: Any, path: Path) -> None:
    with open(path, "rb") as handle:
        while chunk := handle.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
