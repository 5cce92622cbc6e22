"""The results store: one SQLite row per finished job, keyed by :attr:`overtrain.results.records.Job.key`.

SQLite in WAL mode with full synchronous commits: every :meth:`ResultStore.put` is one transaction, so a
crash (even SIGKILL) or a second writer can lose at most the row being written, never corrupt the file.
Concurrent writers wait for each other (``busy_timeout``) instead of failing. Rows hold the job's full
spec, its metrics, artifacts and provenance as JSON; :meth:`ResultStore.to_dataframe` flattens them into
``spec.*`` and ``metrics.*`` columns for analysis.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import shlex
import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, final

from overtrain.atomic import atomic_write_bytes, nearest_existing
from overtrain.errors import OvertrainError
from overtrain.results.records import Job, JobOutput

if TYPE_CHECKING:
    import pandas

SQLITE_HEADER = b"SQLite format 3\x00"
APPLICATION_ID = 0x4F565452  # "OVTR" in the SQLite header marks a file as an overtrain store
SCHEMA_VERSION = 1
BUSY_TIMEOUT_SECONDS = 60.0
COLUMNS = (
    "key", "kind", "label", "spec_json", "metrics_json", "artifacts_json", "provenance_json",
    "seconds", "finished_at", "overtrain_version", "git_commit",
)  # fmt: skip
CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS results (
    key TEXT PRIMARY KEY, kind TEXT NOT NULL, label TEXT NOT NULL, spec_json TEXT NOT NULL,
    metrics_json TEXT NOT NULL, artifacts_json TEXT NOT NULL, provenance_json TEXT NOT NULL,
    seconds REAL NOT NULL, finished_at TEXT NOT NULL, overtrain_version TEXT, git_commit TEXT
)"""


@dataclass(frozen=True)
class ResultRow:
    """One finished job as stored, with the JSON columns parsed."""

    key: str
    kind: str
    label: str
    spec: dict[str, Any]
    metrics: dict[str, Any]
    artifacts: dict[str, str]
    provenance: dict[str, Any]
    seconds: float
    finished_at: str
    overtrain_version: str | None
    git_commit: str | None


