"""Bad input a user can give the pre-training side: each is one clear message (exit 2 from the CLI),
never a traceback, never a silently trusted checkpoint, and training done so far is kept (issue 10)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import tiny_pretrain_config, write_stdlib_text_corpus, write_untrained_checkpoint

from overtrain.checkpoints.discovery import list_checkpoints
from overtrain.checkpoints.folder import load_model, read_checkpoint_info, verify_checkpoint
from overtrain.cli import main as cli_main
from overtrain.errors import OvertrainError
from overtrain.pretrain.loop import train_run


@pytest.fixture()
def checkpoint(tmp_path: Path) -> Path:
    return write_untrained_checkpoint(tmp_path / "run")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_stdlib_text_corpus(tmp_path_factory.mktemp("corpus"), documents=30)


def edit_metadata(folder: Path, edit) -> None:
    path = folder / "overtrain.json"
    meta = json.loads(path.read_text())
    edit(meta)
    path.write_text(json.dumps(meta))


def test_a_single_flipped_bit_in_the_weights_is_caught(checkpoint: Path) -> None:
    weights = checkpoint / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x04  # one bit inside a tensor, far from the header; the size is unchanged
    weights.write_bytes(bytes(data))
    with pytest.raises(OvertrainError, match="model.safetensors is missing or does not match its recorded checksum"):
        load_model(checkpoint)


@pytest.mark.parametrize("emptied", ["all", "model", "optimizer-present"])
def test_emptied_checksums_do_not_switch_verification_off(checkpoint: Path, emptied: str) -> None:
    if emptied == "optimizer-present":  # a tensor file on disk whose checksum entry was deleted
        (checkpoint / "optimizer.safetensors").write_bytes((checkpoint / "rng.safetensors").read_bytes())
    edit_metadata(checkpoint, lambda meta: meta.update(checksums={} if emptied == "all" else
                                                       {k: v for k, v in meta["checksums"].items() if k != "model.safetensors"}
                                                       if emptied == "model" else meta["checksums"]))
    with pytest.raises(OvertrainError, match="checksum") as caught:
        verify_checkpoint(read_checkpoint_info(checkpoint))
    assert str(checkpoint) in str(caught.value)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda meta: meta.pop("init_std"), "init_std"),
        (lambda meta: meta.pop("run_config"), "run_config"),
        (lambda meta: meta["run_config"].pop("train"), "run_config.train is missing"),
        (lambda meta: meta["run_config"]["model"].pop("d_model"), "run_config.model lacks d_model"),
        (lambda meta: meta.update(step="12"), "step must be a whole number"),
        (lambda meta: meta.update(tokens_seen=-5), "tokens_seen must be a whole number >= 0"),
        (lambda meta: meta.update(init_std=[0.02]), "init_std must map"),
        (lambda meta: meta["run_config"]["train"].update(seq_len=[16]), "seq_len"),
        (lambda meta: meta["run_config"]["model"].update(d_model=48), "shapes"),
    ],
)
def test_checkpoint_metadata_of_the_wrong_shape_is_one_clear_error(checkpoint: Path, edit, message: str) -> None:
    edit_metadata(checkpoint, edit)
    with pytest.raises(OvertrainError, match=message):
        load_model(checkpoint)


def test_checkpoint_without_tokenizer_json_is_named(checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (checkpoint / "tokenizer.json").unlink()
    with pytest.raises(OvertrainError, match="tokenizer.json is missing"):
        load_model(checkpoint)
    assert cli_main(["noise", str(checkpoint), "gammas=[1]", "seeds=[0]", "--out", str(tmp_path / "n.json")]) == 2
    error = capsys.readouterr().err
    assert "tokenizer.json is missing" in error and "Traceback" not in error


def test_unwritable_folders_are_refused_before_training(tmp_path: Path, corpus: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    for setting in (f"out_dir={blocker / 'run'}", f"data.cache_dir={blocker / 'cache'}"):
        config = tiny_pretrain_config(tmp_path, corpus, setting)
        with pytest.raises(OvertrainError, match="cannot write to") as caught:
            train_run(config, log=lambda *_: None)
        assert setting.split("=")[0] in caught.value.fix
    args = [f"out_dir={blocker / 'run'}", f"data.corpus={corpus}", f"data.cache_dir={tmp_path / 'cache'}"]
    assert cli_main(["pretrain", *args]) == 2
    assert "Traceback" not in capsys.readouterr().err


def test_read_only_run_folder_is_refused_before_training(tmp_path: Path, corpus: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tempfile

    import overtrain.atomic

    config = tiny_pretrain_config(tmp_path, corpus)
    Path(config.out_dir).mkdir()
    real_mkstemp = tempfile.mkstemp

    def read_only_run_folder(*args, **kwargs):
        # chmod 0o555 does not stop root, who runs CI here: refuse the write probe in the run folder instead
        if Path(kwargs.get("dir", "")).resolve() == Path(config.out_dir).resolve():
            raise PermissionError(13, "Permission denied")
        return real_mkstemp(*args, **kwargs)

    monkeypatch.setattr(overtrain.atomic.tempfile, "mkstemp", read_only_run_folder)
    with pytest.raises(OvertrainError, match="cannot write to the run folder .*Permission denied"):
        train_run(config, log=lambda *_: None)
    assert list(Path(config.out_dir).iterdir()) == []  # refused before anything was written


def test_a_failed_checkpoint_write_keeps_the_last_checkpoint(tmp_path: Path, corpus: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import overtrain.checkpoints.folder as folder_module

    real_save_file, calls = folder_module.save_file, []

    def save_file_until_the_disk_fills(tensors, path, metadata=None):
        calls.append(path)
        if len(calls) > 3:  # the first checkpoint's model, optimizer and rng files are written; then the disk is full
            raise OSError(28, "No space left on device")
        return real_save_file(tensors, path, metadata=metadata)

    monkeypatch.setattr(folder_module, "save_file", save_file_until_the_disk_fills)
    config = tiny_pretrain_config(tmp_path, corpus, "train.checkpoint_every_tokens=2048", "train.max_tokens=4096")
    with pytest.raises(OvertrainError, match="No space left on device") as caught:
        train_run(config, log=lambda *_: None)
    kept = list_checkpoints(Path(config.out_dir))
    assert [path.name for path in kept] == ["step-000008-tokens-2048"]
    verify_checkpoint(read_checkpoint_info(kept[0]))
    assert "step-000008-tokens-2048 is kept" in caught.value.problem
    assert "run the same command again" in caught.value.fix
    assert not [p for p in (Path(config.out_dir) / "checkpoints").iterdir() if ".tmp-" in p.name]


def test_a_run_refused_before_its_first_step_leaves_its_folder_free_for_the_fixed_settings(tmp_path: Path) -> None:
    corpus = write_stdlib_text_corpus(tmp_path / "corpus")
    too_long = tiny_pretrain_config(tmp_path, corpus, "train.seq_len=200000", "train.batch_size=1", "train.max_tokens=400000",
                                    "train.eval_tokens=200000", "train.eval_every_tokens=200000", "train.warmup_tokens=0")
    with pytest.raises(OvertrainError, match="fewer than one sequence") as caught:
        train_run(too_long, log=lambda *_: None, show_progress=False)
    assert "train.seq_len" in caught.value.fix
    out_dir = Path(too_long.out_dir)
    assert not (out_dir / "run.json").exists() and not (out_dir / "config.yaml").exists()
    fixed = tiny_pretrain_config(tmp_path, corpus, "train.max_tokens=4096")
    assert train_run(fixed, log=lambda *_: None, show_progress=False).final_checkpoint is not None  # not refused as a changed setting


def test_a_dry_run_refuses_checkpoints_the_run_already_trained_past(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    corpus = write_stdlib_text_corpus(tmp_path / "corpus")
    config = tiny_pretrain_config(tmp_path, corpus)
    train_run(config, log=lambda *_: None, show_progress=False)
    saved = Path(config.out_dir) / "config.yaml"  # the run's own settings, as a user would pass them again
    capsys.readouterr()
    assert cli_main(["pretrain", str(saved), "train.checkpoint_at_tokens=[2048]", "--dry-run"]) == 2
    assert "cannot be written after the fact" in capsys.readouterr().err  # what the run itself would say


def test_a_model_too_large_for_memory_is_one_message(monkeypatch: pytest.MonkeyPatch) -> None:
    from overtrain.model import llama
    from overtrain.model.config import ModelConfig

    def refuse(*_args, **_kwargs):  # what torch's allocator raises for d_model=1e10
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:121] DefaultCPUAllocator: can't allocate memory: you tried to allocate 20480000000000 bytes")

    monkeypatch.setattr(llama.LlamaLM, "__init__", refuse)
    with pytest.raises(OvertrainError, match="does not fit in this machine's memory") as caught:
        llama.build_model(ModelConfig(d_model=64, n_layers=2, n_heads=4), 259, 128, seed=0)
    assert "model.d_model" in caught.value.fix


def test_dry_runs_refuse_a_file_where_a_folder_goes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a_file = tmp_path / "notes.txt"
    a_file.write_text("not a folder")
    repo = Path(__file__).resolve().parents[1]
    for arguments in (["sweep", str(repo / "src/overtrain/recipes/demo.yaml"), f"out_dir={a_file}", "--dry-run"],
                      ["pretrain", str(repo / "configs/demo/nano.yaml"), f"out_dir={tmp_path / 'run'}", f"data.cache_dir={a_file}",
                       "--dry-run"]):
        capsys.readouterr()
        assert cli_main(arguments) == 2, arguments
        assert "is a file, not a folder" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]  # nothing created
