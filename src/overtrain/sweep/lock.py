"""One driver per results store: an OS file lock next to the store, released by the OS when its holder dies.

Two drivers started on one ``out_dir`` would otherwise both plan the same missing jobs, train the same
checkpoint folders at once and write every row twice. :func:`driver_lock` takes an exclusive
``fcntl.flock`` on ``results.sqlite.lock``; a second driver is refused with a message that names the
holder (pid, host, since when, command). The lock belongs to the open file, so a driver killed even with
SIGKILL releases it at once and never blocks the next one; the file itself stays (deleting it would let
two drivers lock two different files).

``flock`` works on local file systems and, on Linux, on NFS (where the server releases a dead client's
locks when its lease expires).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from overtrain.errors import OvertrainError

LOCK_SUFFIX = ".lock"


def lock_path_of(store_path: Path) -> Path:
    """The lock file of a store: ``results.sqlite`` -> ``results.sqlite.lock`` in the same folder."""
    store_path = Path(store_path)
    return store_path.with_name(store_path.name + LOCK_SUFFIX)


def describe_holder(holder: dict[str, Any]) -> str:
    """``pid 123 on host h since 2026-01-01T10:00:00+00:00 (overtrain sweep x.yaml)`` from the lock file's JSON."""
    if not holder:
        return "a driver that has not yet written its name"
    text = f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')} since {holder.get('since', '?')}"
    return text + (f" ({holder['command']})" if holder.get("command") else "")


@contextlib.contextmanager
def driver_lock(store_path: Path) -> Iterator[Path]:
    """Hold the store's driver lock for the ``with`` block; raise :class:`OvertrainError` if another holds it."""
    path = lock_path_of(store_path)
    descriptor = _open_lock_file(path)
    try:
        _take_or_refuse(descriptor, path, Path(store_path))
        _write_holder(descriptor)
        try:
            yield path
        finally:
            os.ftruncate(descriptor, 0)
            fcntl.flock(descriptor, fcntl.LOCK_UN)
    finally:
        os.close(descriptor)


def _open_lock_file(path: Path) -> int:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as error:
        raise OvertrainError(
            f"cannot create the driver lock {path} ({error.strerror or error})",
            f"make {path.parent} writable, or put the sweep's out_dir (and its results store) in a folder you can write",
        ) from None


def _take_or_refuse(descriptor: int, path: Path, store_path: Path) -> None:
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _read_holder(path)
        raise OvertrainError(
            f"another sweep driver is running on {store_path}: {describe_holder(holder)}",
            "wait for it to finish (then rerun: only missing jobs run), or stop that process; "
            f"a driver that died releases {path.name} by itself",
        ) from None


def _write_holder(descriptor: int) -> None:
    holder = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "since": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv)[:300],
    }
    os.ftruncate(descriptor, 0)
    os.pwrite(descriptor, json.dumps(holder).encode("utf-8"), 0)


def _read_holder(path: Path) -> dict[str, Any]:
    try:
        holder = json.loads(path.read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}