@final
class ResultStore:
    """An SQLite file of finished jobs; safe against crashes and concurrent writers.

    Use as a context manager or call :meth:`close`. Opening a file that is not an overtrain store
    (or is damaged) raises :class:`OvertrainError` naming the file and what to do.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        _refuse_non_sqlite_file(self.path)
        with _sidecars_removed_on_refusal(self.path):
            self._connection = _connect(self.path)
            try:
                _prepare_waiting_for_other_openers(self._connection, self.path)
            except sqlite3.DatabaseError as error:
                self._connection.close()
                if _is_access_error(error):
                    raise _unwritable_store_error(self.path, error) from None
                if _is_lock_error(error):
                    raise _busy_store_error(self.path, error) from None
                raise _damaged_store_error(self.path, error) from error
            except BaseException:
                self._connection.close()
                raise

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection (the data is already on disk after every put)."""
        self._connection.close()

    def __len__(self) -> int:
        return self._connection.execute("SELECT COUNT(*) FROM results").fetchone()[0]

    def has(self, key: str) -> bool:
        """Whether a job with this key has finished."""
        row = self._connection.execute("SELECT 1 FROM results WHERE key = ?", (key,)).fetchone()
        return row is not None

    def finished_keys(self) -> set[str]:
        """Keys of all finished jobs."""
        return {key for (key,) in self._connection.execute("SELECT key FROM results")}

    def put(self, job: Job, output: JobOutput, provenance: Mapping[str, Any], seconds: float) -> None:
        """Store a finished job in one transaction (a re-run of the same key replaces the row)."""
        values = _row_values(job, output, provenance, seconds)
        placeholders = ", ".join("?" for _ in COLUMNS)
        with self._transaction() as connection:
            connection.execute(f"INSERT OR REPLACE INTO results ({', '.join(COLUMNS)}) VALUES ({placeholders})", values)

    def delete(self, keys: Iterable[str]) -> int:
        """Remove the rows of ``keys`` in one transaction (their jobs then count as not run); returns how many."""
        keys = list(keys)
        with self._transaction() as connection:
            removed = sum(connection.execute("DELETE FROM results WHERE key = ?", (key,)).rowcount for key in keys)
        return removed

    def update_provenance(self, key: str, entries: Mapping[str, Any]) -> None:
        """Merge ``entries`` into the provenance of the row ``key`` (no-op if there is no such row)."""
        with self._transaction() as connection:
            row = connection.execute("SELECT provenance_json FROM results WHERE key = ?", (key,)).fetchone()
            if row is not None:
                merged = {**json.loads(row[0]), **dict(entries)}
                text = json.dumps(merged, sort_keys=True, default=str)
                connection.execute("UPDATE results SET provenance_json = ? WHERE key = ?", (text, key))

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        connection = self._connection
        connection.execute("BEGIN IMMEDIATE")
        try:
            yield connection
            connection.execute("COMMIT")
        except BaseException:
            connection.execute("ROLLBACK")
            raise

    def get(self, key: str) -> ResultRow | None:
        """The row of a finished job, or ``None``."""
        cursor = self._connection.execute(f"SELECT {', '.join(COLUMNS)} FROM results WHERE key = ?", (key,))
        row = cursor.fetchone()
        return None if row is None else _parse_row(row, self.path)

    def rows(self, kind: str | None = None) -> list[ResultRow]:
        """All rows (or those of one job kind), oldest first."""
        query = f"SELECT {', '.join(COLUMNS)} FROM results"
        parameters: tuple[str, ...] = ()
        if kind is not None:
            query, parameters = query + " WHERE kind = ?", (kind,)
        return [_parse_row(row, self.path) for row in self._connection.execute(query + " ORDER BY finished_at, key", parameters)]

    def to_dataframe(self, kind: str | None = None) -> pandas.DataFrame:
        """One line per row; nested spec and metrics flattened to ``spec.a.b`` / ``metrics.x`` columns."""
        import pandas

        records = [_flat_record(row) for row in self.rows(kind)]
        columns = ["key", "kind", "label", "seconds", "finished_at", "overtrain_version", "git_commit"]
        frame = pandas.DataFrame.from_records(records)
        return frame if records else pandas.DataFrame(columns=columns)

    def export(self, path: str | Path, kind: str | None = None) -> Path:
        """Write the table as ``.csv`` or ``.parquet`` (chosen by suffix), atomically; returns the path."""
        path = Path(path)
        writers = {".csv": _csv_bytes, ".parquet": _parquet_bytes}
        if path.suffix.lower() not in writers:
            raise OvertrainError(
                f"cannot export results to {path}: unknown file type {path.suffix or '(none)'!r}",
                "name the output file *.csv or *.parquet",
            )
        if path.is_dir():
            raise OvertrainError(f"cannot export results to {path}: it is a folder", f"name a file, e.g. {path / 'results.csv'}")
        frame = _json_encode_nested_cells(self.to_dataframe(kind)).convert_dtypes()
        try:
            atomic_write_bytes(path, writers[path.suffix.lower()](frame))
        except OSError as error:
            raise OvertrainError(
                f"cannot write {path} ({error.strerror or error})", f"make {path.parent} writable, or export to another path"
            ) from None
        return path


def _refuse_non_sqlite_file(path: Path) -> None:
    if path.is_dir():
        raise OvertrainError(
            f"results store {path} is a folder, not a file",
            f"move the folder {path} aside (the store is a file of that name), or {OTHER_STORE_FOLDER}",
        )
    if not path.exists() or path.stat().st_size == 0:
        return
    with open(path, "rb") as handle:
        header = handle.read(len(SQLITE_HEADER))
    if header != SQLITE_HEADER:
        raise OvertrainError(
            f"{path} is not an SQLite file, so it cannot be an overtrain results store",
            "to read results, pass the results.sqlite a sweep or probe wrote (or its folder); to write a store here, "
            "choose another path, or move this file aside if it was damaged (finished jobs are then run again)",
        )


