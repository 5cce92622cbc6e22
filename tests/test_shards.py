"""Pre-trained tokenizers and sharded token files: any worker count writes the same shards and held-out split,
a killed tokenization resumes where it stopped, tokenization stops at what the run needs, training reads the
shards in order, and the trained-BPE path (the demo's) writes exactly the tokens it wrote before."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest
from helpers import tiny_pretrain_config

from overtrain.cli import main as cli_main
from overtrain.data.config import DataConfig, TokenizeConfig
from overtrain.data.corpus import is_heldout_document, iter_documents
from overtrain.data.shards import read_index
from overtrain.data.tokenize_parallel import ChunkEncoder, _decode_row, _encode_row
from overtrain.data.tokenizer import load_pretrained_tokenizer, save_hf_tokenizer, train_bpe_tokenizer
from overtrain.data.tokens import prepare_token_data, train_batch
from overtrain.errors import OvertrainError
from overtrain.pretrain.loop import train_run

SHARD_TOKENS = 2048
HELDOUT_TOKENS = 6000
HELDOUT_FRACTION = 0.2
EVERYTHING = 10**12


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("shards")


DOCUMENTS = 30


@pytest.fixture(scope="module")
def corpus(root: Path) -> Path:
    """Real text, small: the first standard-library modules of 2-8 KB, one document each (~90k tokens)."""
    folder = root / "corpus"
    folder.mkdir()
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    sources = sorted(path for path in stdlib.glob("*.py") if 2_000 < path.stat().st_size < 8_000)[:DOCUMENTS]
    for number, source in enumerate(sources):
        (folder / f"doc{number:03d}.txt").write_text(source.read_text(encoding="utf-8", errors="ignore"))
    return folder


@pytest.fixture(scope="module")
def tokenizer_folder(root: Path, corpus: Path) -> Path:
    """A pre-trained tokenizer as a user would have it: a folder written by save_pretrained."""
    folder = root / "tokenizer"
    save_hf_tokenizer(train_bpe_tokenizer(list(iter_documents(corpus))[:6], 400), folder)
    return folder


def shard_config(corpus: Path, tokenizer: Path, cache: Path, workers: int = 1, engine: str = "processes") -> DataConfig:
    return DataConfig(
        corpus=str(corpus), tokenizer=str(tokenizer), heldout_fraction=HELDOUT_FRACTION, heldout_tokens=HELDOUT_TOKENS, cache_dir=str(cache),
        tokenize=TokenizeConfig(workers=workers, engine=engine, shard_tokens=SHARD_TOKENS, chunk_documents=2),
    )


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir()) if path.is_file()}


@pytest.fixture(scope="module")
def one_worker(root: Path, corpus: Path, tokenizer_folder: Path):
    return prepare_token_data(shard_config(corpus, tokenizer_folder, root / "one"), log=lambda *_: None, train_tokens=EVERYTHING)


def test_one_and_two_workers_write_the_same_shards_and_held_out_split(root: Path, corpus: Path, tokenizer_folder: Path, one_worker) -> None:
    two = prepare_token_data(shard_config(corpus, tokenizer_folder, root / "two", workers=2), log=lambda *_: None, train_tokens=EVERYTHING)
    assert two.folder.name == one_worker.folder.name  # the worker count is not part of what the shards are
    assert folder_bytes(two.folder) == folder_bytes(one_worker.folder)  # every shard and the index, byte for byte
    index = read_index(one_worker.folder)
    assert len(index.train.files) > 10 and all(count == SHARD_TOKENS for count in index.train.tokens[:-1])
    # The splits are the documents in corpus order, routed by the hash of their text: nothing lost or repeated.
    pretrained = load_pretrained_tokenizer(str(tokenizer_folder))
    eot = pretrained.end_of_text_id
    train_ids, heldout_ids = [], []
    for document in iter_documents(corpus):
        ids = [*pretrained.tokenizer.encode(document, add_special_tokens=False).ids, eot]
        (heldout_ids if is_heldout_document(document, HELDOUT_FRACTION) else train_ids).extend(ids)
    assert np.array_equal(np.asarray(one_worker.train), train_ids)
    assert np.array_equal(np.asarray(one_worker.heldout), heldout_ids[:HELDOUT_TOKENS])  # cut at data.heldout_tokens
    assert index.heldout_complete and index.corpus_exhausted


KILL_AFTER_COMMITS = """
import os, signal
from pathlib import Path
from overtrain.data.config import DataConfig, TokenizeConfig
from overtrain.data.tokenize_parallel import tokenize_into_shards
from overtrain.data.tokenizer import load_pretrained_tokenizer

