"""Do the files a stored row points to still exist and hold what the job wrote? (cheaply)

When the driver stores a row it records, for every file of every artifact (``row.artifacts``, e.g.
``{"checkpoint": "runs/x/checkpoints/step-..."}``), its size, modification time and sha256
(``provenance["artifact_files"]``). The files a checkpoint checksums itself (its tensors, and since
2026-12-01 its config.json and tokenizer files) are not hashed again: their sha256 is read from the
``checksums`` of its ``overtrain.json``. Checking a row later stats its files and hashes
only those whose size or modification time changed, so a finished sweep re-checks its artifacts in
milliseconds, and a deleted, truncated or altered file (a bit flip written by any program changes the
modification time) is found. A row stored before fingerprints existed is verified once by hash (a
checkpoint against its own checksums and the row's ``checkpoint_sha256``) and then fingerprinted.

Limit: a change that keeps both size and modification time (a disk error below the file system, or a
tool that restores mtimes) is not seen here; loading a checkpoint verifies its checksums again and names it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from overtrain.atomic import TEMPORARY_MARK
from overtrain.provenance import file_sha256

FINGERPRINT_KEY = "artifact_files"
"""Provenance entry: artifact name -> {relative file name: [size, mtime_ns, sha256]}."""
CHECKPOINT_METADATA = "overtrain.json"
"""``overtrain.checkpoints.folder.METADATA_FILE``, not imported here because that module imports torch."""

Fingerprint = dict[str, list[Any]]


@dataclass(frozen=True)
class ArtifactCheck:
    """The outcome of checking one row: a problem (None if intact) and fresh fingerprints to store, if any."""

    problem: str | None = None
    refreshed: dict[str, Fingerprint] | None = None
    """Set when the files are intact but their stats changed (or were never recorded): store these."""


def fingerprint_artifacts(artifacts: dict[str, str]) -> dict[str, Fingerprint]:
    """Size, mtime and sha256 of every file of every artifact that exists (missing ones are left out)."""
    return {name: _fingerprint(Path(path)) for name, path in artifacts.items() if Path(path).exists()}


def check_artifacts(artifacts: dict[str, str], provenance: dict[str, Any], hash_files: bool = True) -> ArtifactCheck:
    """Whether the artifacts a row points to are intact, hashing only files whose modification time changed
    at the recorded size. ``hash_files=False`` (a dry run's look) hashes nothing: it finds missing files and
    changed sizes, and leaves a file that needs hashing to tell to the run (no fresh fingerprints then)."""
    recorded: dict[str, Fingerprint] = provenance.get(FINGERPRINT_KEY) or {}
    refreshed, changed = {}, False
    for name, text in artifacts.items():
        path = Path(text)
        if not path.exists():
            return ArtifactCheck(problem=f"its {name} {path} is missing")
        if name in recorded:
            problem, fingerprint = _compare(path, recorded[name], hash_files)
        elif hash_files:
            problem, fingerprint = _verify_unrecorded(path, provenance)
        else:
            continue  # a row stored before fingerprints: only hashing can verify it
        if problem:
            return ArtifactCheck(problem=f"its {name} {path} is damaged: {problem}")
        changed |= fingerprint != recorded.get(name)
        refreshed[name] = fingerprint
    return ArtifactCheck(refreshed=refreshed if changed and hash_files else None)  # unhashed stats are never recorded


def _files_of(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return sorted(p for p in path.rglob("*") if p.is_file() and TEMPORARY_MARK not in p.name)


def _relative(path: Path, root: Path) -> str:
    return path.name if path == root else path.relative_to(root).as_posix()


def _stats(path: Path) -> tuple[int, int]:
    status = path.stat()
    return status.st_size, status.st_mtime_ns


def _recorded_checksums(root: Path) -> dict[str, str]:
    """The files' sha256 that a checkpoint's ``overtrain.json`` records (empty for other folders)."""
    metadata = root / CHECKPOINT_METADATA if root.is_dir() else None
    if metadata is None or not metadata.is_file():
        return {}
    try:
        checksums = json.loads(metadata.read_text(encoding="utf-8")).get("checksums", {})
    except (OSError, ValueError, AttributeError):
        return {}
    return checksums if isinstance(checksums, dict) else {}


def _fingerprint(root: Path) -> Fingerprint:
    known = _recorded_checksums(root)
    fingerprint = {}
    for path in _files_of(root):
        name = _relative(path, root)
        fingerprint[name] = [*_stats(path), known.get(name) or file_sha256(path)]
    return fingerprint


def _compare(root: Path, recorded: Fingerprint, hash_files: bool = True) -> tuple[str | None, Fingerprint]:
    """Check ``root`` against its recorded fingerprint: a changed size is damage, a changed modification time
    at the same size is hashed (unless ``hash_files`` is false, when the file is left for the run to hash)."""
    current = {}
    for name, (size, mtime_ns, sha256) in recorded.items():
        path = root / name if root.is_dir() else root
        if not path.is_file():
            return f"{name} is missing", {}
        stats = _stats(path)
        damaged = stats[0] != size or (stats[1] != mtime_ns and hash_files and file_sha256(path) != sha256)
        if damaged:
            return f"{name} no longer matches the sha256 recorded when the job finished", {}
        current[name] = [*stats, sha256]
    return None, current


def _verify_unrecorded(root: Path, provenance: dict[str, Any]) -> tuple[str | None, Fingerprint]:
    """A row stored before fingerprints: verify a checkpoint against its own checksums, once, then fingerprint."""
    checksums = _recorded_checksums(root)
    if root.is_dir() and (root / CHECKPOINT_METADATA).is_file():
        if not checksums:
            return f"its {CHECKPOINT_METADATA} records no checksums, so it cannot be verified", {}
        expected_model = provenance.get("checkpoint_sha256")
        if expected_model and checksums.get("model.safetensors") != expected_model:
            return "model.safetensors is not the one the job wrote (checkpoint_sha256 differs)", {}
        for name, sha256 in checksums.items():
            if not (root / name).is_file() or file_sha256(root / name) != sha256:
                return f"{name} is missing or does not match its checksum in {CHECKPOINT_METADATA}", {}
    return None, _fingerprint(root)
