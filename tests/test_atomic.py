"""Atomic folders: a folder appears whole under its final name or not at all, even with concurrent writers."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest

from overtrain.atomic import TEMPORARY_MARK, atomic_directory


def _leftovers(parent: Path) -> list[str]:
    return sorted(path.name for path in parent.iterdir() if TEMPORARY_MARK in path.name)


def _write_folder(final: Path, content: str, if_exists: str = "replace") -> None:
    with atomic_directory(final, if_exists=if_exists) as staging:
        (staging / "content.txt").write_text(content)


def test_a_new_folder_appears_whole(tmp_path):
    _write_folder(tmp_path / "cache", "new")
    assert (tmp_path / "cache" / "content.txt").read_text() == "new"
    assert _leftovers(tmp_path) == []


def test_replace_swaps_in_the_new_folder_and_keep_leaves_the_old_one(tmp_path):
    _write_folder(tmp_path / "replaced", "old")
    _write_folder(tmp_path / "replaced", "new", if_exists="replace")
    _write_folder(tmp_path / "kept", "old")
    _write_folder(tmp_path / "kept", "new", if_exists="keep")
    assert (tmp_path / "replaced" / "content.txt").read_text() == "new"
    assert (tmp_path / "kept" / "content.txt").read_text() == "old"
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("if_exists, expected", [("keep", "first writer"), ("replace", "second writer")])
def test_a_writer_that_finishes_first_during_our_build_is_handled(tmp_path, if_exists, expected):
    # The CI failure this guards against: two DDP ranks build the same eval cache; one publishes between
    # the other's existence check and its rename.
    final = tmp_path / "cache"
    with atomic_directory(final, if_exists=if_exists) as staging:
        (staging / "content.txt").write_text("second writer")
        _write_folder(final, "first writer")
    assert (final / "content.txt").read_text() == expected
    assert _leftovers(tmp_path) == []


def test_an_error_inside_the_block_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError, match="killed mid-write"):
        with atomic_directory(tmp_path / "cache") as staging:
            (staging / "half.txt").write_text("half")
            raise RuntimeError("killed mid-write")
    assert list(tmp_path.iterdir()) == []


def _race_writer(final: str, barrier, index: int) -> None:
    with atomic_directory(Path(final), if_exists="keep") as staging:
        (staging / "content.txt").write_text("same content")
        (staging / "writer.txt").write_text(str(index))
        barrier.wait()  # every writer publishes at the same moment


def test_concurrent_processes_filling_one_cache_all_succeed(tmp_path):
    context = multiprocessing.get_context("spawn")
    writers = 4
    barrier = context.Barrier(writers)
    final = tmp_path / "cache"
    processes = [context.Process(target=_race_writer, args=(str(final), barrier, index)) for index in range(writers)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=120)
    assert [process.exitcode for process in processes] == [0] * writers
    assert (final / "content.txt").read_text() == "same content"
    assert (final / "writer.txt").read_text() in {str(index) for index in range(writers)}
    assert _leftovers(tmp_path) == []
