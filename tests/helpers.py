"""Small real corpora and configs that tests build for themselves (no network, seconds to make)."""

from __future__ import annotations

import sysconfig
from collections.abc import Iterable
from pathlib import Path

from overtrain.pretrain.config import PretrainConfig, load_pretrain_config


def write_stdlib_text_corpus(folder: Path, documents: int = 60) -> Path:
    """A folder of real text documents: the first ``documents`` modules of the Python standard library."""
    folder.mkdir(parents=True, exist_ok=True)
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    sources = sorted(path for path in stdlib.glob("*.py") if path.stat().st_size > 4_000)[:documents]
    for index, source in enumerate(sources):
        (folder / f"doc{index:03d}.txt").write_text(source.read_text(encoding="utf-8", errors="ignore"))
    return folder


def merged_overrides(*groups: Iterable[str]) -> list[str]:
    """The ``key=value`` overrides of every group, a later value of a key replacing an earlier one in place.

    The command line refuses a key given twice, so a test that layers its own settings on a base list
    merges them with this first."""
    merged: dict[str, str] = {}
    for text in (text for group in groups for text in group):
        merged[text.split("=", 1)[0].strip()] = text
    return list(merged.values())


def tiny_pretrain_config(tmp_path: Path, corpus: Path, *overrides: str) -> PretrainConfig:
    """A 0.1M-parameter run of a few dozen steps on ``corpus``, everything under ``tmp_path``."""
    base = [
        f"out_dir={tmp_path / 'run'}",
        f"data.corpus={corpus}",
        f"data.cache_dir={tmp_path / 'cache'}",
        "data.vocab_size=512",
        "data.heldout_fraction=0.15",
        "model.d_model=32",
        "model.n_layers=2",
        "model.n_heads=2",
        "train.batch_size=8",
        "train.seq_len=32",
        "train.max_tokens=8192",
        "train.warmup_tokens=1024",
        "train.eval_every_tokens=4096",
        "train.eval_tokens=2048",
        "train.lr=3e-3",
        "train.threads=1",
    ]
    return load_pretrain_config(None, merged_overrides(base, overrides))


def write_untrained_checkpoint(run_folder: Path, *, seed: int = 0, step: int = 1, tokens_seen: int = 256, tie: bool = True) -> Path:
    """A real checkpoint folder in a second, without training: a freshly initialized 2-layer model, a
    300-token BPE, and overtrain.json as the training loop writes it (seeds differ -> weights differ)."""
    from overtrain.checkpoints.folder import save_checkpoint
    from overtrain.config import config_to_dict
    from overtrain.data.tokenizer import end_of_text_id, save_hf_tokenizer, train_bpe_tokenizer
    from overtrain.model.llama import build_model

    config = load_pretrain_config(None, ["model.d_model=32", "model.n_layers=2", "model.n_heads=2", f"model.tie_embeddings={tie}",
                                         "data.vocab_size=300", "train.seq_len=16", f"train.seed={seed}"])
    tokenizer_folder = Path(run_folder) / "tokenizer"
    if not (tokenizer_folder / "tokenizer.json").is_file():
        tokenizer = train_bpe_tokenizer(["def f(x):\n    return x + 1\n" * 50, "the quick brown fox\n" * 50], 300)
        save_hf_tokenizer(tokenizer, tokenizer_folder)
    from overtrain.data.tokenizer import load_tokenizer

    eot = end_of_text_id(load_tokenizer(tokenizer_folder))
    model, init_std = build_model(config.model, 300, 16, seed)
    return save_checkpoint(Path(run_folder), model=model, optimizer=None, step=step, tokens_seen=tokens_seen,
                           run_config=config_to_dict(config), init_std=init_std, tokenizer_folder=tokenizer_folder, end_of_text_id=eot)
