"""Damaged artefacts on disk (a token cache, a shard folder, a checkpoint's small files) are refused with one
clear OvertrainError that names the file and the fix: never used silently, never a traceback."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import tiny_pretrain_config, write_stdlib_text_corpus, write_untrained_checkpoint
from safetensors.torch import save_file

from overtrain.checkpoints.folder import METADATA_FILE, TENSOR_FILES, load_model, read_checkpoint_info, verify_checkpoint
from overtrain.cli import main as cli_main
from overtrain.data.config import DataConfig, TokenizeConfig
from overtrain.data.shards import ShardIndex, ShardWriter, open_split, read_index
from overtrain.data.tokenizer import load_tokenizer
from overtrain.data.tokens import prepare_token_data
from overtrain.errors import OvertrainError
from overtrain.pretrain.loop import train_run
from overtrain.probes.target import check_same_tokenizer
from overtrain.provenance import file_sha256

GARBAGE = "this is not JSON {"


def quiet(*_args: object) -> None:
    return None


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_stdlib_text_corpus(tmp_path_factory.mktemp("corpus"), documents=12)


@pytest.fixture(scope="module")
def pristine_cache(tmp_path_factory: pytest.TempPathFactory, corpus: Path) -> Path:
    """A token cache made once; each test damages its own copy."""
    cache = tmp_path_factory.mktemp("pristine")
    prepare_token_data(DataConfig(corpus=str(corpus), vocab_size=300, cache_dir=str(cache)), log=quiet)
    return cache


@pytest.fixture()
def cache(tmp_path: Path, pristine_cache: Path) -> tuple[DataConfig, Path]:
    """(the data settings, the token folder they open) on a fresh copy of the cache."""
    copy = tmp_path / "cache"
    shutil.copytree(pristine_cache, copy)
    (folder,) = copy.glob("tokens-*")
    config = DataConfig(corpus=str(read_meta(folder)["corpus"]), vocab_size=300, cache_dir=str(copy))
    return config, folder


def read_meta(folder: Path) -> dict:
    return json.loads((folder / "meta.json").read_text())


def refused(config: DataConfig, folder: Path, detail: str) -> OvertrainError:
    """prepare_token_data's error on the damaged cache: names the folder and says to delete it."""
    with pytest.raises(OvertrainError, match=detail) as caught:
        prepare_token_data(config, log=quiet)
    assert str(folder) in caught.value.problem and f"delete the folder {folder}" in caught.value.fix
    return caught.value


def test_a_truncated_train_split_is_refused_not_trained_on(cache: tuple[DataConfig, Path]) -> None:
    config, folder = cache
    data = prepare_token_data(config, log=quiet)  # intact: opens, with the token counts of its meta.json
    assert (len(data.train), len(data.heldout)) == (read_meta(folder)["tokens"]["train"], read_meta(folder)["tokens"]["heldout"])
    assert len(data.train) > 10_000
    del data  # closes the memory maps
    with open(folder / "train.bin", "r+b") as handle:
        handle.truncate(1000)  # 500 tokens left of the ~20k that meta.json lists
    refused(config, folder, r"train.bin holds 1,000 bytes, but meta.json lists [\d,]+ uint16 tokens")


def test_a_split_whose_tokens_changed_at_the_same_size_is_refused(cache: tuple[DataConfig, Path]) -> None:
    """Every token replaced by id 7, the size unchanged: trained on before (held-out loss 5.76, not 4.21)."""
    config, folder = cache
    path = folder / "train.bin"
    data = np.fromfile(path, dtype=read_meta(folder)["dtype"])
    np.full_like(data, 7).tofile(path)
    refused(config, folder, "train.bin does not match the sha256 meta.json recorded")


def test_a_split_cut_to_an_odd_byte_count_is_refused(cache: tuple[DataConfig, Path]) -> None:
    config, folder = cache
    path = folder / "heldout.bin"
    with open(path, "r+b") as handle:
        handle.truncate(path.stat().st_size - 1)
    refused(config, folder, "heldout.bin holds")


def test_a_missing_split_is_refused(cache: tuple[DataConfig, Path]) -> None:
    config, folder = cache
    (folder / "train.bin").unlink()
    refused(config, folder, "train.bin is missing")


@pytest.mark.parametrize("content", [GARBAGE, "[1, 2]", json.dumps({"dtype": "float64", "tokens": {}})])
def test_a_damaged_meta_json_is_refused(cache: tuple[DataConfig, Path], content: str) -> None:
    config, folder = cache
    (folder / "meta.json").write_text(content)
    refused(config, folder, "meta.json")


