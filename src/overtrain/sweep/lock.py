"""One driver per results store: :func:`driver_lock` holds ``results.sqlite.lock`` next to the store.

Two drivers started on one ``out_dir`` would otherwise both plan the same missing jobs, train the same
checkpoint folders at once and write every row twice. The lock is :mod:`overtrain.process_lock`'s: a
second driver is refused with a message that names the holder, and a driver that died (even by SIGKILL)
releases it at once.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from overtrain.errors import OvertrainError
from overtrain.process_lock import describe_holder, exclusive_lock

__all__ = ["LOCK_SUFFIX", "describe_holder", "driver_lock", "lock_path_of"]

LOCK_SUFFIX = ".lock"


def lock_path_of(store_path: Path) -> Path:
    """The lock file of a store: ``results.sqlite`` -> ``results.sqlite.lock`` in the same folder."""
    store_path = Path(store_path)
    return store_path.with_name(store_path.name + LOCK_SUFFIX)


@contextmanager
def driver_lock(store_path: Path) -> Iterator[Path]:
    """Hold the store's driver lock for the ``with`` block; raise :class:`OvertrainError` if another holds it."""
    path = lock_path_of(store_path)

    def refusal(holder: str) -> OvertrainError:
        return OvertrainError(
            f"another sweep driver is running on {store_path}: {holder}",
            "wait for it to finish (then rerun: only missing jobs run), or stop that process; "
            f"a driver that died releases {path.name} by itself",
        )

    fix = f"make {path.parent} writable, or put the sweep's out_dir (and its results store) in a folder you can write"
    with exclusive_lock(path, refusal, fix):
        yield path