config = DataConfig(**{config!r})
config.tokenize = TokenizeConfig(**config.tokenize)
commits = []

def die_after_three(index):
    commits.append(index)
    if len(commits) == 3:
        os.kill(os.getpid(), signal.SIGKILL)

tokenize_into_shards(config, Path({folder!r}), load_pretrained_tokenizer(config.tokenizer), train_tokens=10**12, on_commit=die_after_three)
"""


def test_killed_tokenization_resumes_without_losing_or_repeating_a_shard(root: Path, corpus: Path, tokenizer_folder: Path, one_worker) -> None:
    cache = root / "killed"
    folder = cache / one_worker.folder.name  # the key does not depend on the cache folder
    config = dataclasses.asdict(shard_config(corpus, tokenizer_folder, cache))
    del config["long_tail"]
    script = KILL_AFTER_COMMITS.format(config=config, folder=str(folder))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1] / "src"), os.environ.get("PYTHONPATH", "")])}
    killed = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], env=env, capture_output=True, text=True, timeout=120, check=False)
    assert killed.returncode == -9, killed.stderr
    index = read_index(folder)
    assert index.commits == 3 and 0 < index.documents_read < DOCUMENTS and not index.corpus_exhausted
    shards_before = list(index.train.files)
    # What a kill mid-shard leaves behind: a torn temporary and a shard written after the last commit.
    (folder / "train-00099.bin.tmp-torn").write_bytes(b"torn")
    next_full = folder / f"train-{sum('.part' not in name for name in shards_before):05d}.bin"
    next_full.write_bytes(b"\x00" * 10)
    messages: list[str] = []
    resumed = prepare_token_data(shard_config(corpus, tokenizer_folder, cache), log=messages.append, train_tokens=EVERYTHING)
    assert any(f"resuming after {index.documents_read:,} documents" in message for message in messages)
    assert folder_bytes(resumed.folder) == folder_bytes(one_worker.folder)  # same shards, none twice, none missing
    assert read_index(folder).train.files[: len(shards_before) - 1] == shards_before[:-1]


def test_tokenization_stops_at_what_the_run_needs_and_a_larger_run_continues_it(root: Path, corpus: Path, tokenizer_folder: Path, one_worker) -> None:
    config = shard_config(corpus, tokenizer_folder, root / "budget")
    small = prepare_token_data(config, log=lambda *_: None, train_tokens=5000)
    index = read_index(small.folder)
    assert 5000 <= len(small.train) < len(one_worker.train) and not index.corpus_exhausted
    assert index.documents_read < DOCUMENTS and index.heldout_complete  # the held-out split is full before a run starts
    assert np.array_equal(np.asarray(small.train), np.asarray(one_worker.train)[: len(small.train)])
    assert np.array_equal(np.asarray(small.heldout), np.asarray(one_worker.heldout))
    larger = prepare_token_data(config, log=lambda *_: None, train_tokens=EVERYTHING)
    assert folder_bytes(larger.folder) == folder_bytes(one_worker.folder)


def test_jobs_that_need_the_same_shards_take_turns(root: Path, corpus: Path, tokenizer_folder: Path, one_worker) -> None:
    """Two jobs (threads here; sweep jobs or DDP ranks are processes) asking for the same folder at once: one
    tokenizes under the folder's lock, the other waits and finds it ready; nothing is written twice."""
    config = shard_config(corpus, tokenizer_folder, root / "together")
    results, messages = [], []

    def job() -> None:
        results.append(prepare_token_data(config, log=messages.append, train_tokens=EVERYTHING))

    threads = [threading.Thread(target=job) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 2 and sum(message.startswith("tokenizing") for message in messages) == 1
    assert folder_bytes(results[0].folder) == folder_bytes(one_worker.folder)


def test_training_reads_the_shards_in_order_and_ranks_share_each_batch(one_worker) -> None:
    data, batch, seq = one_worker, 8, 32
    stream = np.asarray(data.train).astype(np.int64)
    inputs, targets = train_batch(data, batch, seq, seed=0, step=3)
    starts = (3 * batch + np.arange(batch)) * seq  # window w of the run starts at w x seq_len
    assert np.array_equal(inputs.numpy(), np.stack([stream[s : s + seq] for s in starts]))
    assert np.array_equal(targets.numpy(), np.stack([stream[s + 1 : s + seq + 1] for s in starts]))
    assert np.array_equal(train_batch(data, batch, seq, seed=7, step=3)[0].numpy(), inputs.numpy())  # the seed sets only the init
    halves = [train_batch(data, batch, seq, 0, 3, rows=slice(r * 4, r * 4 + 4))[0] for r in range(2)]  # two DDP ranks
    assert np.array_equal(np.concatenate([h.numpy() for h in halves]), inputs.numpy())
    crossing = np.arange(SHARD_TOKENS - 5, SHARD_TOKENS + 5)  # a window across a shard boundary, gathered from two maps
    assert np.array_equal(data.train[crossing], stream[crossing])


def test_a_run_trains_on_the_shards_and_its_checkpoint_keeps_the_tokenizer(tmp_path: Path, corpus: Path, tokenizer_folder: Path) -> None:
    config = tiny_pretrain_config(tmp_path, corpus, f"data.tokenizer={tokenizer_folder}", "data.heldout_tokens=4000", "data.heldout_fraction=0.2",
                                  "data.tokenize.shard_tokens=4096", "data.tokenize.chunk_documents=2", "train.max_tokens=2048",
                                  "train.eval_every_tokens=2048")
    result = train_run(config, log=lambda *_: None, show_progress=False)
    index = read_index(next(path for path in Path(config.data.cache_dir).glob("shards-*") if path.is_dir()))
    assert 2048 + 1 <= index.train.total < 2048 + 20_000 and not index.corpus_exhausted  # only what 8 steps read
    saved = result.final_checkpoint / "tokenizer.json"
    assert saved.read_bytes() == (tokenizer_folder / "tokenizer.json").read_bytes()  # the tokenizer as it is
    assert result.final_heldout_loss < 7.0


def _hub_cache(cache: Path, repo: str, revision: str, folder: Path) -> None:
    """A Hugging Face cache as huggingface_hub lays it out: refs/REVISION -> commit, snapshots/COMMIT/files."""
    storage = cache / f"models--{repo.replace('/', '--')}"
    commit = hashlib.sha1(f"{repo}@{revision}".encode()).hexdigest()
    (storage / "refs").mkdir(parents=True)
    (storage / "refs" / revision).write_text(commit)
    shutil.copytree(folder, storage / "snapshots" / commit)


def test_tokenizer_by_hub_name_offline_and_the_errors_for_missing_ones(tmp_path: Path, tokenizer_folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _hub_cache(tmp_path / "hub", "tiny-org/tokenizer", "main", tokenizer_folder)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    by_name = load_pretrained_tokenizer("tiny-org/tokenizer")
    assert by_name.commit is not None and by_name.size == 400
    assert by_name.tokenizer.encode("def f(x):").ids == load_pretrained_tokenizer(str(tokenizer_folder)).tokenizer.encode("def f(x):").ids
    with pytest.raises(OvertrainError, match="revision 'v2' of tiny-org/tokenizer was not found") as missing_revision:
        load_pretrained_tokenizer("hf:tiny-org/tokenizer@v2")
    assert "hf download" in str(missing_revision.value)
    with pytest.raises(OvertrainError, match="'allenai/OLMo-1B-hf' is no local folder.*not found in the local Hugging Face cache"):
        load_pretrained_tokenizer("allenai/OLMo-1B-hf")
    with pytest.raises(OvertrainError, match="not a folder that exists"):
        load_pretrained_tokenizer(str(tmp_path / "no-such-tokenizer"))


def test_ray_rows_carry_the_same_encoding_as_a_worker_process(one_worker, tokenizer_folder: Path, corpus: Path) -> None:
    """The Ray Data engine's row (``_encode_row`` in the task, ``_decode_row`` on the driver) carries what the
    tokenizer gives; a Ray run itself takes ~50 s to start on the 2 shared cores here, so it is run by hand
    (docs/data.md)."""
    pretrained = load_pretrained_tokenizer(str(tokenizer_folder))
    encoder = ChunkEncoder(pretrained.tokenizer.to_str(), pretrained.end_of_text_id, HELDOUT_FRACTION)
    documents = list(iter_documents(corpus))[:3]
    row = _encode_row({"order": 5, "documents": np.asarray(documents, dtype=object)}, encoder)
    decoded = _decode_row(row)  # what the driver reads back from the row
    # expected values built without ChunkEncoder: the tokenizer itself, the end-of-text id, the hash rule
    per_document = [pretrained.tokenizer.encode(document, add_special_tokens=False).ids + [pretrained.end_of_text_id] for document in documents]
    assert row["order"] == 5
    assert decoded.ids.tolist() == [token for ids in per_document for token in ids]
    assert decoded.lengths.tolist() == [len(ids) for ids in per_document]
    assert decoded.text_bytes.tolist() == [len(document.encode("utf-8")) for document in documents]
    assert decoded.heldout.tolist() == [is_heldout_document(document, HELDOUT_FRACTION) for document in documents]


def test_trained_bpe_path_writes_the_tokens_it_wrote_before(tmp_path: Path) -> None:
    """The demo's path (embedded corpus, trained byte-level BPE): pinned to the files the code before sharding
    wrote (commit 52d56b7); a change here would change every number of the demo."""
    data = prepare_token_data(DataConfig(corpus="embedded", vocab_size=259, max_documents=12, cache_dir=str(tmp_path)), log=lambda *_: None)
    assert data.folder.name == "tokens-19ad041a7b3da7d6" and not data.in_order
    assert hashlib.sha256((data.folder / "train.bin").read_bytes()).hexdigest() == "82ef88dd0e18b69cd626be40dd05a383597f859781c6d02bf648cbaf0291407d"
    assert hashlib.sha256((data.folder / "heldout.bin").read_bytes()).hexdigest() == "20c72170bbd2f3f4f1c2f1c526eafdce52cfd4a5596e65f6da0b3b28ad9ae64f"
    inputs, _ = train_batch(data, 8, 32, 0, 3)
    assert int(inputs.sum()) == 26371 and inputs[0, :8].tolist() == [79, 221, 80, 79, 83, 83, 73, 66]


def test_dry_run_names_the_olmo_tokenizer_and_the_shard_plan(capsys: pytest.CaptureFixture[str]) -> None:
    config = Path(__file__).parents[1] / "configs" / "paper" / "olmo30m_c4.yaml"
    assert cli_main(["pretrain", str(config), "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "tokenizer allenai/OLMo-1B-hf (pre-trained, used as is" in text
    assert "1,908 training shards + 1 held-out of 67,108,864 tokens" in text and "estimated" in text