def test_a_cache_folder_without_meta_json_is_refused_before_tokenizing_again(cache: tuple[DataConfig, Path]) -> None:
    """It was tokenized anew (seconds to hours), the new tokens dropped for the folder already there, then refused."""
    config, folder = cache
    (folder / "meta.json").unlink()
    said: list[str] = []
    with pytest.raises(OvertrainError, match="meta.json is missing"):
        prepare_token_data(config, log=said.append)
    assert not any("tokenizing" in line for line in said)


def test_a_garbage_tokenizer_in_the_cache_is_refused_before_it_reaches_a_checkpoint(cache: tuple[DataConfig, Path]) -> None:
    config, folder = cache
    (folder / "tokenizer" / "tokenizer.json").write_text(GARBAGE)
    error = refused(config, folder, "tokenizer.json is damaged")
    assert str(folder / "tokenizer" / "tokenizer.json") in error.problem


def test_a_cache_tokenizer_that_is_not_the_one_meta_describes_is_refused(cache: tuple[DataConfig, Path]) -> None:
    config, folder = cache
    meta = read_meta(folder)
    (folder / "meta.json").write_text(json.dumps({**meta, "vocab_size": meta["vocab_size"] + 1}))
    refused(config, folder, "its tokenizer has 300 tokens")


def test_pretrain_on_a_truncated_cache_exits_2_with_the_fix(tmp_path: Path, corpus: Path, capsys: pytest.CaptureFixture[str]) -> None:
    prepare_token_data(tiny_pretrain_config(tmp_path, corpus).data, log=quiet)
    (train_bin,) = (tmp_path / "cache").glob("tokens-*/train.bin")
    with open(train_bin, "r+b") as handle:
        handle.truncate(1000)
    args = [f"out_dir={tmp_path / 'run'}", f"data.corpus={corpus}", f"data.cache_dir={tmp_path / 'cache'}",
            "data.vocab_size=512", "data.heldout_fraction=0.15"]  # the settings of tiny_pretrain_config: the same cache
    tiny = ["model.d_model=16", "model.n_layers=1", "model.n_heads=2", "train.batch_size=4", "train.seq_len=32", "train.max_tokens=2048",
            "train.warmup_tokens=256", "train.eval_every_tokens=1024", "train.eval_tokens=512", "train.threads=1"]
    assert cli_main(["pretrain", *args, *tiny]) == 2
    error = capsys.readouterr().err
    assert "train.bin holds 1,000 bytes" in error and f"delete the folder {train_bin.parent}" in error and "Traceback" not in error
    assert not (tmp_path / "run" / "checkpoints").exists() or not any((tmp_path / "run" / "checkpoints").iterdir())


# --------------------------------------------------------------------------------------------------
# Shard folders (pre-trained tokenizers)
# --------------------------------------------------------------------------------------------------


def write_shards(folder: Path, documents: int) -> ShardIndex:
    """A shard folder of ``documents`` 10-token training documents in 16-token shards (the last one partial)."""
    folder.mkdir(parents=True)
    writer = ShardWriter(folder, ShardIndex(dtype="uint16", shard_tokens=16), heldout_tokens=0)
    for number in range(documents):
        writer.add_document(np.arange(number, number + 10, dtype=np.uint16), text_bytes=40, heldout=False)
    return writer.commit(documents)


def test_a_truncated_shard_is_refused_when_the_split_is_opened(tmp_path: Path) -> None:
    index = write_shards(tmp_path / "shards", documents=5)  # 50 tokens: 3 full shards and a 2-token part
    assert len(open_split(tmp_path / "shards", index, "train")) == 50
    with open(tmp_path / "shards" / index.train.files[1], "r+b") as handle:
        handle.truncate(7)  # odd: 3.5 tokens of 16
    with pytest.raises(OvertrainError, match=r"train-00001.bin is missing or shorter than the 16 tokens") as caught:
        open_split(tmp_path / "shards", index, "train")
    assert f"delete the folder {tmp_path / 'shards'}" in caught.value.fix


def test_a_truncated_part_file_is_refused_on_resume_not_dropped(tmp_path: Path) -> None:
    index = write_shards(tmp_path / "shards", documents=5)
    part = tmp_path / "shards" / index.train.files[-1]
    assert ".part" in part.name and index.train.tokens[-1] == 2
    part.write_bytes(part.read_bytes()[:2])  # one of its two tokens
    with pytest.raises(OvertrainError, match="is missing or shorter than the 2 tokens"):
        ShardWriter(tmp_path / "shards", read_index(tmp_path / "shards"), heldout_tokens=0)


