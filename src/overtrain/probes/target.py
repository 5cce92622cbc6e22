"""What every probe needs of a model: the model, who it is, its init stds, and the text its loss is measured on.

``load_probe_target(reference, eval_tokens, eval_data)`` accepts

- an overtrain checkpoint folder: our fast model, init stds from overtrain.json, and by default the held-out
  split of its own corpus (tokenized with its own tokenizer, cached);
- any local Hugging Face causal-LM folder (safetensors weights): our fast model when it is a plain
  LlamaForCausalLM, transformers' own model otherwise; init stds from the per-family table;
- ``hf:ORG/NAME@REVISION``: the Hub snapshot at that revision, through huggingface_hub.

``eval_data=`` (a .txt/.jsonl file, a folder, ``hf:`` dataset) replaces the held-out split; a foreign model
needs it, since overtrain does not know its pre-training text. The windows are fixed and seeded, so
every checkpoint of a family is measured on the same tokens. After any change to the weights,
``target.restore()`` copies them back from the weight files, one tensor at a time, bitwise.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from overtrain.checkpoints.folder import METADATA_FILE, CheckpointInfo, is_overtrain_checkpoint, load_model
from overtrain.checkpoints.foreign import (
    IMPLEMENTATION_OURS,
    IMPLEMENTATION_TRANSFORMERS,
    fast_llama_config,
    is_hf_model_folder,
    load_fast_llama,
    load_transformers_model,
    parameter_keys,
    read_hf_config,
    safetensors_files,
    tensor_index,
)
from overtrain.checkpoints.hub import download_snapshot, is_hub_reference, parse_hub_reference
from overtrain.checkpoints.identity import combined_sha256, make_identity, overtrain_cache_dir, weight_file_hashes
from overtrain.checkpoints.init_std import InitStd, apply_init_std_rules, family_init_std
from overtrain.config import build_dataclass
from overtrain.data.config import DataConfig
from overtrain.data.eval_text import EvalTextSettings, eval_text_windows, load_auto_tokenizer
from overtrain.data.shards import delete_token_folder_fix
from overtrain.data.tokenizer import DAMAGED_TOKENIZER_FIX, end_of_text_id, load_tokenizer
from overtrain.data.tokens import capped_by_the_split, heldout_windows, prepare_token_data
from overtrain.errors import OvertrainError
from overtrain.model.loss import LossResult, mean_token_loss

DEFAULT_EVAL_TOKENS = 65_536
MAX_DEFAULT_EVAL_SEQ_LEN = 2048
"""A foreign model's eval windows are its context length, capped here unless ``eval_seq_len`` is given."""
LOGITS_BUDGET_BYTES = 512 * 2**20
"""Loss evaluation batches rows so that the fp32 logits (and their log-softmax) stay under this."""
MAX_EVAL_BATCH_ROWS = 32


@dataclass(frozen=True)
class TokenizerInfo:
    """Where a target's tokenizer lives and its end-of-sequence id (``target.data`` of foreign models)."""

    tokenizer_folder: Path
    end_of_text_id: int


@dataclass(frozen=True)
class ForeignInfo:
    """``target.info`` of a model overtrain did not train (the fields probes read of CheckpointInfo)."""

    folder: Path
    tokens_seen: int | None
    init_std: dict[str, float] | None
    hf_config: dict[str, Any] = field(repr=False)


@dataclass
class ProbeTarget:
    model: torch.nn.Module
    info: CheckpointInfo | ForeignInfo
    data: Any  # TokenData (our held-out split) or TokenizerInfo; both have .end_of_text_id
    eval_inputs: torch.Tensor  # (N, T) fixed windows of the evaluation text
    eval_targets: torch.Tensor  # (N, T)
    dtype: str
    identity: dict[str, Any]
    """Who this model is (keys: overtrain.checkpoints.identity.IDENTITY_KEYS); JSON-ready, for result rows."""
    weight_files: list[Path]
    parameter_keys: dict[str, str]
    """Parameter name -> its key in the weight files (restore copies from there)."""
    init_std: dict[str, float] | None
    init_std_source: str
    """Where ``init_std`` comes from, or why there is none (shown when mode=init is refused)."""
    eval_source: str
    """``heldout split of CORPUS`` or the ``eval_data`` given."""
    eval_batch_size: int = MAX_EVAL_BATCH_ROWS

    @property
    def folder(self) -> Path:
        return self.info.folder

    @property
    def reference(self) -> str:
        return str(self.identity["reference"])

    @property
    def weights_file(self) -> Path:
        """The single weight file (sharded models: the first shard; use ``weight_files``)."""
        return self.weight_files[0]

    @property
    def tokens_seen(self) -> int | None:
        return self.info.tokens_seen

    @property
    def end_of_text_id(self) -> int:
        return int(self.data.end_of_text_id)

    def restore(self) -> None:
        """Put the checkpoint's own weights back (after fine-tuning or noise), bitwise, tensor by tensor."""
        from overtrain.probes.noise import restore_from_safetensors

        restore_from_safetensors(dict(self.model.named_parameters()), self.weight_files, self.parameter_keys)

    def pretraining_loss(self, model: torch.nn.Module | None = None) -> LossResult:
        """Loss on the evaluation windows of ``model`` (default: the target's model as it is now)."""
        return mean_token_loss(model or self.model, self.eval_inputs, self.eval_targets, batch_size=self.eval_batch_size, dtype=self.dtype)