def stored_keys(path: str | Path) -> set[str]:
    """Keys of the finished jobs in the store at ``path``, read without creating, locking or changing
    anything (a dry run's view); no file is no keys, a damaged file one clear message."""
    return {key for (key,) in _read_only_query(Path(path), "SELECT key FROM results")}


def stored_rows(path: str | Path) -> list[ResultRow]:
    """The rows of the store at ``path``, read as :func:`stored_keys` reads its keys (nothing created or changed)."""
    return [_parse_row(row, Path(path)) for row in _read_only_query(Path(path), f"SELECT {', '.join(COLUMNS)} FROM results ORDER BY finished_at, key")]


def _read_only_query(path: Path, query: str) -> list[tuple[Any, ...]]:
    """Every row ``query`` returns from the store at ``path`` opened read-only; none if there is no file, or
    an empty one (which a sweep or probe then makes a store, as it makes a new one)."""
    if not path.is_file() or path.stat().st_size == 0:
        return []
    with _read_only_connection(path) as connection:
        _check_schema(connection, path)
        return connection.execute(query).fetchall()


@contextlib.contextmanager
def _read_only_connection(path: Path) -> Iterator[sqlite3.Connection]:
    """The SQLite file at ``path`` opened for reading only (nothing created or changed); SQLite's errors on it
    become the damaged-store message, or the busy one where another process held it locked past the timeout."""
    with _sidecars_removed_on_refusal(path):
        try:
            connection = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_SECONDS)
            try:
                yield connection
            finally:
                connection.close()
        except sqlite3.DatabaseError as error:
            raise (_busy_store_error if _is_lock_error(error) else _damaged_store_error)(path, error) from None


SIDECAR_SUFFIXES = ("-wal", "-shm")
"""SQLite's files beside a database in WAL mode, which any connection to it may create."""


@contextlib.contextmanager
def _sidecars_removed_on_refusal(path: Path) -> Iterator[None]:
    """Where the store is refused (damaged, another program's), remove the -wal and -shm files that opening it
    created: a refused store is left as it was found, not with two new files beside it. Files that were
    there before are left alone (another process may be using them)."""
    sidecars = [path.with_name(path.name + suffix) for suffix in SIDECAR_SUFFIXES]
    existed = {sidecar for sidecar in sidecars if sidecar.exists()}
    try:
        yield
    except StoreBusyError:
        raise  # another process holds the store: its files are in use
    except OvertrainError:
        for sidecar in sidecars:
            if sidecar not in existed:
                with contextlib.suppress(OSError):  # a folder we may not write: nothing was created there either
                    sidecar.unlink(missing_ok=True)
        raise


def _connect(path: Path) -> sqlite3.Connection:
    """Open (or create) the SQLite file; a folder that cannot hold it becomes one clear message."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return sqlite3.connect(path, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None)
    except (OSError, sqlite3.OperationalError) as error:
        raise _unwritable_store_error(path, error) from None


def _is_access_error(error: sqlite3.DatabaseError) -> bool:
    """SQLite's words for a file or folder it may not write (as opposed to a damaged file)."""
    text = str(error).lower()
    return any(words in text for words in ("readonly", "read-only", "unable to open", "disk i/o error", "permission"))


OTHER_STORE_FOLDER = "write the results to another folder (a sweep's out_dir, a probe verb's --out)"


def _unwritable_store_error(path: Path, error: BaseException) -> OvertrainError:
    blocker = nearest_existing(path.parent)
    if not blocker.is_dir():  # a regular file where a folder of the path should be: no chmod helps
        return OvertrainError(
            f"cannot open the results store {path} for writing: {blocker} is a file, not a folder, so the store's folder cannot be made",
            f"{OTHER_STORE_FOLDER}, or move the file {blocker} aside",
        )
    reason = getattr(error, "strerror", None) or str(error)
    return OvertrainError(
        f"cannot open the results store {path} for writing ({reason})",
        f"make {path.parent} and {path.name} writable, or {OTHER_STORE_FOLDER}",
    )