def test_a_garbage_tokenizer_in_a_shard_folder_is_refused(tmp_path: Path, corpus: Path, pristine_cache: Path) -> None:
    (tokenizer,) = pristine_cache.glob("tokens-*/tokenizer")  # a trained BPE, used as a pre-trained tokenizer
    config = DataConfig(corpus=str(corpus), tokenizer=str(tokenizer), heldout_fraction=0.3, heldout_tokens=2000, cache_dir=str(tmp_path / "cache"),
                        tokenize=TokenizeConfig(workers=1, shard_tokens=4096))
    data = prepare_token_data(config, log=quiet, train_tokens=5000)
    assert len(data.train) >= 5000
    (data.folder / "tokenizer" / "tokenizer.json").write_text(GARBAGE)
    with pytest.raises(OvertrainError, match="tokenizer.json is damaged") as caught:
        prepare_token_data(config, log=quiet, train_tokens=5000)
    assert f"delete the folder {data.folder}" in caught.value.fix


# --------------------------------------------------------------------------------------------------
# Checkpoints: config.json and the tokenizer files are checksummed like the tensors
# --------------------------------------------------------------------------------------------------


@pytest.fixture()
def checkpoint(tmp_path: Path) -> Path:
    return write_untrained_checkpoint(tmp_path / "run")


def test_every_file_of_a_new_checkpoint_is_checksummed(checkpoint: Path) -> None:
    info = read_checkpoint_info(checkpoint)
    on_disk = {path.name for path in checkpoint.iterdir() if path.name != METADATA_FILE}
    assert {"config.json", "tokenizer.json", "tokenizer_config.json"} <= set(info.checksums) == on_disk
    assert all(info.checksums[name] == file_sha256(checkpoint / name) for name in on_disk)


@pytest.mark.parametrize("name", ["config.json", "tokenizer.json", "tokenizer_config.json"])
def test_a_damaged_small_file_of_a_checkpoint_is_caught(checkpoint: Path, name: str) -> None:
    (checkpoint / name).write_text(GARBAGE)
    with pytest.raises(OvertrainError, match=f"{name} is missing or does not match its recorded checksum") as caught:
        load_model(checkpoint)
    assert str(checkpoint) in caught.value.problem and f"copy {name} from another checkpoint" in caught.value.fix


def as_written_before_small_checksums(checkpoint: Path) -> None:
    """Rewrite overtrain.json as older versions wrote it: checksums of the tensor files only."""
    path = checkpoint / METADATA_FILE
    meta = json.loads(path.read_text())
    meta["checksums"] = {name: sha for name, sha in meta["checksums"].items() if name in TENSOR_FILES}
    path.write_text(json.dumps(meta))


@pytest.mark.parametrize(("name", "content", "detail"), [
    ("tokenizer.json", GARBAGE, "tokenizer.json cannot be read"),
    ("config.json", "[]", "config.json holds a JSON list, not an object"),
])
def test_an_older_checkpoint_with_unreadable_json_is_refused(checkpoint: Path, name: str, content: str, detail: str) -> None:
    as_written_before_small_checksums(checkpoint)
    _, info = load_model(checkpoint)  # intact, it is accepted without checksums of its small files, as before
    assert set(info.checksums) == {"model.safetensors", "rng.safetensors"}
    (checkpoint / name).write_text(content)
    with pytest.raises(OvertrainError, match=detail) as caught:
        verify_checkpoint(read_checkpoint_info(checkpoint))
    assert str(checkpoint) in caught.value.problem


def test_a_garbage_tokenizer_json_is_one_error_naming_the_file(checkpoint: Path, tmp_path: Path) -> None:
    path = checkpoint / "tokenizer.json"
    path.write_text(GARBAGE)
    with pytest.raises(OvertrainError, match="cannot be read as a tokenizer") as caught:
        load_tokenizer(checkpoint)
    assert str(path) in caught.value.problem and "another checkpoint of the same run" in caught.value.fix
    intact = tmp_path / "intact"
    write_untrained_checkpoint(intact)
    with pytest.raises(OvertrainError, match="is damaged: it is not a tokenizer's JSON") as caught:
        check_same_tokenizer(checkpoint, intact / "tokenizer")
    assert str(path) in caught.value.problem


