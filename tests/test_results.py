"""The results store, job keys and provenance: round trips, exports, bad files, concurrent and killed writers."""

from __future__ import annotations

import hashlib
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pandas
import pytest
from jobs_for_tests import subprocess_environment

from overtrain.errors import OvertrainError
from overtrain.provenance import collect_provenance, file_sha256, folder_content_hash
from overtrain.results.records import Job, JobOutput, job_key
from overtrain.results.store import ResultStore, stored_keys, stored_rows

NOISE_SPEC = {"checkpoint": {"path": "/ckpt/tokens-1M", "sha256": "ab"}, "gamma": 0.5, "seed": 3}


def noise_job(gamma: float = 0.5) -> Job:
    return Job("noise", {**NOISE_SPEC, "gamma": gamma}, label=f"noise gamma={gamma}")


def put_noise(store: ResultStore, gamma: float, loss: float) -> Job:
    job = noise_job(gamma)
    store.put(job, JobOutput(metrics={"loss": loss, "curve": [1, 2]}), {"overtrain_version": "0.1.0"}, 1.5)
    return job


def test_job_key_is_a_stable_hash_of_kind_and_canonical_spec() -> None:
    # A hard-coded value: keys must never change between versions, processes or machines.
    assert job_key("noise", {"gamma": 1.0, "seed": 0}) == "b70c438544d0ff67"
    expected = hashlib.sha256(b'{"kind":"noise","spec":{"gamma":1.0,"seed":0}}').hexdigest()[:16]
    assert job_key("noise", {"seed": 0, "gamma": 1.0}) == expected
    assert Job("noise", {"a": (1, 2)}).key == Job("noise", {"a": [1, 2]}).key
    assert Job("noise", {"a": 1}).key != Job("finetune", {"a": 1}).key
    assert Job("noise", {"a": 1}, depends_on=("x",), label="other").key == Job("noise", {"a": 1}).key


def test_job_spec_must_be_json() -> None:
    with pytest.raises(OvertrainError, match="not JSON-serialisable"):
        Job("noise", {"model": object()})


def test_put_get_rows_round_trip_and_survive_reopening(tmp_path: Path) -> None:
    path = tmp_path / "results.sqlite"
    with ResultStore(path) as store:
        first = put_noise(store, 0.5, 3.25)
        put_noise(store, 1.0, 4.5)
        store.put(Job("finetune", {"lr": 1e-4}), JobOutput(metrics={"loss": 2.0}), {}, 0.1)
    with ResultStore(path) as store:
        assert len(store) == 3 and store.has(first.key) and not store.has("0" * 16)
        assert store.finished_keys() == {row.key for row in store.rows()}
        row = store.get(first.key)
        assert row is not None and row.metrics == {"loss": 3.25, "curve": [1, 2]}
        assert row.spec == first.spec and row.label == "noise gamma=0.5" and row.seconds == 1.5
        assert row.overtrain_version == "0.1.0" and row.provenance == {"overtrain_version": "0.1.0"}
        assert [r.kind for r in store.rows("noise")] == ["noise", "noise"]
        assert store.get("0" * 16) is None


def test_put_of_the_same_key_keeps_one_row(tmp_path: Path) -> None:
    with ResultStore(tmp_path / "results.sqlite") as store:
        put_noise(store, 0.5, 1.0)
        job = put_noise(store, 0.5, 2.0)
        assert len(store) == 1 and store.get(job.key).metrics["loss"] == 2.0


def test_dataframe_flattens_spec_and_metrics(tmp_path: Path) -> None:
    with ResultStore(tmp_path / "results.sqlite") as store:
        assert store.to_dataframe().empty
        put_noise(store, 0.5, 3.0)
        put_noise(store, 1.0, 4.0)
        frame = store.to_dataframe(kind="noise")
    assert sorted(frame["spec.gamma"]) == [0.5, 1.0]
    assert frame["spec.checkpoint.path"].tolist() == ["/ckpt/tokens-1M"] * 2
    assert sorted(frame["metrics.loss"]) == [3.0, 4.0]
    assert {"key", "kind", "label", "seconds", "finished_at", "git_commit"} <= set(frame.columns)


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_export_by_suffix(tmp_path: Path, suffix: str) -> None:
    with ResultStore(tmp_path / "results.sqlite") as store:
        put_noise(store, 0.5, 3.0)
        store.put(Job("finetune", {"lr": 1e-4, "seed": 1}), JobOutput(metrics={"loss": "diverged"}), {}, 0.1)
        target = store.export(tmp_path / f"out{suffix}")
    frame = pandas.read_csv(target) if suffix == ".csv" else pandas.read_parquet(target)
    assert len(frame) == 2 and "metrics.loss" in frame.columns and "spec.checkpoint.path" in frame.columns
    assert '"[1, 2]"' in target.read_text() if suffix == ".csv" else frame["metrics.curve"].dropna().tolist() == ["[1, 2]"]