def require_results_store(path: Path) -> None:
    """Refuse, without changing the file, an SQLite file that is not an overtrain store (another program's,
    or one without overtrain's table): what a reader such as the report checks before opening it."""
    _refuse_non_sqlite_file(path)
    with _read_only_connection(path) as connection:
        _check_schema(connection, path)


OPEN_ATTEMPTS = 5
"""Times :class:`ResultStore` tries to prepare a store that another process holds locked (see below)."""


def _prepare_waiting_for_other_openers(connection: sqlite3.Connection, path: Path) -> None:
    """:func:`_prepare`, tried again while SQLite answers "database is locked". Two processes that open a new
    store at the same moment (two sweep drivers started together: the second is refused by the driver lock
    only after it opened the store) both read it, then both ask for the exclusive lock that switching to
    WAL takes; SQLite then fails one of them at once instead of waiting (its busy timeout would deadlock),
    so waiting is done here. A lock held longer than the busy timeout fails every attempt as well."""
    for attempt in range(OPEN_ATTEMPTS):
        try:
            _prepare(connection, path)
            return
        except sqlite3.OperationalError as error:
            if not _is_lock_error(error) or attempt == OPEN_ATTEMPTS - 1:
                raise
            time.sleep(0.05 * 2**attempt)


def _is_lock_error(error: sqlite3.DatabaseError) -> bool:
    """SQLite's "database is locked" (SQLITE_BUSY): another connection holds the lock, nothing is damaged."""
    return isinstance(error, sqlite3.OperationalError) and "locked" in str(error).lower()


class StoreBusyError(OvertrainError):
    """The store stayed locked by another process: nothing is wrong with it."""


def _busy_store_error(path: Path, error: sqlite3.DatabaseError) -> OvertrainError:
    return StoreBusyError(
        f"results store {path} stayed locked by another process ({error})",
        "wait for the sweep or probe writing it to finish (or stop it), then rerun; nothing in the store is damaged",
    )


def _prepare(connection: sqlite3.Connection, path: Path) -> None:
    connection.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_SECONDS * 1000)}")
    if connection.execute("PRAGMA quick_check").fetchone()[0] != "ok":
        raise sqlite3.DatabaseError("quick_check found damage")
    connection.execute("BEGIN IMMEDIATE")  # the schema first: a database that is refused is left as it was
    try:
        _create_or_check_schema(connection, path)
        connection.execute("COMMIT")
    except BaseException:
        connection.execute("ROLLBACK")
        raise
    connection.execute("PRAGMA journal_mode = WAL")
    connection.execute("PRAGMA synchronous = FULL")


