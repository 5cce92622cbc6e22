"""Small real corpora and configs that tests build for themselves (no network, seconds to make)."""

from __future__ import annotations

import sysconfig
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
    return load_pretrain_config(None, base + list(overrides))
