"""A finished sweep whose artefacts were deleted or damaged re-plans the jobs that wrote them (and says so),
cheaply: an intact sweep hashes nothing, a touched but intact file is hashed once and re-fingerprinted."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from jobs_for_tests import JOB_LOG_VARIABLE, read_log, register_test_kinds

import overtrain.sweep.artifacts as artifacts_module
from overtrain.results.records import Job, JobOutput
from overtrain.results.store import ResultStore
from overtrain.sweep.artifacts import FINGERPRINT_KEY
from overtrain.sweep.driver import RunSummary, run_jobs

register_test_kinds()


def checkpoint_job(folder: Path) -> Job:
    return Job("write_checkpoint", {"folder": str(folder), "index": 0}, label="pretrain 1M")


def probe_job(folder: Path, job: Job, name: str = "probe") -> Job:
    return Job("read_text", {"path": str(folder / "overtrain.json"), "name": name}, depends_on=(job.key,), label=name)


def run(store_path: Path, jobs: list[Job]) -> RunSummary:
    with ResultStore(store_path) as store:
        return run_jobs(jobs, store, progress=True)


@pytest.fixture()
def finished(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path, Job, Job]:
    monkeypatch.setenv(JOB_LOG_VARIABLE, str(tmp_path / "log"))
    folder = tmp_path / "run" / "checkpoints" / "step-000010-tokens-1000"
    writer = checkpoint_job(folder)
    reader = probe_job(folder, writer)
    assert run(tmp_path / "s.sqlite", [writer, reader]).done == 2
    return tmp_path / "s.sqlite", folder, writer, reader


def test_a_deleted_checkpoint_is_written_again_and_the_sweep_says_so(finished, capsys: pytest.CaptureFixture[str]) -> None:
    store, folder, writer, reader = finished
    for path in folder.iterdir():
        path.unlink()
    folder.rmdir()
    capsys.readouterr()
    summary = run(store, [writer, reader])
    assert (summary.done, summary.skipped) == (1, 1) and list(summary.repaired) == [writer.key]
    assert "re-running pretrain 1M: its checkpoint" in capsys.readouterr().err and "is missing" in summary.repaired[writer.key]
    assert (folder / "model.safetensors").is_file() and read_log(store.parent / "log") == [0, 0]


def test_a_bit_flip_is_found_the_damaged_copy_moved_aside_and_later_jobs_run(finished) -> None:
    store, folder, writer, reader = finished
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[100] ^= 0x01
    weights.write_bytes(bytes(data))  # same size, one bit
    later = probe_job(folder, writer, "probe added later")
    summary = run(store, [writer, reader, later])
    assert "model.safetensors no longer matches" in summary.repaired[writer.key]
    assert summary.done == 2 and summary.failed == summary.blocked == 0  # the checkpoint, then the new probe
    (aside,) = folder.parent.glob(f"{folder.name}.damaged-*")
    assert (aside / "model.safetensors").read_bytes() == bytes(data)
    assert weights.read_bytes() != bytes(data) and run(store, [writer, reader, later]).repaired == {}


def test_an_intact_sweep_hashes_nothing(finished, monkeypatch: pytest.MonkeyPatch) -> None:
    store, _, writer, reader = finished

    def no_hashing(path):
        raise AssertionError(f"hashed {path}")

    monkeypatch.setattr(artifacts_module, "file_sha256", no_hashing)
    summary = run(store, [writer, reader])
    assert (summary.done, summary.skipped, summary.repaired) == (0, 2, {})


def test_a_touched_but_intact_file_is_hashed_once_and_refingerprinted(finished, monkeypatch: pytest.MonkeyPatch) -> None:
    store, folder, writer, reader = finished
    weights = folder / "model.safetensors"
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 5_000_000_000))  # e.g. copied without -p
    assert run(store, [writer, reader]).repaired == {}
    with ResultStore(store) as opened:
        recorded = opened.get(writer.key).provenance[FINGERPRINT_KEY]["checkpoint"]["model.safetensors"]
    assert recorded[1] == weights.stat().st_mtime_ns
    monkeypatch.setattr(artifacts_module, "file_sha256", lambda path: pytest.fail(f"hashed {path} again"))
    assert run(store, [writer, reader]).skipped == 2


def test_rows_stored_without_fingerprints_are_verified_by_their_checksums(tmp_path: Path) -> None:
    folder = tmp_path / "checkpoints" / "step-000001-tokens-10"
    writer = checkpoint_job(folder)
    from jobs_for_tests import write_checkpoint_job

    output: JobOutput = write_checkpoint_job(writer.spec)
    with ResultStore(tmp_path / "s.sqlite") as store:  # as an older version of the driver stored it
        store.put(writer, output, dict(output.provenance), 1.0)
    assert run(tmp_path / "s.sqlite", [writer]).repaired == {}
    with ResultStore(tmp_path / "s.sqlite") as store:
        assert "model.safetensors" in store.get(writer.key).provenance[FINGERPRINT_KEY]["checkpoint"]
        store.put(writer, output, dict(output.provenance), 1.0)  # fingerprint gone again
    metadata = folder / "overtrain.json"
    metadata.write_text(json.dumps({"checksums": {}}))  # an emptied checksum map is never trusted
    summary = run(tmp_path / "s.sqlite", [writer])
    assert "records no checksums" in summary.repaired[writer.key] and summary.done == 1


def test_rows_without_artefacts_are_never_re_run(tmp_path: Path) -> None:
    reader = Job("read_text", {"path": str(tmp_path / "gone.txt")}, label="probe")
    (tmp_path / "gone.txt").write_text("x")
    assert run(tmp_path / "s.sqlite", [reader]).done == 1
    (tmp_path / "gone.txt").unlink()  # an input, not an output: the stored result stays valid
    assert run(tmp_path / "s.sqlite", [reader]).skipped == 1


@pytest.mark.slow  # a real tiny WSD ladder: ~20 s on a busy 2-core machine
def test_a_damaged_checkpoint_of_a_real_sweep_is_trained_again_bit_for_bit(tmp_path: Path) -> None:
    from helpers import write_stdlib_text_corpus
    from test_sweep import tiny_sweep_overrides

    from overtrain.checkpoints.folder import read_checkpoint_info, verify_checkpoint
    from overtrain.provenance import file_sha256
    from overtrain.sweep.config import load_sweep_config
    from overtrain.sweep.plan import plan_jobs

    corpus = write_stdlib_text_corpus(tmp_path / "corpus", documents=30)
    keep = [o for o in tiny_sweep_overrides(tmp_path, corpus) if not o.startswith(("finetune.", "pretrain.ladder.budgets", "noise.gammas", "noise.seeds"))]
    config = load_sweep_config(None, [*keep, "pretrain.ladder.budgets_tokens=[4096,8192]", "noise.gammas=[1.0]", "noise.seeds=[0]"])
    jobs = plan_jobs(config)
    assert run(config.store_path, jobs).done == len(jobs)
    with ResultStore(config.store_path) as store:
        finals = {row.key: Path(row.artifacts["checkpoint"]) for row in store.rows("pretrain") if row.metrics["tokens_seen"] in (4096, 8192)}
    originals = {key: file_sha256(folder / "model.safetensors") for key, folder in finals.items()}
    for folder in finals.values():  # the branch's and the trunk's final checkpoints
        weights = folder / "model.safetensors"
        data = bytearray(weights.read_bytes())
        data[-7] ^= 0x10
        weights.write_bytes(bytes(data))

    summary = run(config.store_path, jobs)
    assert set(summary.repaired) == set(finals) and summary.done == 2 and summary.failed == 0
    for key, folder in finals.items():
        verify_checkpoint(read_checkpoint_info(folder))
        assert file_sha256(folder / "model.safetensors") == originals[key]  # exact resume: the same weights


def test_the_dry_runs_view_finds_what_the_run_would_repair_and_changes_nothing(finished) -> None:
    from overtrain.results.store import stored_rows
    from overtrain.sweep.driver import stored_jobs_to_rerun

    store, folder, writer, reader = finished
    assert stored_jobs_to_rerun([writer, reader], stored_rows(store)) == {}
    weights = folder / "model.safetensors"
    os.truncate(weights, 100)
    store_bytes, weights_bytes = store.read_bytes(), weights.read_bytes()
    rerun = stored_jobs_to_rerun([writer, reader], stored_rows(store))
    assert list(rerun) == [writer.key] and rerun[writer.key].startswith("pretrain 1M: ")
    assert store.read_bytes() == store_bytes and weights.read_bytes() == weights_bytes  # nothing moved or deleted
    assert stored_jobs_to_rerun([reader], stored_rows(store)) == {}  # only the planned jobs are asked about
    summary = run(store, [writer, reader])
    assert list(summary.repaired) == [writer.key] and summary.repaired[writer.key] == rerun[writer.key]


def test_the_dry_runs_view_hashes_nothing_and_leaves_a_touched_file_to_the_run(finished, monkeypatch: pytest.MonkeyPatch) -> None:
    from overtrain.results.store import stored_rows
    from overtrain.sweep.driver import stored_jobs_to_rerun

    store, folder, writer, reader = finished
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[100] ^= 0x01
    weights.write_bytes(bytes(data))  # same size, new modification time: only a hash can tell
    with monkeypatch.context() as patched:
        patched.setattr(artifacts_module, "file_sha256", lambda path: pytest.fail(f"the dry run hashed {path}"))
        assert stored_jobs_to_rerun([writer, reader], stored_rows(store)) == {}
    assert "model.safetensors no longer matches" in run(store, [writer, reader]).repaired[writer.key]  # the run hashes it