def _create_or_check_schema(connection: sqlite3.Connection, path: Path) -> None:
    application_id = connection.execute("PRAGMA application_id").fetchone()[0]
    tables = {name for (name,) in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if application_id == 0 and not tables:
        connection.execute(CREATE_TABLE)
        connection.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        return
    _check_schema(connection, path)


def _check_schema(connection: sqlite3.Connection, path: Path) -> None:
    """Refuse a database that is not an overtrain store (another program's, or an empty one)."""
    application_id = connection.execute("PRAGMA application_id").fetchone()[0]
    tables = {name for (name,) in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    columns = {row[1] for row in connection.execute("PRAGMA table_info(results)")}
    if application_id == APPLICATION_ID and not set(COLUMNS) <= columns:  # ours, with its table gone or cut
        missing = sorted(set(COLUMNS) - columns)
        raise _damaged_store_error(path, sqlite3.DatabaseError(f"its results table lacks {', '.join(missing)}" if columns else "no results table"))
    if application_id != APPLICATION_ID:
        raise OvertrainError(
            f"{path} is an SQLite database but not an overtrain results store (tables: {sorted(tables)})",
            "choose another path for the results store; overtrain does not write into other databases",
        )


def _damaged_store_error(path: Path, error: sqlite3.DatabaseError) -> OvertrainError:
    return OvertrainError(
        f"results store {path} cannot be read ({error}); it is damaged or not an SQLite file",
        f"move {path} (and any {path.name}-wal / {path.name}-shm next to it) aside and rerun the sweep or probe that wrote it: "
        "its finished jobs are then run again",
    )


def _row_values(job: Job, output: JobOutput, provenance: Mapping[str, Any], seconds: float) -> tuple[Any, ...]:
    finished_at = datetime.now(timezone.utc).isoformat(timespec="microseconds")
    return (
        job.key,
        job.kind,
        job.label,
        json.dumps(job.spec, sort_keys=True),
        json.dumps(output.metrics, sort_keys=True),
        json.dumps(output.artifacts, sort_keys=True),
        json.dumps(dict(provenance), sort_keys=True, default=str),
        float(seconds),
        finished_at,
        provenance.get("overtrain_version"),
        provenance.get("git_commit"),
    )


def _parse_row(row: tuple[Any, ...], path: Path) -> ResultRow:
    values = dict(zip(COLUMNS, row, strict=True))
    parsed = {column: _json_object_of(values, column, path) for column in ("spec_json", "metrics_json", "artifacts_json", "provenance_json")}
    return ResultRow(
        key=values["key"],
        kind=values["kind"],
        label=values["label"],
        spec=parsed["spec_json"],
        metrics=parsed["metrics_json"],
        artifacts=parsed["artifacts_json"],
        provenance=parsed["provenance_json"],
        seconds=values["seconds"],
        finished_at=values["finished_at"],
        overtrain_version=values["overtrain_version"],
        git_commit=values["git_commit"],
    )


def _json_object_of(values: dict[str, Any], column: str, path: Path) -> dict[str, Any]:
    """The JSON object a row of the store at ``path`` holds in ``column``; a damaged one is named with the row
    and the way out."""
    try:
        parsed = json.loads(values[column])
    except (TypeError, ValueError) as error:
        parsed, detail = None, f"{type(error).__name__}: {error}"
    else:
        detail = f"a JSON {type(parsed).__name__}, not an object"
    if isinstance(parsed, dict):
        return parsed
    key = values["key"]
    raise OvertrainError(
        f"the row of job {key} ({values['label']}) in results store {path} is damaged: its {column} column holds {detail}",
        delete_row_fix(path, key),
    )


def delete_row_fix(path: Path, key: str) -> str:
    """The way out of one bad row of the store at ``path``: the command that deletes it (the path quoted for
    the shell), and what happens next."""
    return (f"delete that row (sqlite3 {shlex.quote(str(path))} \"DELETE FROM results WHERE key = '{key}'\") and rerun "
            "the sweep: a planned job without its row runs again")


def _flat_record(row: ResultRow) -> dict[str, Any]:
    record: dict[str, Any] = {
        "key": row.key, "kind": row.kind, "label": row.label, "seconds": row.seconds,
        "finished_at": row.finished_at, "overtrain_version": row.overtrain_version, "git_commit": row.git_commit,
    }  # fmt: skip
    record.update(_flatten(row.spec, "spec"))
    record.update(_flatten(row.metrics, "metrics"))
    return record


def _flatten(value: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for name, item in value.items():
        column = f"{prefix}.{name}"
        if isinstance(item, Mapping) and item:
            flat.update(_flatten(item, column))
        else:
            flat[column] = item
    return flat


def _json_encode_nested_cells(frame: pandas.DataFrame) -> pandas.DataFrame:
    """Lists/dicts become JSON text, and mixed-type columns become text, so CSV and Parquet can hold them."""
    frame = frame.copy()
    for column in frame.columns:
        if frame[column].dtype != object:
            continue
        cells = frame[column].map(lambda cell: json.dumps(cell) if isinstance(cell, list | dict) else cell)
        kinds = {type(cell) for cell in cells if cell is not None and not _is_nan(cell)}
        frame[column] = cells.map(lambda cell: None if cell is None else str(cell)) if len(kinds) > 1 else cells
    return frame


def _is_nan(cell: Any) -> bool:
    return isinstance(cell, float) and math.isnan(cell)


def _csv_bytes(frame: pandas.DataFrame) -> bytes:
    return frame.to_csv(index=False).encode("utf-8")


def _parquet_bytes(frame: pandas.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False, engine="pyarrow")
    return buffer.getvalue()
