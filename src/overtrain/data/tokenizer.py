"""Tokenizers: byte-level BPEs trained on the corpus, or pre-trained ones used as they are.

``data.tokenizer: bpe`` (the default) trains a byte-level BPE with the ``tokenizers`` library and saves it
in Hugging Face format; a saved folder loads with ``AutoTokenizer.from_pretrained(folder)``. One special
token, ``<|endoftext|>``, separates documents and serves as BOS, EOS and padding (padding is always masked
out of losses).

Any other ``data.tokenizer`` names a pre-trained tokenizer, used as it is (no training):
a local folder holding ``tokenizer.json`` (or files ``AutoTokenizer`` turns into a fast tokenizer), or a Hub
repository ``ORG/NAME`` / ``hf:ORG/NAME@REVISION`` (e.g. ``allenai/OLMo-1B-hf``, the paper's), of which only
the tokenizer files are downloaded. Its end-of-sequence token separates documents.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from overtrain.errors import OvertrainError
from overtrain.hub_files import REPO_NAME, download_repo_files, is_hub_reference, parse_hub_reference

END_OF_TEXT = "<|endoftext|>"
TRAINED_BPE = "bpe"
"""``data.tokenizer`` value that trains a byte-level BPE on the corpus (the default)."""
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
    "vocab.json", "merges.txt", "added_tokens.json",
)
"""The files of a Hugging Face tokenizer (downloaded from the Hub, copied next to the token shards)."""


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


DAMAGED_TOKENIZER_FIX = (
    "restore tokenizer.json from another checkpoint of the same run (every checkpoint of a run holds the same one), "
    "or delete the folder that holds it and make it again"
)


def load_tokenizer(folder: Path, fix: str = DAMAGED_TOKENIZER_FIX) -> Tokenizer:
    """The raw ``tokenizers`` object of a saved folder (fast batch encoding, no transformers import); a missing
    or damaged ``tokenizer.json`` is an :class:`OvertrainError` naming the file and ``fix``."""
    path = Path(folder) / "tokenizer.json"
    if not path.is_file():
        raise OvertrainError(f"no tokenizer.json in {folder}", "point at a checkpoint or token-data folder that has one")
    return read_tokenizer_file(path, fix)


def read_tokenizer_file(path: Path, fix: str) -> Tokenizer:
    """``Tokenizer.from_file(path)``, with an unreadable file (bad JSON, not a tokenizer) as one clear error."""
    try:
        return Tokenizer.from_file(str(path))
    except Exception as error:  # the Rust library raises its own Exception subclass for bad JSON
        detail = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise OvertrainError(f"{path} is damaged: it cannot be read as a tokenizer ({detail})", fix) from None


def load_auto_tokenizer(folder: Path):
    """``AutoTokenizer.from_pretrained(folder)`` offline, with an OvertrainError when it cannot."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False)
    except Exception as error:  # OSError, ValueError from transformers
        raise OvertrainError(
            f"cannot load the tokenizer of {folder}: {str(error).splitlines()[0] if str(error) else type(error).__name__}",
            "save the model's tokenizer into its folder with tokenizer.save_pretrained(FOLDER)",
        ) from None


def tokenizer_hash(tokenizer_folder: Path) -> str:
    """sha256 over the tokenizer files present in the folder (names and bytes)."""
    digest = hashlib.sha256()
    present = [name for name in TOKENIZER_FILES if (Path(tokenizer_folder) / name).is_file()]
    if not present:
        raise OvertrainError(f"{tokenizer_folder} holds no tokenizer files", "save the tokenizer next to the model with tokenizer.save_pretrained(FOLDER)")
    for name in present:
        digest.update(name.encode() + b"\0" + (Path(tokenizer_folder) / name).read_bytes())
    return digest.hexdigest()


def end_of_text_id(tokenizer: Tokenizer) -> int:
    token_id = tokenizer.token_to_id(END_OF_TEXT)
    if token_id is None:
        raise OvertrainError(f"the tokenizer has no {END_OF_TEXT} token", "use a tokenizer trained by overtrain")
    return token_id


# --------------------------------------------------------------------------------------------------
# Pre-trained tokenizers
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PretrainedTokenizer:
    """A pre-trained tokenizer resolved to local files, ready to encode."""

    name: str
    """``data.tokenizer`` as the config gave it."""
    folder: Path
    """The local folder holding its files (a Hub snapshot, or the user's folder)."""
    commit: str | None
    """The Hub commit the files came from (None for a local folder)."""
    tokenizer: Tokenizer
    end_of_text_id: int
    """Id of the end-of-sequence token written after every document."""

    @property
    def size(self) -> int:
        """Number of token ids (added tokens included): every id is below it."""
        return self.tokenizer.get_vocab_size(with_added_tokens=True)


