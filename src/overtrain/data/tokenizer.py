"""Byte-level BPE tokenizers, trained with the ``tokenizers`` library and saved in Hugging Face format.

A saved folder loads with ``AutoTokenizer.from_pretrained(folder)``. One special token, ``<|endoftext|>``,
separates documents and serves as BOS, EOS and padding (padding is always masked out of losses).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from overtrain.errors import OvertrainError

END_OF_TEXT = "<|endoftext|>"


def train_bpe_tokenizer(documents: Iterable[str], vocab_size: int) -> Tokenizer:
    """Train a byte-level BPE of ``vocab_size`` tokens (256 byte tokens + merges + the special token)."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[END_OF_TEXT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(documents, trainer=trainer)
    return tokenizer


def save_hf_tokenizer(tokenizer: Tokenizer, folder: Path, model_max_length: int = 1_000_000) -> None:
    """Write tokenizer.json and its Hugging Face config files into ``folder``."""
    from transformers import PreTrainedTokenizerFast

    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=END_OF_TEXT,
        eos_token=END_OF_TEXT,
        pad_token=END_OF_TEXT,
        unk_token=None,
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,
    )
    wrapped.save_pretrained(str(folder))


def load_tokenizer(folder: Path) -> Tokenizer:
    """The raw ``tokenizers`` object of a saved folder (fast batch encoding, no transformers import)."""
    path = Path(folder) / "tokenizer.json"
    if not path.is_file():
        raise OvertrainError(f"no tokenizer.json in {folder}", "point at a checkpoint or token-data folder that has one")
    return Tokenizer.from_file(str(path))


def end_of_text_id(tokenizer: Tokenizer) -> int:
    token_id = tokenizer.token_to_id(END_OF_TEXT)
    if token_id is None:
        raise OvertrainError(f"the tokenizer has no {END_OF_TEXT} token", "use a tokenizer trained by overtrain")
    return token_id
