"""Foreign models: any Hugging Face causal-LM folder, loaded from safetensors only.

A folder saved with ``save_pretrained`` (config.json + ``model.safetensors`` or sharded
``model-0000N-of-0000M.safetensors`` with their index) loads as

- our fast :class:`~overtrain.model.llama.LlamaLM` when config.json describes a plain
  ``LlamaForCausalLM`` that it implements exactly (SiLU, no biases, default RoPE, head_dim = d / heads);
- transformers' own model (``AutoModelForCausalLM``, no remote code) otherwise.

Pickled weights (``pytorch_model.bin``, ``*.pt``...) are refused before anything opens them: unpickling
runs arbitrary code. Weights are copied into the model tensor by tensor, so loading holds the model plus
one tensor, never a second full state dict.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from overtrain.checkpoints.tensor_files import read_header, read_parameters, read_tensors_into
from overtrain.errors import OvertrainError
from overtrain.model.config import ModelConfig
from overtrain.model.llama import LlamaLM

CONFIG_FILE = "config.json"
SAFETENSORS_INDEX = "model.safetensors.index.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
IMPLEMENTATION_OURS = "overtrain-llama"
IMPLEMENTATION_TRANSFORMERS = "transformers"


def is_hf_model_folder(path: Path) -> bool:
    """A folder with a config.json (our own checkpoints also have one; callers check overtrain.json first)."""
    return Path(path).is_dir() and (Path(path) / CONFIG_FILE).is_file()


def read_hf_config(folder: Path) -> dict[str, Any]:
    """config.json as a dict (plain JSON: nothing is imported or executed)."""
    path = Path(folder) / CONFIG_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise OvertrainError(f"{folder} has no {CONFIG_FILE}", "pass a folder written by save_pretrained") from None
    except ValueError as error:
        raise OvertrainError(f"{path} is not valid JSON ({error})", "restore the file or re-save the model") from None


def safetensors_files(folder: Path) -> list[Path]:
    """The weight files of a folder, safetensors only; a folder with only pickles gets the conversion."""
    folder = Path(folder)
    index = folder / SAFETENSORS_INDEX
    if index.is_file():
        try:
            names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError) as error:
            raise OvertrainError(f"{index} is damaged ({error})", "restore it or re-save the model with save_pretrained") from None
        missing = [name for name in names if not (folder / name).is_file()]
        if missing:
            raise OvertrainError(f"{folder} lacks the weight shards {missing[:3]} named in its index", "download the missing shards")
        return [folder / name for name in names]
    found = sorted(path for path in folder.glob("*.safetensors") if path.is_file())
    if found:
        return found
    pickles = sorted(path.name for path in folder.iterdir() if path.name.endswith(PICKLE_SUFFIXES))
    if pickles:
        raise OvertrainError(
            f"{folder} holds its weights only as pickles ({', '.join(pickles[:3])}); overtrain never unpickles "
            "a file, because loading a pickle can run any code",
            "convert it once, in an environment you trust: `m = AutoModelForCausalLM.from_pretrained(FOLDER); "
            "m.save_pretrained(FOLDER_SAFE, safe_serialization=True)` plus the tokenizer's save_pretrained, "
            "and pass FOLDER_SAFE",
        )
    raise OvertrainError(f"{folder} has no weight files (*.safetensors)", "pass a folder written by save_pretrained")


def tensor_index(files: Iterable[Path]) -> dict[str, Path]:
    """``{tensor key: file}`` over the safetensors files (reads headers only)."""
    return {key: Path(file) for file in files for key in read_header(Path(file))[0]}


def parameter_keys(model: torch.nn.Module, index: Mapping[str, Path]) -> dict[str, str]:
    """``{parameter name (as named_parameters lists it): key in the weight files}``; call it right after loading.

    A tied tensor (``lm_head.weight`` = ``model.embed_tokens.weight``) is listed once by
    ``named_parameters``; whichever of its names the files hold is used. A parameter that transformers
    renamed on loading (GPT-NeoX's ``embed_out`` is ``lm_head`` in transformers 5) is matched to the
    unclaimed stored tensor of its shape whose values it holds (equal values restore equal bits).
    """
    names_of: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        names_of.setdefault(id(param), []).append(name)
    keys, unnamed = {}, []
    for name, param in model.named_parameters():
        stored = next((alias for alias in [name, *names_of[id(param)]] if alias in index), None)
        if stored is None:
            unnamed.append(name)
        else:
            keys[name] = stored
    missing = _match_by_value(model, unnamed, [key for key in index if key not in set(keys.values())], index, keys)
    if missing:
        raise OvertrainError(
            f"the weight files do not hold the parameters {missing[:3]} under their names, so a probe could not restore them",
            "re-save the model with save_pretrained(safe_serialization=True) from the transformers version that loads it",
        )
    return keys


@torch.no_grad()
def _match_by_value(model: torch.nn.Module, names: list[str], free_keys: list[str], index: Mapping[str, Path], keys: dict[str, str]) -> list[str]:
    """Claim for each of ``names`` a free stored tensor equal to it (one tensor read at a time); returns the unmatched."""
    named, missing = dict(model.named_parameters()), []
    for name in names:
        param, found = named[name], None
        for key in free_keys:
            if list(read_header(index[key])[0][key]["shape"]) != list(param.shape):
                continue
            candidate = torch.empty_like(param)
            read_tensors_into(index[key], {key: candidate})
            if torch.equal(candidate, param):
                found = key
                break
        if found is None:
            missing.append(name)
        else:
            keys[name] = found
            free_keys.remove(found)
    return missing


def copy_tensors_in(model: torch.nn.Module, keys: Mapping[str, str], index: Mapping[str, Path]) -> None:
    """Fill every parameter from the files, one tensor in memory at a time (dtype converted on copy)."""
    read_parameters(dict(model.named_parameters()), keys, index)


def fast_llama_config(config: Mapping[str, Any]) -> ModelConfig | None:
    """Our ModelConfig for a plain LlamaForCausalLM config.json that LlamaLM implements exactly, else None."""
    if config.get("model_type") != "llama" or config.get("architectures", ["LlamaForCausalLM"]) != ["LlamaForCausalLM"]:
        return None
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    rope_theta = rope.get("rope_theta", config.get("rope_theta", 10_000.0))
    hidden, heads = int(config["hidden_size"]), int(config["num_attention_heads"])
    plain = (
        config.get("hidden_act", "silu") == "silu"
        and not config.get("attention_bias", False)
        and not config.get("mlp_bias", False)
        and rope.get("rope_type", rope.get("type", "default")) == "default"
        and config.get("pretraining_tp", 1) in (1, None)
        and hidden % heads == 0
        and config.get("head_dim") in (None, hidden // heads)
    )
    if not plain:
        return None
    return ModelConfig(
        d_model=hidden,
        n_layers=int(config["num_hidden_layers"]),
        n_heads=heads,
        n_kv_heads=int(config.get("num_key_value_heads") or heads),
        d_ff=int(config["intermediate_size"]),
        rope_theta=float(rope_theta),
        norm_eps=float(config.get("rms_norm_eps", 1e-6)),
        tie_embeddings=bool(config.get("tie_word_embeddings", False)),
        init_std=float(config.get("initializer_range", 0.02)),
    )


def load_fast_llama(config: ModelConfig, vocab_size: int, max_seq_len: int, index: Mapping[str, Path]) -> tuple[LlamaLM, dict[str, str]]:
    """Our LlamaLM filled from the weight files; returns it and its parameter -> key map."""
    model = LlamaLM(config, vocab_size, max_seq_len)
    keys = parameter_keys(model, index)
    copy_tensors_in(model, keys, index)
    return model, keys


def _damaged_weight_file(folder: Path) -> str | None:
    """Why one of ``folder``'s weight files (as the loaders find them) cannot be opened, naming it, or None."""
    from overtrain.checkpoints.folder import safetensors_header_problem

    try:
        files = safetensors_files(folder)
    except OvertrainError:  # no weight files to judge: transformers' own message stands
        return None
    return next(filter(None, map(safetensors_header_problem, files)), None)


def load_transformers_model(folder: Path, config: Mapping[str, Any]) -> torch.nn.Module:
    """transformers' own model, fp32, from safetensors, without remote code."""
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(folder), dtype=torch.float32, use_safetensors=True, trust_remote_code=False, local_files_only=True
        )
    except Exception as error:  # ValueError (unknown model_type), OSError, ImportError... from transformers
        detail = str(error).splitlines()[0] if str(error) else type(error).__name__
        damaged = _damaged_weight_file(folder)
        if damaged:  # a weight file cut short reads as a header error: the file is the fault, not the architecture
            raise OvertrainError(f"{folder} cannot be loaded: {damaged}",
                                 "restore or re-download that file (a copy cut short, or a download that stopped)") from None
        remote = " (its config.json asks for custom code, auto_map)" if "auto_map" in config else ""
        raise OvertrainError(
            f"transformers cannot load {folder} as a causal LM{remote}: {detail}",
            "use a model whose architecture transformers ships (for OLMo-1 the '-hf' repositories, e.g. "
            "allenai/OLMo-1B-hf), or upgrade transformers",
        ) from None
    model.config.use_cache = False  # no key/value cache kept during loss evaluation
    return model