def uses_pretrained_tokenizer(name: str) -> bool:
    """True when ``data.tokenizer`` names a pre-trained tokenizer rather than asking for a trained BPE."""
    return name != TRAINED_BPE


def load_pretrained_tokenizer(name: str) -> PretrainedTokenizer:
    """Resolve ``name`` (a folder, ``ORG/NAME`` or ``hf:ORG/NAME@REVISION``) and load it, as it is."""
    folder, commit = _tokenizer_folder(name)
    tokenizer = _fast_tokenizer(folder)
    return PretrainedTokenizer(name, folder, commit, tokenizer, _end_of_sequence_id(folder, tokenizer))


def copy_tokenizer_files(pretrained: PretrainedTokenizer, destination: Path) -> None:
    """Copy its tokenizer files into ``destination`` (symlinks of a Hub snapshot followed); a folder without
    tokenizer.json gets one written from the fast tokenizer, so checkpoints can load it without transformers."""
    destination.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        if (pretrained.folder / name).is_file():
            shutil.copyfile(pretrained.folder / name, destination / name)
    if not (destination / "tokenizer.json").is_file():
        pretrained.tokenizer.save(str(destination / "tokenizer.json"))


def _looks_like_a_path(name: str) -> bool:
    return name.startswith(("/", ".", "~")) or not REPO_NAME.fullmatch(name.partition("@")[0])


def require_local_tokenizer(name: str) -> Path | None:
    """The run's refusals of a local ``data.tokenizer`` without reading the Hub (dry runs take them too): a
    path that is no folder, and a folder that holds no tokenizer file. Returns the local folder; None for
    a Hub name or ``bpe``, which pass."""
    local = Path(name).expanduser()
    if name == TRAINED_BPE:
        return None
    if not local.is_dir():
        if is_hub_reference(name) or not _looks_like_a_path(name):
            return None  # a Hub name: only the Hub can say whether it exists
        raise OvertrainError(
            f"data.tokenizer {name!r} is not a folder that exists, nor a Hub name",
            "pass a folder holding tokenizer.json, a Hub repository such as allenai/OLMo-1B-hf (or "
            f"hf:ORG/NAME@REVISION), or {TRAINED_BPE!r} to train a BPE on the corpus",
        )
    if not any((local / file).is_file() for file in TOKENIZER_FILES):
        raise OvertrainError(
            f"data.tokenizer {name!r} is a folder without tokenizer files (none of {', '.join(TOKENIZER_FILES[:3])}, ...)",
            "pass the folder a tokenizer was saved into (save_pretrained writes tokenizer.json), or a Hub name",
        )
    return local


def _tokenizer_folder(name: str) -> tuple[Path, str | None]:
    local = require_local_tokenizer(name)
    if local is not None:
        return local, None
    try:
        return download_repo_files(parse_hub_reference(name), list(TOKENIZER_FILES))
    except OvertrainError as error:
        raise OvertrainError(f"data.tokenizer {name!r} is no local folder, and as a Hub tokenizer: {error.problem}", error.fix) from None


def _fast_tokenizer(folder: Path) -> Tokenizer:
    """``tokenizer.json`` as it is; other tokenizer files through ``AutoTokenizer`` (its fast backend)."""
    if (folder / "tokenizer.json").is_file():
        return read_tokenizer_file(folder / "tokenizer.json", "replace it with a tokenizer.json that loads")
    loaded = load_auto_tokenizer(folder)
    if not getattr(loaded, "is_fast", False):
        raise OvertrainError(f"the tokenizer in {folder} has no fast (Rust) version", "save it with a tokenizer.json (a fast tokenizer)")
    return loaded.backend_tokenizer


def _end_of_sequence_id(folder: Path, tokenizer: Tokenizer) -> int:
    """The id of the token its config names ``eos_token`` (else ``<|endoftext|>``), which ends every document."""
    candidates = []
    for config_name in ("tokenizer_config.json", "special_tokens_map.json"):
        path = folder / config_name
        if path.is_file():
            try:
                token = json.loads(path.read_text()).get("eos_token")
            except (OSError, UnicodeDecodeError, ValueError, AttributeError) as error:
                raise OvertrainError(f"{path} is damaged ({type(error).__name__}: {error})", "replace it with the tokenizer's own file") from None
            candidates.append(token.get("content") if isinstance(token, dict) else token)
    for token in [*candidates, END_OF_TEXT]:
        if isinstance(token, str) and tokenizer.token_to_id(token) is not None:
            return tokenizer.token_to_id(token)
    raise OvertrainError(
        f"the tokenizer in {folder} names no end-of-sequence token (eos_token in tokenizer_config.json) and has no {END_OF_TEXT}",
        "set eos_token in its tokenizer_config.json to the token that ends a document",
    )
