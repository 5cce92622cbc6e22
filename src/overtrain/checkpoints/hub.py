"""Hub models at a revision: ``hf:ORG/NAME@REVISION`` -> a local snapshot folder and its commit sha.

The download goes through ``huggingface_hub.snapshot_download`` (see :mod:`overtrain.hub_files`, which this
module shares with pre-trained tokenizers), restricted to the files a probe reads: configs, tokenizer files
and safetensors weights. Pickled weights (``*.bin``, ``*.pt``) are never downloaded. Offline
(``HF_HUB_OFFLINE=1``) a revision resolves from the cache alone.
"""

from __future__ import annotations

from pathlib import Path

from overtrain.hub_files import (  # noqa: F401  (the references are re-exported for the probe and family stages)
    DEFAULT_REVISION,
    HUB_PREFIX,
    HubReference,
    download_repo_files,
    is_hub_reference,
    missing_repository_error,
    parse_hub_reference,
)

MODEL_FILE_PATTERNS = [
    "*.json",  # config.json, generation_config.json, tokenizer_config.json, model.safetensors.index.json
    "*.safetensors",
    "tokenizer.model",  # sentencepiece protobuf, not a pickle
    "*.txt",  # merges.txt
    "*.jinja",
]


def download_snapshot(reference: HubReference) -> tuple[Path, str | None]:
    """The local snapshot folder of ``reference`` and its commit sha (downloaded or found in the cache)."""
    return download_repo_files(reference, MODEL_FILE_PATTERNS)
