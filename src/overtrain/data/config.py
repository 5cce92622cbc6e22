"""Where the pre-training text comes from and how it is tokenized."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from overtrain.config import OMITTED_AT_DEFAULT
from overtrain.data.synthetic import LongTailConfig


@dataclass
class TokenizeConfig:
    """How a corpus is tokenized with a pre-trained tokenizer (none of it changes the tokens a run reads)."""

    workers: int = 0
    """Tokenizing processes (or Ray tasks in flight); 0 uses every core of this machine (``os.cpu_count()``)."""
    engine: Literal["processes", "ray"] = "processes"
    """``processes``: worker processes on this machine. ``ray``: Ray Data tasks on the cluster ``ray.init()``
    joins (set RAY_ADDRESS, e.g. ``auto``, to use a running cluster; without it Ray starts a local one)."""
    shard_tokens: int = 67_108_864
    """Tokens per shard file (2^26: 128 MiB of uint16 ids); every shard but the last of a split is this long."""
    chunk_documents: int = 256
    """Documents per unit of work; progress is saved after each chunk that completes a shard."""


@dataclass
class DataConfig:
    """Where the text comes from and how it is tokenized."""

    corpus: str = "embedded"
    """``embedded`` (the shipped public-domain corpus), a .txt/.jsonl file or folder, or ``hf:NAME[:CONFIG]``."""
    text_field: str = "text"
    """Field holding the text in JSONL records or Hugging Face datasets (plain text, the embedded corpus or a
    .txt file, has no fields: there it changes nothing, not even the cache key)."""
    vocab_size: int = 2048
    """Size of the byte-level BPE vocabulary trained on the corpus. With a pre-trained ``tokenizer``: the
    model's vocabulary (embedding rows), raised to the tokenizer's size when smaller; a larger value pads
    it (OLMo pads its 50,280-token tokenizer to 50,304)."""
    tokenizer: str = field(default="bpe", metadata=OMITTED_AT_DEFAULT)
    """``bpe`` (default) trains a byte-level BPE on the corpus (read into memory, one process). Anything else
    is a pre-trained tokenizer used as it is: a folder holding tokenizer.json, or a Hub name such as
    ``allenai/OLMo-1B-hf`` or ``hf:ORG/NAME@REVISION``. The corpus is then streamed and tokenized in
    parallel into sharded token files (see ``tokenize``), only as far as the run's budget needs, and a
    run reads its training tokens in order, each once."""
    heldout_fraction: float = 0.02
    """Fraction of documents held out for evaluation (chosen by a hash of the document, not at random)."""
    max_documents: int | None = None
    """Read at most this many documents (useful for streamed Hugging Face corpora such as C4)."""
    heldout_tokens: int = field(default=4_194_304, metadata=OMITTED_AT_DEFAULT)
    """Pre-trained ``tokenizer`` only: the held-out split (documents chosen by ``heldout_fraction``, in
    corpus order) is cut at this many tokens, so it stays the same as the training split grows; later
    held-out documents are skipped."""
    tokenize: TokenizeConfig = field(default_factory=TokenizeConfig, metadata=OMITTED_AT_DEFAULT)
    """Pre-trained ``tokenizer`` only: workers, engine and shard size of the parallel tokenization."""
    cache_dir: str = "runs/cache"
    """Where tokenizers and token files are kept, keyed by a hash of these settings."""
    long_tail: LongTailConfig = field(default_factory=LongTailConfig, metadata=OMITTED_AT_DEFAULT)
    """Synthetic Zipf-distributed facts mixed into the corpus (``long_tail.fraction`` > 0 turns it on; see
    overtrain.data.synthetic). Off by default, and then left out of saved configs and keys."""


def tokenizer_problems(config: DataConfig) -> list[tuple[str, object, str]]:
    """Every invalid tokenizer or tokenization setting as ``(key, value, allowed)`` (for the config check)."""
    problems: list[tuple[str, object, str]] = []

    def whole_number_at_least(key: str, value: object, low: int, example: str) -> None:
        if not (isinstance(value, int) and not isinstance(value, bool) and value >= low):
            problems.append((key, value, f"a whole number >= {low}, e.g. {example}"))

    if not (isinstance(config.tokenizer, str) and config.tokenizer.strip()):
        problems.append(("data.tokenizer", config.tokenizer, "bpe, a tokenizer folder, or a Hub name such as allenai/OLMo-1B-hf"))
    whole_number_at_least("data.heldout_tokens", config.heldout_tokens, 1, "4194304")
    whole_number_at_least("data.tokenize.workers", config.tokenize.workers, 0, "8 (0: every core)")
    whole_number_at_least("data.tokenize.shard_tokens", config.tokenize.shard_tokens, 2, "67108864")
    whole_number_at_least("data.tokenize.chunk_documents", config.tokenize.chunk_documents, 1, "256")
    return problems