def test_export_refuses_unknown_suffix(tmp_path: Path) -> None:
    with ResultStore(tmp_path / "results.sqlite") as store, pytest.raises(OvertrainError, match=r"\.csv or \*\.parquet"):
        store.export(tmp_path / "out.xlsx")


def test_a_text_file_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "results.sqlite"
    path.write_text("key,loss\nabc,1.0\n")
    with pytest.raises(OvertrainError, match="not an SQLite file") as caught:
        ResultStore(path)
    assert str(path) in str(caught.value) and caught.value.fix
    assert path.read_text() == "key,loss\nabc,1.0\n"


def test_a_damaged_store_is_reported_with_a_fix(tmp_path: Path) -> None:
    path = tmp_path / "results.sqlite"
    with ResultStore(path) as store:
        for gamma in range(200):
            put_noise(store, float(gamma), 1.0)
    data = bytearray(path.read_bytes())
    data[4096:12288] = b"\xff" * 8192  # scribble over pages past the header
    path.write_bytes(bytes(data))
    with pytest.raises(OvertrainError, match="damaged") as caught:
        ResultStore(path)
    assert str(path) in str(caught.value) and "aside" in caught.value.fix


@pytest.mark.parametrize("damage", ["{bad json", "[1, 2]"])
def test_a_row_with_damaged_json_is_named_with_the_way_out(tmp_path: Path, damage: str) -> None:
    from overtrain.results.store import stored_rows

    path = tmp_path / "results.sqlite"
    with ResultStore(path) as store:
        damaged, intact = put_noise(store, 1.0, 2.0), put_noise(store, 2.0, 3.0)
    with sqlite3.connect(path) as connection:
        connection.execute("UPDATE results SET metrics_json = ? WHERE key = ?", (damage, damaged.key))
    connection.close()
    for read in (lambda: ResultStore(path).rows(), lambda: stored_rows(path)):
        with pytest.raises(OvertrainError, match=f"the row of job {damaged.key} .* in results store {path} is damaged: its metrics_json") as caught:
            read()
        assert f"DELETE FROM results WHERE key = '{damaged.key}'" in caught.value.fix
    with sqlite3.connect(path) as connection:  # the fix, as given
        connection.execute(f"DELETE FROM results WHERE key = '{damaged.key}'")
    connection.close()
    assert [row.key for row in stored_rows(path)] == [intact.key]


@pytest.mark.parametrize("schema", ["CREATE TABLE users (name TEXT)", "PRAGMA user_version = 7"])
def test_the_report_refuses_another_database_and_leaves_it_byte_for_byte(tmp_path: Path, schema: str) -> None:
    from overtrain.results.report import write_report

    path = tmp_path / "other.sqlite"
    with sqlite3.connect(path) as connection:
        connection.execute(schema)
    connection.close()
    before = path.read_bytes()
    with pytest.raises(OvertrainError, match="not an overtrain results store"):
        write_report(path, tmp_path / "report")
    assert path.read_bytes() == before and sorted(item.name for item in tmp_path.iterdir()) == ["other.sqlite"]


def test_another_applications_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.sqlite"
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE users (name TEXT)")
    connection.close()
    before = path.read_bytes()
    with pytest.raises(OvertrainError, match="not an overtrain results store"):
        ResultStore(path)
    assert path.read_bytes() == before  # refused before its journal mode was set


WRITER = """
import sys
from overtrain.results.records import Job, JobOutput
from overtrain.results.store import ResultStore, stored_keys, stored_rows
store = ResultStore(sys.argv[1])
print("ready", flush=True)
for i in range(int(sys.argv[3])):
    job = Job("noise", {"writer": sys.argv[2], "i": i})
    store.put(job, JobOutput(metrics={"i": i, "pad": "x" * 2000}), {"writer": sys.argv[2]}, 0.0)
"""


