"""Where the pre-training text comes from and how it is tokenized."""

from __future__ import annotations

from dataclasses import dataclass, field

from overtrain.config import OMITTED_AT_DEFAULT
from overtrain.data.synthetic import LongTailConfig


@dataclass
class DataConfig:
    """Where the text comes from and how it is tokenized."""

    corpus: str = "embedded"
    """``embedded`` (the shipped public-domain corpus), a .txt/.jsonl file or folder, or ``hf:NAME[:CONFIG]``."""
    text_field: str = "text"
    """Field holding the text in JSONL records or Hugging Face datasets."""
    vocab_size: int = 2048
    """Size of the byte-level BPE vocabulary trained on the corpus."""
    heldout_fraction: float = 0.02
    """Fraction of documents held out for evaluation (chosen by a hash of the document, not at random)."""
    max_documents: int | None = None
    """Read at most this many documents (useful for streamed Hugging Face corpora such as C4)."""
    cache_dir: str = "runs/cache"
    """Where tokenizers and token files are kept, keyed by a hash of these settings."""
    long_tail: LongTailConfig = field(default_factory=LongTailConfig, metadata=OMITTED_AT_DEFAULT)
    """Synthetic Zipf-distributed facts mixed into the corpus (``long_tail.fraction`` > 0 turns it on; see
    overtrain.data.synthetic). Off by default, and then left out of saved configs and keys."""