def load_probe_target(
    reference: str | os.PathLike[str] | Any,
    eval_tokens: int = DEFAULT_EVAL_TOKENS,
    eval_data: str | None = None,
    dtype: str = "auto",
    log=print,
    *,
    eval_seq_len: int | None = None,
    text_field: str = "text",
    init_std_rules: Mapping[str, float] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> ProbeTarget:
    """Load a model (our checkpoint, a Hugging Face folder or ``hf:ORG/NAME@REV``) and its evaluation windows.

    ``reference`` may also be a :class:`~overtrain.checkpoints.discovery.CheckpointRef`. ``eval_seq_len``
    sets the window length (default: the training sequence length of our checkpoints, the context length
    capped at 2048 for others); ``init_std_rules`` (``{glob: std}``) override the init stds; ``cache_dir``
    holds eval windows and weight hashes (default ``$OVERTRAIN_CACHE_DIR`` or ``~/.cache/overtrain``).
    """
    text = str(getattr(reference, "reference", reference))
    cache = Path(cache_dir) if cache_dir is not None else overtrain_cache_dir()
    options = dict(eval_tokens=eval_tokens, eval_data=eval_data, dtype=dtype, log=log, eval_seq_len=eval_seq_len,
                   text_field=text_field, init_std_rules=init_std_rules, cache=cache)
    if is_hub_reference(text):
        hub = parse_hub_reference(text)
        folder, commit = download_snapshot(hub)
        origin = dict(kind="hub", reference=str(hub), repo=hub.repo, revision=hub.revision, commit=commit)
        return _load_foreign(folder, origin, **options)
    folder = Path(text).expanduser()
    if is_overtrain_checkpoint(folder):
        return _load_ours(folder, **options)
    if is_hf_model_folder(folder):
        return _load_foreign(folder, dict(kind="local", reference=text), **options)
    raise OvertrainError(
        f"{text} is neither an overtrain checkpoint ({METADATA_FILE}) nor a Hugging Face model folder (config.json)",
        "pass a checkpoint folder (RUN/checkpoints/step-...), a folder written by save_pretrained, "
        "or hf:ORG/NAME@REVISION; for a run or ladder folder use overtrain.checkpoints.discovery.expand_checkpoints",
    )


def _load_ours(folder: Path, *, eval_tokens, eval_data, dtype, log, eval_seq_len, text_field, init_std_rules, cache) -> ProbeTarget:
    model, info = load_model(folder)
    model.eval()
    seq_len = int(eval_seq_len or info.run_config["train"]["seq_len"])
    if eval_data is None:
        data = prepare_token_data(build_dataclass(DataConfig, info.run_config["data"], "data."), log=log)
        check_same_tokenizer(info.folder, data.tokenizer_folder)
        inputs, targets = heldout_windows(data, eval_tokens, seq_len)
        source = f"heldout split of {info.run_config['data'].get('corpus', '?')}"
        if capped_by_the_split(targets, eval_tokens, seq_len):
            log(f"eval_tokens={eval_tokens:,} asks for more than the held-out split holds: the loss is measured on its "
                f"{targets.numel():,} tokens (the row records eval_tokens_measured)")
    else:
        data = TokenizerInfo(folder, end_of_text_id(load_tokenizer(folder)))
        inputs, targets = eval_text_windows(EvalTextSettings(str(eval_data), seq_len, eval_tokens, text_field), folder, cache, log)
        source = str(eval_data)
    files = [folder / "model.safetensors"]
    keys = parameter_keys(model, tensor_index(files))
    shapes = {name: tuple(p.shape) for name, p in model.named_parameters()}
    init = apply_init_std_rules(InitStd(dict(info.init_std), METADATA_FILE), init_std_rules, shapes)
    weights_sha = info.checksums.get("model.safetensors") or weight_file_hashes(files, cache)["model.safetensors"]
    identity = make_identity(
        kind="overtrain", reference=str(folder), path=str(folder.resolve()), weights_sha256=weights_sha,
        weight_files={"model.safetensors": weights_sha}, architecture="LlamaForCausalLM",
        implementation=IMPLEMENTATION_OURS, tokens_seen=info.tokens_seen,
    )
    batch = _eval_batch_rows(seq_len, model.vocab_size)
    return ProbeTarget(model, info, data, inputs, targets, dtype, identity, files, keys, init.stds, init.source, source, batch)


FOREIGN_EVAL_DATA_FIX = "pass eval_data= a .txt or .jsonl file, a folder of them, or an hf: dataset (ideally text like its pre-training data)"
"""What to do when a model not trained by overtrain is probed without eval_data (here, and in the sweep's preflight)."""


def _load_foreign(folder: Path, origin: dict[str, Any], *, eval_tokens, eval_data, dtype, log, eval_seq_len, text_field, init_std_rules, cache) -> ProbeTarget:
    config = read_hf_config(folder)
    if eval_data is None:
        raise OvertrainError(
            f"{origin['reference']} was not trained by overtrain, so there is no held-out split of its pre-training text",
            FOREIGN_EVAL_DATA_FIX,
        )
    files = safetensors_files(folder)  # refuses pickles before anything is loaded
    index = tensor_index(files)
    seq_len = int(eval_seq_len or min(context_length(config), MAX_DEFAULT_EVAL_SEQ_LEN))
    fast = fast_llama_config(config)
    if fast is not None:
        model, keys = load_fast_llama(fast, int(config["vocab_size"]), seq_len, index)
    else:
        model = load_transformers_model(folder, config)
        keys = parameter_keys(model, index)
    model.eval()
    shapes = {name: tuple(p.shape) for name, p in model.named_parameters()}
    init = apply_init_std_rules(family_init_std(config, shapes), init_std_rules, shapes)
    inputs, targets = eval_text_windows(EvalTextSettings(str(eval_data), seq_len, eval_tokens, text_field), folder, cache, log)
    hashes = weight_file_hashes(files, cache)
    identity = make_identity(
        **origin, path=str(folder.resolve()), weights_sha256=combined_sha256(hashes), weight_files=hashes,
        architecture=(config.get("architectures") or [None])[0],
        implementation=IMPLEMENTATION_OURS if fast is not None else IMPLEMENTATION_TRANSFORMERS, tokens_seen=None,
    )
    info = ForeignInfo(folder, None, init.stds, config)
    data = TokenizerInfo(folder, _end_of_text_id(config, folder))
    vocab = int(config.get("vocab_size") or shapes[next(iter(keys))][0])
    batch = _eval_batch_rows(seq_len, vocab)
    return ProbeTarget(model, info, data, inputs, targets, dtype, identity, files, keys, init.stds, init.source, str(eval_data), batch)


def context_length(config: Mapping[str, Any]) -> int:
    """The model's context length from config.json (the names differ between families)."""
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        if isinstance(config.get(key), int) and config[key] > 0:
            return int(config[key])
    return MAX_DEFAULT_EVAL_SEQ_LEN


def _end_of_text_id(config: Mapping[str, Any], folder: Path) -> int:
    """The end-of-sequence id: config.json's, else the tokenizer's, else its pad token, else 0."""
    eos = config.get("eos_token_id")
    if isinstance(eos, list):
        eos = eos[0] if eos else None
    if eos is None:
        tokenizer = load_auto_tokenizer(folder)
        eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.pad_token_id
    return int(eos or 0)


def _eval_batch_rows(seq_len: int, vocab_size: int) -> int:
    per_row = 2 * 4 * seq_len * vocab_size  # fp32 logits and their log-softmax
    return max(1, min(MAX_EVAL_BATCH_ROWS, LOGITS_BUDGET_BYTES // per_row))


def check_same_tokenizer(checkpoint_folder: Path, data_tokenizer_folder: Path) -> None:
    """The held-out tokens must come from the tokenizer the checkpoint was trained with."""
    ours = _bpe_vocabulary(Path(checkpoint_folder) / "tokenizer.json", DAMAGED_TOKENIZER_FIX)
    theirs = _bpe_vocabulary(Path(data_tokenizer_folder) / "tokenizer.json", delete_token_folder_fix(Path(data_tokenizer_folder).parent))
    if ours != theirs:
        raise OvertrainError(
            f"the corpus named in {checkpoint_folder}'s config now tokenizes differently from the checkpoint: a BPE "
            f"trained on it today ({data_tokenizer_folder}) differs from the one the checkpoint was trained with, "
            "so the corpus changed since the checkpoint was made",
            "restore the corpus the checkpoint was trained on, or measure the loss on a fixed text with eval_data=PATH "
            "(tokenized with the checkpoint's own tokenizer); deleting the cache would only rebuild the same mismatch",
        )


def _bpe_vocabulary(path: Path, fix: str) -> dict[str, int]:
    """The ``model.vocab`` map of a trained BPE's ``tokenizer.json``; a damaged file is an error naming it and ``fix``."""
    import json

    try:
        vocab = json.loads(path.read_text(encoding="utf-8"))["model"]["vocab"]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as error:
        raise OvertrainError(f"{path} is damaged: it is not a tokenizer's JSON ({type(error).__name__}: {error})", fix) from None
    if not isinstance(vocab, dict):
        raise OvertrainError(f"{path} is damaged: its model.vocab is a JSON {type(vocab).__name__}, not a map of tokens to ids", fix)
    return vocab
