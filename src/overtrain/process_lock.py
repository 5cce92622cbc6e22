"""Exclusive locks held by one process: an OS file lock, released by the OS when its holder dies.

Two processes working on one folder at once (two sweep drivers on one results store, two ``overtrain
pretrain`` on one run folder) would both write the same files, interleaved. :func:`exclusive_lock` takes an
exclusive ``fcntl.flock`` on a lock file; a second process is refused with a message that names the holder
(pid, host, since when, command). The lock belongs to the open file, so a holder killed even with SIGKILL
releases it at once and never blocks the next one; the file itself stays (deleting it would let two
processes lock two different files).

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
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from overtrain.errors import OvertrainError


def describe_holder(holder: dict[str, Any]) -> str:
    """``pid 123 on host h since 2026-01-01T10:00:00+00:00 (overtrain sweep x.yaml)`` from the lock file's JSON."""
    if not holder:
        return "a process that has not yet written its name"
    text = f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')} since {holder.get('since', '?')}"
    return text + (f" ({holder['command']})" if holder.get("command") else "")


@contextlib.contextmanager
def exclusive_lock(path: Path, refusal: Callable[[str], OvertrainError], cannot_create_fix: str) -> Iterator[Path]:
    """Hold the lock file ``path`` for the ``with`` block. If another process holds it, raise
    ``refusal(description of the holder)``; if the file cannot be created, say so with ``cannot_create_fix``."""
    path = Path(path)
    descriptor = _open_lock_file(path, cannot_create_fix)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise refusal(describe_holder(_read_holder(path))) from None
        _write_holder(descriptor)
        try:
            yield path
        finally:
            os.ftruncate(descriptor, 0)
            fcntl.flock(descriptor, fcntl.LOCK_UN)
    finally:
        os.close(descriptor)


def _open_lock_file(path: Path, cannot_create_fix: str) -> int:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as error:
        raise OvertrainError(f"cannot create the lock file {path} ({error.strerror or error})", cannot_create_fix) from None


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