def test_cli_on_an_older_checkpoint_with_a_garbage_tokenizer_exits_2(checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    as_written_before_small_checksums(checkpoint)
    (checkpoint / "tokenizer.json").write_text(GARBAGE)
    assert cli_main(["alpaca-export", str(checkpoint), "--out", str(tmp_path / "a.json")]) == 2
    error = capsys.readouterr().err
    assert f"checkpoint {checkpoint} is corrupted: tokenizer.json cannot be read" in error and "Traceback" not in error
    assert cli_main(["noise", str(checkpoint), "gammas=[1]", "seeds=[0]", "--out", str(tmp_path / "n.json")]) != 0
    error = capsys.readouterr().err
    assert f"checkpoint {checkpoint} is corrupted: tokenizer.json cannot be read" in error and "Traceback" not in error


def test_pretrain_does_not_resume_from_a_checkpoint_with_a_garbage_tokenizer(tmp_path: Path, corpus: Path) -> None:
    config = tiny_pretrain_config(tmp_path, corpus)
    finished = train_run(config, log=quiet)
    (finished.final_checkpoint / "tokenizer.json").write_text(GARBAGE)
    with pytest.raises(OvertrainError, match="tokenizer.json is missing or does not match its recorded checksum") as caught:
        train_run(config, log=quiet)
    assert str(finished.final_checkpoint) in caught.value.problem


def test_pretrain_names_a_newest_checkpoint_without_its_metadata_as_damaged(tmp_path: Path, corpus: Path) -> None:
    """Its fix was the noise verb's ('use the absolute/relative noise modes'); now: restore it, or delete the
    folder and resume, which trains it again."""
    config = tiny_pretrain_config(tmp_path, corpus, "train.checkpoint_every_tokens=4096")
    finished = train_run(config, log=quiet)
    (finished.final_checkpoint / "overtrain.json").unlink()
    with pytest.raises(OvertrainError, match="newest checkpoint .* has no overtrain.json: it is damaged") as caught:
        train_run(config, log=quiet)
    assert f"delete {finished.final_checkpoint} and resume" in caught.value.fix
    shutil.rmtree(finished.final_checkpoint)
    assert train_run(config, log=quiet).tokens_seen == finished.tokens_seen


def test_a_truncated_tensor_file_is_named_as_cut_short_by_the_run_and_its_dry_run(
    tmp_path: Path, corpus: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    args = [f"out_dir={run}", f"data.corpus={corpus}", f"data.cache_dir={tmp_path / 'cache'}", "data.vocab_size=512",
            "data.heldout_fraction=0.15", "model.d_model=16", "model.n_layers=1", "model.n_heads=2", "train.batch_size=4",
            "train.seq_len=32", "train.warmup_tokens=256", "train.eval_every_tokens=1024", "train.eval_tokens=512", "train.threads=1"]
    assert cli_main(["pretrain", *args, "train.max_tokens=1024"]) == 0
    (newest,) = (run / "checkpoints").iterdir()
    with open(newest / "model.safetensors", "r+b") as handle:
        handle.truncate(100)
    capsys.readouterr()
    for dry_run in (["--dry-run"], []):  # resuming (extending) reads the newest checkpoint: both refuse it alike
        assert cli_main(["pretrain", *args, "train.max_tokens=2048", "train.extend=true", *dry_run]) == 2
        error = capsys.readouterr().err
        assert f"checkpoint {newest} is corrupted: model.safetensors is truncated, extended or not a safetensors file" in error
        assert "restore model.safetensors from a backup" in error and "Traceback" not in error
    assert [path.name for path in (run / "checkpoints").iterdir()] == [newest.name]  # nothing written


def test_a_checkpoint_missing_a_file_or_with_broken_metadata_gets_a_fix_that_fits(checkpoint: Path) -> None:
    """The fix names what restores that file (the rng state is a tensor file: a backup or training it again;
    not "every checkpoint has the same config.json"), and broken metadata is no longer answered with "delete
    the folder", which for a checkpoint outside a run would throw away the only copy."""
    (checkpoint / "rng.safetensors").unlink()
    with pytest.raises(OvertrainError, match="is incomplete: rng.safetensors is missing") as caught:
        verify_checkpoint(read_checkpoint_info(checkpoint))
    assert caught.value.fix.startswith("restore rng.safetensors from a backup, or delete")
    (checkpoint / METADATA_FILE).write_text(GARBAGE)
    with pytest.raises(OvertrainError, match="is corrupted") as caught:
        read_checkpoint_info(checkpoint)
    assert caught.value.fix.startswith(f"restore {METADATA_FILE} from a backup, or delete")


def test_a_checkpoint_that_lost_its_metadata_is_refused_not_probed_as_a_foreign_model(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before, a checkpoint of ours without overtrain.json had a config.json, so the probes took it for a
    Hugging Face model: probed with no tokens, no checksums and init stds from elsewhere, as if nothing were
    wrong. Its rng.safetensors (only overtrain writes it) gives it away; the dry run, the run and the family
    listing refuse it alike, and a plain Hugging Face folder is still taken."""
    text = tmp_path / "eval.txt"
    text.write_text("def f(x):\n    return x + 1\n" * 40)
    (checkpoint / METADATA_FILE).unlink()
    probe = ["noise", str(checkpoint), "gammas=[1]", "seeds=[0]", f"eval_data={text}", "eval_tokens=64"]
    for dry_run in (["--dry-run"], []):
        assert cli_main([*probe, "--out", str(tmp_path / "noise"), *dry_run]) == 2
        error = capsys.readouterr().err
        assert f"{checkpoint} is an overtrain checkpoint that lost its {METADATA_FILE}" in error and "Traceback" not in error
        assert f"restore {METADATA_FILE} from a backup, or delete the folder" in error
    assert not (tmp_path / "noise").exists()  # refused before the store was made
    assert cli_main(["family", str(checkpoint.parent.parent)]) == 2
    assert "lost its overtrain.json" in capsys.readouterr().err
    (checkpoint / "rng.safetensors").unlink()
    (checkpoint / "optimizer.safetensors").unlink(missing_ok=True)
    assert cli_main([*probe, "--out", str(tmp_path / "noise"), "--dry-run"]) == 2  # its name and place in a run still say it
    assert "lost its overtrain.json (it is named and placed as a run's checkpoint)" in capsys.readouterr().err
    plain = shutil.copytree(checkpoint, tmp_path / "exported")  # the same files elsewhere: a Hugging Face folder
    save_file({"exp_avg": torch.zeros(2)}, str(plain / "optimizer.safetensors"))  # other trainers write this name too
    assert cli_main(["noise", str(plain), *probe[2:], "--out", str(tmp_path / "foreign")]) == 0


def test_a_checkpoint_copied_in_from_another_run_is_refused_not_resumed(tmp_path: Path, corpus: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Before, the run resumed from it (rc 0) and its next checkpoint held the other run's weights under this
    run's settings: run.json was compared with the command, never with the checkpoint's own run config."""
    config = tiny_pretrain_config(tmp_path, corpus, "train.checkpoint_every_tokens=4096")
    ours = train_run(config, log=quiet)
    other = train_run(tiny_pretrain_config(tmp_path, corpus, "train.checkpoint_every_tokens=4096", "train.seed=1",
                                           f"out_dir={tmp_path / 'other'}"), log=quiet)
    shutil.rmtree(ours.final_checkpoint)
    shutil.copytree(other.final_checkpoint, ours.final_checkpoint)
    for dry_run in (["--dry-run"], []):
        assert cli_main(["pretrain", str(Path(config.out_dir) / "config.yaml"), *dry_run]) == 2  # the run's own settings
        error = capsys.readouterr().err
        assert f"checkpoint {ours.final_checkpoint} was written by another run" in error and "train.seed: 1 -> 0" in error
        assert f"move {ours.final_checkpoint} out of" in error and "Traceback" not in error
    shutil.rmtree(ours.final_checkpoint)
    assert train_run(config, log=quiet).tokens_seen == ours.tokens_seen  # without it, the run trains its own again


def test_a_checkpoint_whose_name_and_metadata_disagree_is_refused(checkpoint: Path, tmp_path: Path) -> None:
    """Before, an overtrain.json edited to another token count was read as it said (the checkpoint moved on
    every curve over tokens), and a renamed folder was listed at its new name's place among its run's."""
    meta = json.loads((checkpoint / METADATA_FILE).read_text())
    (checkpoint / METADATA_FILE).write_text(json.dumps({**meta, "tokens_seen": meta["tokens_seen"] + 1}))
    with pytest.raises(OvertrainError, match="it records step 1 and 257 tokens, but the folder is named for step 1 and 256 tokens"):
        read_checkpoint_info(checkpoint)
    (checkpoint / METADATA_FILE).write_text(json.dumps(meta))
    renamed = checkpoint.rename(checkpoint.with_name("step-000009-tokens-2304"))
    with pytest.raises(OvertrainError, match="but the folder is named for step 9 and 2,304 tokens"):
        read_checkpoint_info(renamed)
    assert read_checkpoint_info(shutil.copytree(renamed, tmp_path / "exported")).tokens_seen == 256  # another name: no claim to check
