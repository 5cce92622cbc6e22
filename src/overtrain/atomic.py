"""Atomic writes: a file or folder either appears whole under its final name, or not at all.

Everything is first written under a temporary sibling name and then renamed, which is atomic on POSIX
file systems. A crash (even SIGKILL) can leave a ``.tmp-*`` sibling behind, never a half-written file
under the final name; :func:`remove_stale_temporaries` sweeps those up on the next run.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

TEMPORARY_MARK = ".tmp-"


def _default_mode(requested: int = 0o666) -> int:
    """``requested`` less the umask: what open() or mkdir() would give (mkstemp and mkdtemp give 0o600
    and 0o700, which would hide results from the other users of a shared machine)."""
    umask = os.umask(0)
    os.umask(umask)
    return requested & ~umask


@contextlib.contextmanager
def atomic_directory(final_path: Path, *, if_exists: Literal["replace", "keep"] = "replace") -> Iterator[Path]:
    """Yield a temporary folder; on success it becomes ``final_path``, on error it is removed.

    When ``final_path`` exists by the time the folder is published (an earlier run, or a concurrent writer
    such as another DDP rank filling the same content-addressed cache), ``if_exists`` decides: ``"replace"``
    swaps the new folder in, ``"keep"`` leaves the existing one and drops the new one. Use ``"keep"`` for
    caches whose name is a hash of their content: both writers built the same thing, the first one wins.
    On error, the parent folders this call created are removed too when they are still empty (a cache
    folder is not left behind by a run that wrote nothing into it).
    """
    final_path = Path(final_path)
    created = _make_folders(final_path.parent)
    temporary = Path(tempfile.mkdtemp(prefix=final_path.name + TEMPORARY_MARK, dir=final_path.parent))
    temporary.chmod(_default_mode(0o777))
    try:
        yield temporary
        _fsync_tree(temporary)
        _publish_directory(temporary, final_path, if_exists)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        for folder in created:  # deepest first; rmdir refuses a folder another writer has put something in
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise


def _make_folders(folder: Path) -> list[Path]:
    """``mkdir -p folder``; returns the folders it had to create, deepest first."""
    missing = list(itertools.takewhile(lambda path: not path.exists(), (folder, *folder.parents)))
    folder.mkdir(parents=True, exist_ok=True)
    return missing


_TARGET_EXISTS = (errno.ENOTEMPTY, errno.EEXIST)
_PUBLISH_ATTEMPTS = 5


def _publish_directory(temporary: Path, final_path: Path, if_exists: str) -> None:
    # rename() is atomic and fails when another folder took the name first, so there is no check-then-act
    # window between two writers (an exists() test before the rename raced, and a DDP rank lost).
    for _ in range(_PUBLISH_ATTEMPTS):
        try:
            os.rename(temporary, final_path)
            return
        except OSError as error:
            if error.errno not in _TARGET_EXISTS:
                raise
        if if_exists == "keep":
            shutil.rmtree(temporary, ignore_errors=True)
            return
        _move_aside_and_drop(final_path)
    raise OSError(errno.EEXIST, f"{final_path} kept being recreated by another writer; giving up after {_PUBLISH_ATTEMPTS} attempts")


def _move_aside_and_drop(final_path: Path) -> None:
    # os.rename cannot overwrite a non-empty folder: move the old one aside under a unique name, then drop it.
    doomed = Path(tempfile.mkdtemp(prefix=final_path.name + TEMPORARY_MARK + "old-", dir=final_path.parent))
    try:
        os.rename(final_path, doomed / final_path.name)
    except FileNotFoundError:  # another writer moved it first; the next rename attempt decides
        pass
    shutil.rmtree(doomed, ignore_errors=True)


def _fsync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=path.name + TEMPORARY_MARK, dir=path.parent)
    try:
        os.fchmod(descriptor, _default_mode())
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete ``*.tmp-*`` leftovers of killed writers directly inside ``folder``; returns what was removed."""
    removed = []
    if not Path(folder).is_dir():
        return removed
    for path in Path(folder).iterdir():
        if TEMPORARY_MARK in path.name:
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def nearest_existing(path: Path) -> Path:
    """``path`` itself if it exists, else its nearest existing ancestor (a folder, or a file in the way)."""
    path = Path(path).absolute()
    return next(candidate for candidate in (path, *path.parents) if candidate.exists())


def ensure_writable_folder(folder: Path, what: str, key: str) -> None:
    """Prove that ``folder`` can take a new file (or be created), before any work would be lost.

    Nothing is left behind: the probe file goes into ``folder`` if it exists, or else into its nearest
    existing ancestor, and is removed at once. A read-only folder, a path under a regular file or a full
    disk becomes an ``OvertrainError`` that names ``what`` and the setting (``key``) that chooses it.
    """
    from overtrain.errors import OvertrainError

    folder = Path(folder).absolute()
    existing = nearest_existing(folder)
    if not existing.is_dir():
        raise OvertrainError(
            f"cannot write to {what} {folder}: {existing} is a file, not a folder, so no folder can be made there",
            f"set {key} to another folder (one not under the file {existing}), or move that file aside",
        )
    try:
        descriptor, probe = tempfile.mkstemp(prefix="write-probe" + TEMPORARY_MARK, dir=existing)
        os.close(descriptor)
        os.unlink(probe)
    except OSError as error:
        raise OvertrainError(
            f"cannot write to {what} {folder} ({error.strerror or error})",
            f"make it writable (e.g. chmod u+w), or set {key} to a folder you can write",
        ) from None


def ensure_writable_file(path: Path, what: str, key: str) -> None:
    """Prove that the file ``path`` can be written (replaced if it exists), before any work would be lost.

    An existing folder under that name, a parent that is a regular file, or a read-only parent becomes an
    ``OvertrainError`` naming ``what`` and the setting (``key``) that chooses it; nothing is left behind.
    """
    from overtrain.errors import OvertrainError

    path = Path(path)
    if path.is_dir():
        raise OvertrainError(f"{what} {path} is a folder, not a file", f"set {key} to a file name, e.g. {path.absolute() / 'out.json'}")
    try:
        ensure_writable_folder(path.absolute().parent, f"the folder of {what}", key)
    except OvertrainError as error:  # the setting names a file: say so in the fix
        raise OvertrainError(error.problem, f"set {key} to a file in a folder you can write, or make that folder writable") from None
