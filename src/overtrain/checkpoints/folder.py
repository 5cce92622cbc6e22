"""Checkpoints: Hugging Face folders that also carry everything needed to resume and to probe.

A checkpoint folder ``step-000120-tokens-1966080`` holds

- ``config.json`` + ``model.safetensors``: a ``LlamaForCausalLM`` that transformers loads as it is;
- ``tokenizer.json`` and its config files: ``AutoTokenizer.from_pretrained(folder)`` works;
- ``overtrain.json``: tokens_seen, step, the resolved run config, each tensor's init std (the Gaussian
  probe scales its noise by it), and sha256 checksums of every other file (tensors, config, tokenizer;
  checkpoints written before the small files were checksummed record the tensor files only);
- ``optimizer.safetensors`` and ``rng.safetensors``: AdamW moments and RNG state, for exact resumption.

Folders are written atomically and never overwritten. Nothing is unpickled when loading: tensors come
from safetensors, everything else from JSON.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

import overtrain
from overtrain.atomic import atomic_directory
from overtrain.checkpoints.names import checkpoint_folder_name, parse_checkpoint_name
from overtrain.errors import OvertrainError
from overtrain.model.config import ModelConfig
from overtrain.model.llama import LlamaLM
from overtrain.provenance import file_sha256

METADATA_FILE = "overtrain.json"
TENSOR_FILES = ("model.safetensors", "optimizer.safetensors", "rng.safetensors")


@dataclass(frozen=True)
class CheckpointInfo:
    """What ``overtrain.json`` says about a checkpoint."""

    folder: Path
    step: int
    tokens_seen: int
    run_config: dict[str, Any]
    init_std: dict[str, float]
    checksums: dict[str, str]
    loop_state: dict[str, Any] = dataclasses.field(default_factory=dict)
    """What the training loop needs beyond weights to continue exactly (first loss, losses since the last
    evaluation); empty for checkpoints written before it was recorded."""

    @property
    def model_config(self) -> ModelConfig:
        fields = {f.name for f in dataclasses.fields(ModelConfig)}
        return ModelConfig(**{k: v for k, v in self.run_config["model"].items() if k in fields})


def hf_llama_config(model: LlamaLM, end_of_text_id: int):
    """The ``transformers.LlamaConfig`` that describes ``model`` exactly."""
    from transformers import LlamaConfig

    config = model.config
    return LlamaConfig(
        vocab_size=model.vocab_size,
        hidden_size=config.d_model,
        intermediate_size=config.ff_width,
        num_hidden_layers=config.n_layers,
        num_attention_heads=config.n_heads,
        num_key_value_heads=config.kv_heads,
        head_dim=config.d_model // config.n_heads,
        max_position_embeddings=model.max_seq_len,
        rms_norm_eps=config.norm_eps,
        rope_theta=config.rope_theta,
        tie_word_embeddings=config.tie_embeddings,
        initializer_range=config.init_std,
        bos_token_id=end_of_text_id,
        eos_token_id=end_of_text_id,
        pad_token_id=end_of_text_id,
        attention_bias=False,
        mlp_bias=False,
        hidden_act="silu",
        dtype="float32",
    )


def model_tensors(model: LlamaLM) -> dict[str, torch.Tensor]:
    """State dict for safetensors: contiguous copies, the tied ``lm_head`` left out as transformers does."""
    state = {name: tensor.detach().contiguous() for name, tensor in model.state_dict().items()}
    if model.config.tie_embeddings:
        state.pop("lm_head.weight", None)
    return state


def optimizer_tensors(model: LlamaLM, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """AdamW state keyed by parameter name (``exp_avg.<name>``, ``exp_avg_sq.<name>``, ``step.<name>``)."""
    name_of = {id(param): name for name, param in model.named_parameters()}
    tensors = {}
    for param, state in optimizer.state.items():
        for key, value in state.items():
            tensors[f"{key}.{name_of[id(param)]}"] = torch.as_tensor(value).detach().clone().contiguous()
    return tensors


def restore_optimizer(model: LlamaLM, optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]) -> None:
    for name, param in model.named_parameters():
        state = {key.split(".", 1)[0]: value for key, value in tensors.items() if key.split(".", 1)[1] == name}
        if state:
            optimizer.state[param] = {key: value.clone() for key, value in state.items()}


def save_checkpoint(
    run_folder: Path,
    *,
    model: LlamaLM,
    optimizer: torch.optim.Optimizer | None,
    step: int,
    tokens_seen: int,
    run_config: dict[str, Any],
    init_std: dict[str, float],
    tokenizer_folder: Path,
    end_of_text_id: int,
    loop_state: dict[str, Any] | None = None,
) -> Path:
    """Write a permanent checkpoint under ``run_folder/checkpoints``; an existing one is kept as it is."""
    final = Path(run_folder) / "checkpoints" / checkpoint_folder_name(step, tokens_seen)
    if final.exists():
        return final
    with atomic_directory(final, if_exists="keep") as staging:
        save_file(model_tensors(model), staging / "model.safetensors", metadata={"format": "pt"})
        hf_llama_config(model, end_of_text_id).save_pretrained(staging)
        if optimizer is not None:
            save_file(optimizer_tensors(model, optimizer), staging / "optimizer.safetensors")
        save_file({"torch_cpu": torch.get_rng_state()}, staging / "rng.safetensors")
        for item in Path(tokenizer_folder).iterdir():
            shutil.copy2(item, staging / item.name)
        checksums = folder_checksums(staging)
        metadata = {
            "step": step,
            "tokens_seen": tokens_seen,
            "run_config": run_config,
            "init_std": init_std,
            "checksums": checksums,
            "loop_state": loop_state or {},
            "overtrain_version": overtrain.__version__,
            "created_unix": time.time(),
        }
        (staging / METADATA_FILE).write_text(json.dumps(metadata, indent=2))
    return final


def folder_checksums(folder: Path) -> dict[str, str]:
    """sha256 of every file of a checkpoint being written but ``overtrain.json``: the tensor files and the small
    ones (config.json, tokenizer.json and the tokenizer's other files), so damage to
    any of them is caught where the weights are verified instead of spreading into later checkpoints."""
    return {path.name: file_sha256(path) for path in sorted(Path(folder).iterdir()) if path.is_file() and path.name != METADATA_FILE}


JSON_FILES = ("config.json", "tokenizer.json")
"""Files read as JSON; in checkpoints written before their checksums were recorded, they are parsed instead."""

REQUIRED_FILES = ("config.json", "model.safetensors", "rng.safetensors", "tokenizer.json")
"""Files every checkpoint folder has (transformers needs config.json and tokenizer.json; resuming, rng)."""


OVERTRAIN_ONLY_FILES = ("rng.safetensors",)
"""Written by :func:`save_checkpoint` alone: a folder that has it but no ``overtrain.json`` is one of our
checkpoints that lost its metadata, not a foreign model. (Not ``optimizer.safetensors``: other trainers
write a file of that name too.)"""


def is_overtrain_checkpoint(folder: Path) -> bool:
    """Whether ``folder`` is a checkpoint overtrain wrote (it has ``overtrain.json``), not a foreign model folder.

    Raises for one of ours that lost its ``overtrain.json``: taken for a foreign model, it would be probed
    without its tokens, init stds and checksums, and its results would look like any other model's."""
    folder = Path(folder)
    if (folder / METADATA_FILE).is_file():
        return True
    evidence = _signs_of_ours(folder)
    if evidence:
        raise lost_metadata_error(folder, evidence)
    return False


def _signs_of_ours(folder: Path) -> str | None:
    """What marks a folder without ``overtrain.json`` as one of our checkpoints, in words, or None."""
    ours = [name for name in OVERTRAIN_ONLY_FILES if (folder / name).is_file()]
    if ours:
        return f"it has {', '.join(ours)}, which only overtrain writes"
    if folder.parent.name == "checkpoints" and parse_checkpoint_name(folder) is not None and (folder / "config.json").is_file():
        return "it is named and placed as a run's checkpoint"
    return None


def lost_metadata_error(folder: Path, evidence: str) -> OvertrainError:
    """The refusal of a checkpoint of ours without its ``overtrain.json``."""
    return OvertrainError(
        f"{folder} is an overtrain checkpoint that lost its {METADATA_FILE} ({evidence}): its tokens, init stds and "
        "checksums went with that file, so it is not taken as a foreign model",
        f"restore {METADATA_FILE} from a backup, or delete the folder (a run resumes from its newest intact checkpoint)",
    )


def read_checkpoint_info(folder: Path) -> CheckpointInfo:
    """``overtrain.json`` of a checkpoint, checked for every key and its type (never a KeyError later)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise OvertrainError(f"checkpoint folder {folder} does not exist", "pass a folder under RUN/checkpoints/")
    path = folder / METADATA_FILE
    if not is_overtrain_checkpoint(folder):  # raises for one of ours without its metadata
        raise OvertrainError(
            f"{folder} has no {METADATA_FILE}, so it is not an overtrain checkpoint",
            "pass a checkpoint folder written by `overtrain pretrain` (RUN/checkpoints/step-...); a model from elsewhere is "
            "probed as it is by `overtrain noise`, `finetune`, `sharpness` and `bench`",
        )
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise _corrupted_metadata(path, folder, str(error)) from None
    problems = metadata_problems(meta) or _name_problems(folder, meta)
    if problems:
        raise _corrupted_metadata(path, folder, "; ".join(problems))
    return CheckpointInfo(
        folder, meta["step"], meta["tokens_seen"], meta["run_config"], meta["init_std"], meta["checksums"], meta.get("loop_state") or {}
    )


def _name_problems(folder: Path, meta: dict[str, Any]) -> list[str]:
    """A folder named as a checkpoint (``step-000120-tokens-1966080``) whose metadata records another step or
    token count: an edited or mixed-up overtrain.json would put the checkpoint at the wrong place on every
    curve over tokens, and a renamed folder would be taken for a later or earlier checkpoint of its run."""
    named = parse_checkpoint_name(folder)
    if named is None or named == (meta["step"], meta["tokens_seen"]):
        return []
    recorded = f"it records step {meta['step']:,} and {meta['tokens_seen']:,} tokens"
    return [f"{recorded}, but the folder is named for step {named[0]:,} and {named[1]:,} tokens"]


def metadata_problems(meta: Any) -> list[str]:
    """What is missing from, or of the wrong shape in, the parsed contents of ``overtrain.json``."""
    if not isinstance(meta, dict):
        return [f"it holds a JSON {type(meta).__name__}, not an object"]
    problems = []
    for key in ("step", "tokens_seen"):
        if not (isinstance(meta.get(key), int) and not isinstance(meta.get(key), bool) and meta[key] >= 0):
            problems.append(f"{key} must be a whole number >= 0, found {meta.get(key, '(missing)')!r}")
    problems += _run_config_problems(meta.get("run_config"))
    init_std = meta.get("init_std")
    if not (isinstance(init_std, dict) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in init_std.values())):
        problems.append("init_std must map tensor names to numbers")
    checksums = meta.get("checksums")
    if not (isinstance(checksums, dict) and all(isinstance(v, str) for v in checksums.values())):
        problems.append("checksums must map file names to sha256 strings")
    elif "model.safetensors" not in checksums:
        problems.append("checksums has no entry for model.safetensors, so the weights cannot be verified")
    if not isinstance(meta.get("loop_state", {}), dict):
        problems.append("loop_state must be an object")
    return problems


def _run_config_problems(run_config: Any) -> list[str]:
    if not isinstance(run_config, dict):
        return ["run_config must be an object with model, data and train sections"]
    problems = [f"run_config.{section} is missing" for section in ("model", "data", "train") if not isinstance(run_config.get(section), dict)]
    if problems:
        return problems
    model_fields = {f.name for f in dataclasses.fields(ModelConfig)}
    missing = sorted(model_fields - set(run_config["model"]))
    if missing:
        problems.append(f"run_config.model lacks {', '.join(missing)}")
    seq_len = run_config["train"].get("seq_len")
    if not (isinstance(seq_len, int) and seq_len > 0):
        problems.append(f"run_config.train.seq_len must be a positive whole number, found {seq_len!r}")
    return problems


def _corrupted_metadata(path: Path, folder: Path, detail: str) -> OvertrainError:
    return OvertrainError(f"{path} is corrupted ({detail})", f"restore {path.name} from a backup, or {_retrain(folder)}")


def verify_checkpoint(info: CheckpointInfo) -> None:
    """Check that the folder is complete and every tensor file matches its recorded sha256.

    A tensor file present without a recorded checksum is refused too: deleting entries from the
    ``checksums`` map must not switch verification off.
    """
    _refuse_absent_files(info.folder)
    unrecorded = [name for name in TENSOR_FILES if (info.folder / name).is_file() and name not in info.checksums]
    if unrecorded:
        raise OvertrainError(
            f"checkpoint {info.folder} cannot be verified: {METADATA_FILE} records no checksum for {', '.join(unrecorded)}",
            f"restore {METADATA_FILE} from a backup, or {_retrain(info.folder)}",
        )
    _refuse_torn_tensor_files(info.folder)  # a file cut short is named as such, before any hashing
    for name, expected in info.checksums.items():
        path = info.folder / name
        if not path.is_file() or file_sha256(path) != expected:
            raise OvertrainError(
                f"checkpoint {info.folder} is corrupted: {name} is missing or does not match its recorded checksum",
                _restore_fix(info.folder, name),
            )
    for name in JSON_FILES:
        if name not in info.checksums:  # a checkpoint written before these files were checksummed
            _check_json_object(info.folder, name)


def _refuse_absent_files(folder: Path) -> None:
    absent = [name for name in REQUIRED_FILES if not (folder / name).is_file()]
    if absent:
        raise OvertrainError(
            f"checkpoint {folder} is incomplete: {', '.join(absent)} {'is' if len(absent) == 1 else 'are'} missing",
            _restore_fix(folder, absent[0]) if len(absent) == 1 else f"restore them from a backup, or {_retrain(folder)}",
        )


def check_tensor_headers(folder: Path) -> None:
    """Refuse, as :func:`verify_checkpoint` would, a checkpoint whose tensor files are missing or cut short,
    from their headers alone: a dry run's check (no file is hashed, so a same-size corruption is left to
    the run's checksums)."""
    _refuse_absent_files(folder)
    _refuse_torn_tensor_files(folder)


def _refuse_torn_tensor_files(folder: Path) -> None:
    for name in TENSOR_FILES:
        path = folder / name
        problem = safetensors_header_problem(path) if path.is_file() else None  # absent: the optimizer's state, optional
        if problem:
            raise OvertrainError(f"checkpoint {folder} is corrupted: {problem}", _restore_fix(folder, name))


def safetensors_header_problem(path: Path) -> str | None:
    """Why the safetensors file ``path`` cannot be opened (cut short, or not safetensors), from its header
    alone; None when it opens."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as handle:
            handle.keys()
    except Exception as error:  # safetensors raises its own error type for a torn header or a short file  # noqa: BLE001
        detail = textwrap.shorten(str(error).strip(), 100, placeholder=" ...")  # whole words: a cut word reads as a typo
        return f"{path.name} is truncated, extended or not a safetensors file ({detail})"
    return None


def _check_json_object(folder: Path, name: str) -> None:
    try:
        parsed = json.loads((folder / name).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise OvertrainError(f"checkpoint {folder} is corrupted: {name} cannot be read ({type(error).__name__}: {error})",
                             _restore_fix(folder, name)) from None
    if not isinstance(parsed, dict):
        raise OvertrainError(f"checkpoint {folder} is corrupted: {name} holds a JSON {type(parsed).__name__}, not an object",
                             _restore_fix(folder, name))


def _restore_fix(folder: Path, name: str) -> str:
    if name in TENSOR_FILES:
        return f"restore {name} from a backup, or {_retrain(folder)}"
    return (f"copy {name} from another checkpoint of the same run (all of a run's checkpoints hold the same one), "
            f"or {_retrain(folder)}")


def _retrain(folder: Path) -> str:
    """The fix that works for any caller, a probe or a resumed run: the run makes the checkpoint again (a run
    resumes from its newest checkpoint, so the later ones go too); or a probe leaves it out."""
    return (f"delete {folder} and every later checkpoint of its run, then rerun what trained it (the same overtrain "
            "pretrain or sweep command): it trains them again from the one before; or leave this checkpoint out of the probe")


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as error:
        raise OvertrainError(f"cannot read {path}: {error}", f"the file is damaged; delete {path.parent} or restore it") from None


def load_weights_into(model: LlamaLM, state: dict[str, torch.Tensor], folder: Path) -> None:
    """Copy a checkpoint's tensors into ``model``; tensors of the wrong name or shape are one clear error."""
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as error:  # size mismatch: the recorded config does not describe these tensors
        detail = " ".join(line.strip() for line in str(error).splitlines()[1:3])
        raise OvertrainError(
            f"{folder}: the weights do not have the shapes its {METADATA_FILE} describes ({detail})", "re-create the checkpoint"
        ) from None
    if unexpected or [name for name in missing if name != "lm_head.weight" or not model.config.tie_embeddings]:
        raise OvertrainError(f"{folder} does not match its own config (missing {missing}, unexpected {unexpected})", "re-create the checkpoint")


def load_model(folder: Path, max_seq_len: int | None = None, verify: bool = True) -> tuple[LlamaLM, CheckpointInfo]:
    """Our fast model from an overtrain checkpoint (weights checked against their checksums)."""
    info = read_checkpoint_info(folder)
    if verify:
        verify_checkpoint(info)
    state = load_tensors(info.folder / "model.safetensors")
    embedding = state.get("model.embed_tokens.weight")
    if embedding is None or embedding.ndim != 2:
        raise OvertrainError(f"{folder}/model.safetensors has no 2-D model.embed_tokens.weight", "re-create the checkpoint")
    seq_len = max_seq_len or info.run_config["train"]["seq_len"]
    try:
        model = LlamaLM(info.model_config, embedding.shape[0], seq_len)
    except (TypeError, ValueError, RuntimeError) as error:
        raise OvertrainError(f"{folder}: its {METADATA_FILE} describes no valid model ({error})", "re-create the checkpoint") from None
    load_weights_into(model, state, info.folder)
    return model, info