def start_writer(path: Path, name: str, rows: int) -> subprocess.Popen[str]:
    command = [sys.executable, "-c", WRITER, str(path), name, str(rows)]
    process = subprocess.Popen(command, env=subprocess_environment(), stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None and process.stdout.readline().strip() == "ready"
    return process


def assert_intact(path: Path) -> None:
    with sqlite3.connect(path) as connection:
        assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    connection.close()


def test_two_processes_writing_at_once_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "results.sqlite"
    writers = [start_writer(path, name, 60) for name in ("a", "b")]
    assert [writer.wait(timeout=60) for writer in writers] == [0, 0]
    assert_intact(path)
    with ResultStore(path) as store:
        assert len(store) == 120
        assert {row.provenance["writer"] for row in store.rows()} == {"a", "b"}


def test_stores_opened_at_the_same_moment_all_open(tmp_path: Path) -> None:
    """Two connections switching a new store to WAL together: SQLite fails one at once with "database is
    locked" (its busy timeout would deadlock); ResultStore waits and tries again instead of calling the store
    damaged. 40 rounds of 3 threads (each round lost one open in about one of ten tries before the fix)."""
    import threading

    failures: list[str] = []
    for round_index in range(40):
        path = tmp_path / f"s{round_index}.sqlite"
        barrier = threading.Barrier(3)

        def open_store(path: Path = path, barrier: threading.Barrier = barrier) -> None:
            barrier.wait()
            try:
                with ResultStore(path) as store:
                    len(store)
            except OvertrainError as error:
                failures.append(str(error))

        threads = [threading.Thread(target=open_store) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert failures == []


def test_a_store_that_stays_locked_is_named_busy_not_damaged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from overtrain.results import store as store_module

    attempts = []

    def locked(connection, path):
        attempts.append(1)
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(store_module, "_prepare", locked)
    with pytest.raises(OvertrainError, match="stayed locked by another process") as raised:
        ResultStore(tmp_path / "s.sqlite")
    assert len(attempts) == store_module.OPEN_ATTEMPTS
    assert "nothing in the store is damaged" in str(raised.value) and "move" not in str(raised.value)


def test_a_writer_killed_mid_stream_leaves_a_readable_store(tmp_path: Path) -> None:
    path = tmp_path / "results.sqlite"
    killed = start_writer(path, "killed", 100_000)
    survivor = start_writer(path, "survivor", 50)
    time.sleep(0.3)
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=10)
    assert survivor.wait(timeout=60) == 0
    assert_intact(path)
    with ResultStore(path) as store:
        writers = [row.provenance["writer"] for row in store.rows()]
    assert writers.count("survivor") == 50 and 0 < writers.count("killed") < 100_000


def test_provenance_names_versions_machine_and_extra() -> None:
    provenance = collect_provenance({"seed": 7})
    assert provenance["seed"] == 7 and provenance["overtrain_version"]
    assert provenance["library_versions"]["torch"] and provenance["cpu_count"] >= 1
    assert {"git_commit", "hostname", "python_version", "time_utc"} <= set(provenance)


def test_file_and_folder_hashes_identify_content(tmp_path: Path) -> None:
    first, second = tmp_path / "ckpt-a", tmp_path / "ckpt-b"
    for folder in (first, second):
        (folder / "sub").mkdir(parents=True)
        (folder / "model.safetensors").write_bytes(b"\x00weights" * 1000)
        (folder / "sub" / "config.json").write_text("{}")
    assert file_sha256(first / "sub" / "config.json") == hashlib.sha256(b"{}").hexdigest()
    assert folder_content_hash(first) == folder_content_hash(second)
    (second / "model.safetensors.tmp-123").write_text("partial")
    assert folder_content_hash(first) == folder_content_hash(second)
    (second / "sub" / "config.json").rename(second / "sub" / "other.json")
    assert folder_content_hash(first) != folder_content_hash(second)


def _store_without_its_table(path: Path) -> Path:
    """A store of ours (WAL mode, one row) whose results table was then dropped: damaged, not another program's."""
    with ResultStore(path) as store:
        store.put(Job("noise", {"i": 0}), JobOutput(metrics={}), {}, 0.0)
    with sqlite3.connect(path) as connection:
        connection.execute("DROP TABLE results")
    connection.close()
    return path


def test_an_empty_store_file_and_a_store_without_its_table_get_one_answer_everywhere(tmp_path: Path) -> None:
    """The report told a user with an empty results.sqlite to run the sweep, and the sweep's dry run then
    called it damaged; a store whose table was dropped was 'not an overtrain store' to the report and
    'damaged' to the probes. Now an empty file is an empty store to every reader (the run makes it a store),
    and one of ours without its table is damaged to every reader, with the same fix."""
    empty = tmp_path / "empty.sqlite"
    empty.touch()
    assert stored_keys(empty) == set() and stored_rows(empty) == []
    with ResultStore(empty) as store:
        assert len(store) == 0  # made a store in place
    dropped = _store_without_its_table(tmp_path / "dropped.sqlite")
    for read in (stored_keys, ResultStore):
        with pytest.raises(OvertrainError, match="cannot be read \\(no results table\\); it is damaged") as refused:
            read(dropped)
        assert refused.value.fix.startswith(f"move {dropped}")


def test_a_refused_store_is_left_without_new_wal_and_shm_files(tmp_path: Path) -> None:
    """Opening a WAL-mode store makes SQLite create -wal and -shm beside it; a store refused as damaged kept
    them (the report, which never writes, left two new files). Files that were there before stay."""
    from overtrain.results.report import write_report

    path = _store_without_its_table(tmp_path / "results.sqlite")
    assert sorted(item.name for item in tmp_path.iterdir()) == ["results.sqlite"]
    for read in (stored_keys, ResultStore, lambda store: write_report(store, tmp_path / "report")):
        with pytest.raises(OvertrainError, match="it is damaged"):
            read(path)
        assert sorted(item.name for item in tmp_path.iterdir()) == ["results.sqlite"]
    kept = tmp_path / "results.sqlite-wal"
    kept.write_bytes(b"")  # there before: perhaps another process's
    with pytest.raises(OvertrainError, match="it is damaged"):
        stored_keys(path)
    assert kept.exists()
